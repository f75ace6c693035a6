"""Run a GCE step: submit (checkpointed), then wait on its operation (never cached).

``apply`` is how flows change GCE. When the operation ends in an error (quota,
an internal error), the step is submitted again under a new step name made
from the failed operation's name — so a fresh ``requestId`` (GCE answers a
repeated one with the first, failed, operation) and a fresh checkpoint. The
name is deterministic, so a resumed run replays the same chain and finds
every checkpoint on it instead of sending the calls again.

A wait is bounded (:func:`wait_bound`): an operation that never finishes (a stuck GCE
operation) fails the run with :class:`haplane.cloud.gce.GceTimeout` naming the operation and the
setting; a run of the same change waits on that same operation again, it does not send it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from haplane import settings
from haplane.cloud.gce import GceOperationError, GceTimeout, OpRef
from tasks.steps import Change, probe

ATTEMPTS = 3  # failed operations of one step, in one run


def wait_bound(load_balancer: bool = False) -> tuple[str, float]:
    """(the setting, its value in seconds): how long one wait for a GCE operation may take before the run
    fails (and can be resumed). An ordinary operation (a VM insert takes about a minute): ``HAPLANE_OP_WAIT_S``;
    a load-balancer operation (about 20 minutes on GCE): ``HAPLANE_LB_WAIT_S``."""
    if load_balancer:
        return settings.LB_WAIT, settings.lb_wait_s()
    return settings.OP_WAIT, settings.op_wait_s()


@probe(task_run_name="wait {what}")
def wait_op(
    change: Change, op: OpRef | None, what: str, timeout: float | None = None, progress_key: str | None = None
) -> None:
    """Wait for a submitted operation; ``None`` means there was nothing to do.

    ``timeout`` None: the setting :func:`wait_bound` names (the load-balancer one with ``progress_key``).
    An operation still not DONE then raises :class:`GceTimeout` (the run fails; resuming the change
    waits on the same operation).

    With ``progress_key`` the wait is reported as a Prefect progress artifact (GCE's own
    ``progress`` of the operation), for the long load-balancer waits people watch in the UI.
    Transient API errors are retried inside :meth:`haplane.cloud.gce.Gce.wait`; an operation that
    failed raises :class:`GceOperationError` at once (waiting again would not change it)."""
    if op is None or op.done:
        return
    logger = get_run_logger()
    logger.info("waiting for %s (operation %s)", what, op.name)
    on_progress, poll_s = None, None
    if progress_key:
        artifact = create_progress_artifact(0.0, key=progress_key, description=f"{what}: operation {op.name}")
        last = [0.0]

        def on_progress(raw: object, waited: float) -> None:
            value = float(getattr(raw, "progress", 0) or 0)
            if value != last[0]:
                last[0] = value
                update_progress_artifact(artifact, value, description=f"{what}: {value:.0f}% after {waited:.0f} s")

        poll_s = 2.0
    setting, bound = wait_bound(progress_key is not None)
    if timeout is not None:
        setting, bound = "", timeout
    try:
        change.gce().wait(op, timeout=bound, on_progress=on_progress, poll_s=poll_s)
    except GceOperationError as exc:
        logger.error("%s failed: %s", what, exc)
        raise
    except GceTimeout as exc:
        hint = f" ({setting}={bound:g})" if setting else ""
        error = GceTimeout(exc.op, exc.waited, exc.last_error, bound=hint)
        logger.error("%s: %s", what, error)
        raise error from None
    if progress_key:
        update_progress_artifact(artifact, 100.0, description=f"{what}: done")


@dataclass(frozen=True)
class Step:
    """One GCE step of a flow: a submit task, its checkpoint name, what to call it in logs, its arguments."""

    submit: Callable[..., OpRef | None]
    step: str
    what: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # None: the wait_bound setting
    progress_key: str | None = None  # a load-balancer step: reported as progress, bounded by HAPLANE_LB_WAIT_S

    def retried_after(self, failed: OpRef) -> Step:
        return Step(
            self.submit,
            f"{self.step}/after-{failed.name}",
            self.what,
            self.args,
            self.kwargs,
            self.timeout,
            self.progress_key,
        )


def _submit(change: Change, step: Step) -> tuple[OpRef | None, bool]:
    """Run the step's submit task: (its operation, whether it came from an earlier run's checkpoint)."""
    state = step.submit(change, step.step, *step.args, return_state=True, **step.kwargs)
    return state.result(), state.name == "Cached"


def apply(change: Change, step: Step) -> None:
    """Submit ``step`` and wait for it. An operation that failed is submitted again (see module doc),
    until ``ATTEMPTS`` operations have failed *in this run*: failures a resumed run finds on its
    checkpoints are replayed, not counted, so a run started again after a failure gets fresh attempts."""
    failed = 0
    while True:
        op, replayed = _submit(change, step)
        try:
            wait_op(change, op, step.what, step.timeout, step.progress_key)
            return
        except GceOperationError as exc:
            failed += 0 if replayed else 1
            if failed >= ATTEMPTS:
                raise
            get_run_logger().warning(
                "%s: operation %s failed (%s); submitting it again", step.what, exc.op.name, exc.code
            )
            step = step.retried_after(exc.op)


def apply_all(change: Change, steps: list[Step]) -> None:
    """Several independent steps: all submitted, then waited on concurrently (one task run each);
    one whose operation failed then goes through :func:`apply` on its own."""
    ops = [(s, _submit(change, s)[0]) for s in steps]
    futures = [(s, wait_op.submit(change, op, s.what, s.timeout, s.progress_key)) for s, op in ops]
    for s, future in futures:
        try:
            future.result()
        except GceOperationError as exc:
            get_run_logger().warning("%s: operation %s failed (%s); submitting it again", s.what, exc.op.name, exc.code)
            apply(change, s.retried_after(exc.op))


@dataclass(frozen=True)
class Started:
    """A step submitted by :func:`start`, to be waited on later with :func:`finish`."""

    step: Step
    op: OpRef | None


def start(change: Change, step: Step) -> Started:
    """Submit ``step`` and return at once: long work (the forwarding rule) runs while the flow goes on."""
    return Started(step, _submit(change, step)[0])


@probe(task_run_name="{step}")
def await_started(change: Change, started: Started, step: str) -> OpRef | None:
    """A plan's step that waits for one submitted earlier with :func:`start` (its own task run).
    Returns the operation if it failed (None when it is done): :func:`finish` submits it again from
    the flow, not from inside this task, whose nested submits a resumed run would not find checkpointed."""
    try:
        wait_op(change, started.op, started.step.what, started.step.timeout, started.step.progress_key)
    except GceOperationError as exc:
        get_run_logger().warning(
            "%s: operation %s failed (%s); submitting it again", started.step.what, exc.op.name, exc.code
        )
        return exc.op
    return None


def finish(change: Change, started: Started, step: str) -> None:
    """Wait for a step :func:`start` submitted (task run ``step``); a failed operation goes through
    :func:`apply` again."""
    failed = await_started(change, started, step=step)
    if failed is not None:
        apply(change, started.step.retried_after(failed))
