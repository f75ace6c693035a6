"""The locks of a cluster: Prefect global concurrency limits of one slot, and who holds them.

- ``cluster-<name>`` (:func:`cluster_lock`): one mutating flow per cluster. A second one **fails fast**
  (after ``LOCK_WAIT_S``) with :class:`ClusterBusy` naming the cluster, instead of queueing behind a
  load-balancer wait of up to 20 minutes. Re-entrant within a run: a subflow of a flow that holds it
  (the health check's replace-replica) runs under the same hold. Every save of a cluster's blocks
  happens under it (:mod:`blocks.store`).
- ``health-<name>``: the health check's own lock (one check of a cluster at a time).

A lock is taken with a lease of :func:`haplane.settings.lock_lease_s` (at least Prefect's minimum of 60 s) that the holder's
process renews; a killed holder's lease expires by itself. Prefect's API does not say who holds a
slot, so whoever takes a lock leaves a **holder record** beside it (the Prefect variable
``haplane-lock-<lock>``: the flow run, the host and the process), and removes it on release.
``haplane unlock CLUSTER [--lock cluster|health]`` (:func:`unlock`) reads it and frees the one lock only
when its holder has ended: its flow run is in a final state, or its process on this host is gone (a
killed process leaves its flow run RUNNING). ``--force`` frees it anyway, and says what it overrides.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from haplane import settings

LOCK_WAIT_S = 10.0
RETRY_HELD_S = 1.0  # between two asks for a slot another run holds
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
KINDS = ("cluster", "health")


class ClusterBusy(RuntimeError):
    pass


class LockHeld(RuntimeError):
    """``haplane unlock`` refused: the lock's holder may still be running."""


def lock_name(cluster: str) -> str:
    return f"cluster-{cluster}"


def health_lock_name(cluster: str) -> str:
    """The health check's own lock (:func:`tasks.health.health_lock`): one check of a cluster at a time."""
    return f"health-{cluster}"


def named_lock(cluster: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"a cluster has the locks {', '.join(KINDS)}, not {kind!r}")
    return lock_name(cluster) if kind == "cluster" else health_lock_name(cluster)


