"""The health check's I/O: its own lock, the cluster lock's state, remediation history, events, the verdict.

Decisions are not made here: :mod:`haplane.core.remediation` decides from what these tasks read.

- **Two health checks of one cluster never run at once**: the check holds the global
  concurrency limit ``health-<cluster>`` (limit 1, ``strict=True``) for its whole run; a
  second one finds it taken within ``HAPLANE_HEALTH_LOCK_WAIT_S`` (2 s) and ends at once, Completed,
  saying it skipped. It is a separate limit from ``cluster-<cluster>``: the check must not hold
  the cluster lock, because the replace-replica run it starts takes that lock itself.
- **History is Prefect's run history.** A replacement the check starts is a replace-replica
  subflow run tagged ``haplane-remediation``, ``cluster:<cluster>``, ``replica:<name>``;
  the attempts are read back from the API by those tags. Nothing else to keep in sync, and a
  person sees the same attempts in the UI (filter by tag).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound

from haplane import settings
from haplane.core.remediation import Attempt, Outcome, Verdict
from tasks.cluster import health_lock_name, hold, lock_name
from tasks.steps import probe

REMEDIATION_TAG = "haplane-remediation"
REPLACE_FLOW = "replace-replica"


def remediation_tags(cluster: str, replica: str) -> tuple[str, ...]:
    return (REMEDIATION_TAG, f"cluster:{cluster}", f"replica:{replica}")


@contextlib.contextmanager
def health_lock(cluster: str) -> Iterator[bool]:
    """Yields True holding ``health-<cluster>``; False (holding nothing) if another check has it."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(health_lock_name(cluster), limit=1)
    ctx = hold(health_lock_name(cluster), settings.health_lock_wait_s())
    if ctx is None:
        yield False
        return
    try:
        yield True
    finally:
        ctx.__exit__(None, None, None)


@probe(task_run_name="is {cluster} locked")
def cluster_busy(cluster: str) -> bool:
    """Whether a mutating flow holds the cluster's lock now."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(lock_name(cluster)).active_slots > 0
        except ObjectNotFound:
            return False


_OUTCOMES = {"COMPLETED": Outcome.COMPLETED, "FAILED": Outcome.FAILED, "CRASHED": Outcome.FAILED}


@probe(task_run_name="remediation history of {cluster}")
def remediation_history(
    cluster: str, window_s: float, orphans_failed: bool = True, flow_name: str = REPLACE_FLOW
) -> list[Attempt]:
    """The replacements health checks started for ``cluster`` within ``window_s``, from Prefect's run history.

    Cancelled runs are left out. With ``orphans_failed`` (the caller holds ``health-<cluster>``, so
    no other check — hence no replacement it started — can be running), a run still marked running
    is one whose process died: it counts as failed.
    """
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterTags,
    )

    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window_s)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[REMEDIATION_TAG, f"cluster:{cluster}"]),
                expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
            ),
            limit=200,
        )
    attempts = []
    for run in runs:
        replica = next((t.split(":", 1)[1] for t in run.tags if t.startswith("replica:")), None)
        state = run.state.type.value if run.state else "PENDING"
        if replica is None or state in ("CANCELLED", "CANCELLING"):
            continue
        outcome = _OUTCOMES.get(state, Outcome.FAILED if orphans_failed else Outcome.RUNNING)
        started = run.start_time or run.expected_start_time or run.created
        change_id = (run.parameters or {}).get("change_id") or f"{flow_name.split('-')[0]}-{run.id}"
        attempts.append(Attempt(replica=replica, started=started, outcome=outcome, run=run.name, change_id=change_id))
    return attempts


def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    """A Prefect event (names, zones, reasons: never a key or certificate)."""
    emit_event(event=event, resource=resource, payload=payload)


def publish_verdict(verdict: Verdict) -> None:
    """The decision and why, in the run's log and as a markdown artifact ``<cluster>-health``."""
    logger = get_run_logger()
    text = verdict.markdown()
    (logger.warning if verdict.findings else logger.info)("%s", text)
    create_markdown_artifact(
        text, key=f"{verdict.cluster}-health", description=f"health check of {verdict.cluster}: {verdict.action.value}"
    )