def ensure_lock(cluster: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(lock_name(cluster), limit=1)


# --- who holds a lock ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """Who took a lock: its flow run (None outside one), the host and the process."""

    flow_run: str | None
    run_name: str | None
    host: str
    pid: int
    started: str | None  # the process's start (Linux: /proc/<pid>/stat), so a reused pid is not taken for it
    since: str

    def text(self) -> str:
        run = f"flow run {self.run_name} ({self.flow_run})" if self.flow_run else "a process outside any flow run"
        return f"{run}, process {self.pid} on host {self.host}, since {self.since}"


def record_name(lock: str) -> str:
    return f"haplane-lock-{lock}"


def _process_start(pid: int) -> tuple[str | None, bool]:
    """(start time, running) of a process on this host: ``(None, False)`` when there is none (a zombie
    counts as gone); start None where /proc cannot tell it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19], fields[0] != "Z"
    except FileNotFoundError:
        return None, False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, False
    except PermissionError:
        pass
    return None, True


def current_holder() -> Holder:
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return Holder(
        flow_run=str(run_id) if run_id else None,
        run_name=flow_run.get_name() if run_id else None,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=_process_start(os.getpid())[0],
        since=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def holder_alive(holder: Holder, here: str) -> bool | None:
    """Whether the holder's process runs (None: it is on another host, which cannot be asked)."""
    if holder.host != here:
        return None
    started, running = _process_start(holder.pid)
    return running and (holder.started is None or started is None or started == holder.started)


def holder_ended(holder: Holder | None, run_state: str | None, alive: bool | None) -> tuple[bool, str]:
    """Whether a lock's holder has ended, and why (pure). ``run_state``: its flow run's state type;
    ``alive``: whether its process runs (None: another host)."""
    if holder is None:
        return False, (
            "nothing says who holds it (taken by a haplane from before holder records, or its holder "
            "was stopped between taking it and recording itself)"
        )
    who = holder.text()
    if run_state in FINAL_STATES:
        return True, f"its holder, {who}, has ended ({run_state})"
    if alive is False:
        return True, (
            f"its holder, {who}, is gone: that process no longer runs (its flow run still shows "
            f"{run_state or 'no state'}, as a killed process leaves it)"
        )
    if alive is None:
        return False, (
            f"it is held by {who}, whose flow run is {run_state or 'of unknown state'}; haplane can tell a "
            f"dead process only on its own host, so run this on {holder.host}"
        )
    return False, f"it is held by {who}, whose process is running"


def _write_record(lock: str, holder: Holder) -> None:
    from dataclasses import asdict

    from prefect.variables import Variable

    Variable.set(record_name(lock), asdict(holder), overwrite=True)


def _read_record(lock: str) -> Holder | None:
    from prefect.variables import Variable

    value = Variable.get(record_name(lock), default=None)
    try:
        return Holder(**value) if isinstance(value, dict) else None
    except TypeError:
        return None


def _drop_record(lock: str) -> None:
    from prefect.variables import Variable

    with contextlib.suppress(ValueError):
        Variable.unset(record_name(lock))


class Held:
    """A taken lock: exit it to release the slot and drop the holder record."""

    def __init__(self, name: str, ctx: Any) -> None:
        self.name, self.ctx = name, ctx

    def __exit__(self, *exc: object) -> None:
        try:
            _drop_record(self.name)
        except Exception:  # noqa: BLE001 - a record left behind names a holder that has ended: harmless
            pass
        finally:
            self.ctx.__exit__(None, None, None)


def hold(name: str, wait_s: float) -> Held | None:
    """Take the one slot of the global concurrency limit ``name`` with a lease of
    :func:`haplane.settings.lock_lease_s` and
    record the holder: the taken lock (exit it to release), or None when another run kept it for
    ``wait_s`` seconds.

    Each ask is one request that is seen through (Prefect's ``max_retries=0``, no client timeout):
    with ``timeout_seconds`` a slow API server counts as a holder, and a slot the server granted after
    the client stopped waiting stays taken by nobody until its lease ends (measured: most scheduled
    health checks of a loaded fleet "skipped" with no other check of their cluster running)."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError  # what a refused slot raises (3.x)
    from prefect.concurrency.sync import concurrency

    deadline = time.monotonic() + wait_s
    while True:
        ctx = concurrency(name, occupy=1, strict=True, max_retries=0, lease_duration=settings.lock_lease_s())
        try:
            ctx.__enter__()
            break
        except ConcurrencySlotAcquisitionError as exc:
            cause = exc.__cause__
            held = getattr(getattr(cause, "response", None), "status_code", None) == 423
            if not held:
                raise
            if time.monotonic() >= deadline:
                return None
            time.sleep(RETRY_HELD_S)
    try:
        _write_record(name, current_holder())
    except Exception:  # noqa: BLE001 - the lock is held either way; unlock then says the holder is unknown
        pass
    return Held(name, ctx)


# Locks this flow run (and the subflows it runs in its thread) holds: the health check takes the cluster
# lock to decide and runs replace-replica under that same hold.
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("haplane_held_locks", default=frozenset())


def holds(cluster: str) -> bool:
    """Whether this run holds the cluster's lock now."""
    return cluster in _HELD.get()


@contextlib.contextmanager
def cluster_lock(cluster: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the cluster's lock for the body; fail fast with :class:`ClusterBusy` if another flow has it
    for ``wait_s`` seconds (None: ``LOCK_WAIT_S``). Re-entrant: a subflow of a flow that holds it runs
    under the same hold."""
    if holds(cluster):
        yield
        return
    ensure_lock(cluster)
    taken = hold(lock_name(cluster), LOCK_WAIT_S if wait_s is None else wait_s)
    if taken is None:
        raise ClusterBusy(
            f"another mutating flow is running on cluster {cluster!r} (lock {lock_name(cluster)!r} is held); "
            f"nothing was changed: wait for that run to finish, then start this one again"
        )
    token = _HELD.set(_HELD.get() | {cluster})
    try:
        yield
    finally:
        _HELD.reset(token)
        taken.__exit__(None, None, None)


# --- freeing a lock -------------------------------------------------------------------------------------


def _run_state(flow_run: str | None) -> str | None:
    if not flow_run:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run)
        except ObjectNotFound:
            return None
    return run.state.type.value if run.state else None


def unlock(cluster: str, kind: str = "cluster", force: bool = False) -> str:
    """Free one lock of ``cluster`` (``kind``: cluster or health) whose holder has ended; with ``force``,
    whoever holds it. Returns what was done; raises :class:`LockHeld` (nothing freed) when the holder may
    still run. The limit is deleted (the holder's lease goes with it); the next flow creates it again."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = named_lock(cluster, kind)
    with get_client(sync_client=True) as client:
        try:
            held = client.read_global_concurrency_limit_by_name(name).active_slots > 0
        except ObjectNotFound:
            held = False
    if not held:
        _drop_record(name)  # a record left by a holder whose lease ran out
        return f"{name!r} is not held: nothing to free"
    holder = _read_record(name)
    state = _run_state(holder.flow_run) if holder else None
    ended, why = holder_ended(holder, state, holder_alive(holder, socket.gethostname()) if holder else None)
    if not ended and not force:
        raise LockHeld(
            f"{name!r} was not freed: {why}. Wait for that run to end (a dead holder's lease also "
            f"expires by itself within {settings.lock_lease_s():.0f} s), or, if you know it is dead, run "
            f"`haplane unlock {cluster} --lock {kind} --force`"
        )
    _delete_limit(name)
    if ended:
        return f"freed {name!r}: {why}"
    return (
        f"freed {name!r} by --force, overriding this: {why}. If that run is alive it now runs without the "
        f"lock (Prefect cancels it when it next renews its lease) and another flow may start beside it"
    )


def _delete_limit(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    _drop_record(name)
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(name)
            return True
        except ObjectNotFound:
            return False


def forget_locks(cluster: str) -> list[str]:
    """Delete both locks of a cluster and their records (delete-cluster, once the cluster is gone; tests
    that release a killed run's locks at once). Returns the names of the locks that existed."""
    return [name for name in (lock_name(cluster), health_lock_name(cluster)) if _delete_limit(name)]
