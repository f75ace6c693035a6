"""How haplane's tasks checkpoint: one logical change, one key per step.

A mutating step is keyed by ``cluster / change id / step`` and its result
(an operation reference, a member id — never a secret) is persisted, so a
new run of the same change finds it and skips the call: Prefect 3's default cache policy
includes the flow-run id, so a new run would recompute everything (docs/design.md, fact 4).
Probes and waits use ``NO_CACHE``: within a run they must see the present.
Checkpoints are JSON with a schema version, in the workspace's shared result storage
(``tasks/results.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.cluster import resolve_gce
from haplane.cloud.gce import Gce, request_id
from haplane.core.steps import STEP_SCHEMA
from tasks.results import CheckpointSerializer, CheckpointTask, step_key


@dataclass(frozen=True)
class Change:
    """One logical change to one cluster; ``change_id`` is what a resumed run must repeat."""

    cluster: str
    change_id: str
    connection: str | None = None

    def rid(self, step: str) -> str:
        """The GCE requestId of ``step`` in this change."""
        return request_id(self.cluster, self.change_id, step)

    def gce(self) -> Gce:
        """Compute Engine as the change's connection: one client per change, flow run and thread. The
        connection block is read once and the clients' HTTP sessions are reused by the change's steps;
        a client is never shared between threads (parallel steps each get their own), and a resumed run
        (a new flow run) reads the connection again. Outside a flow run, a new one each call."""
        from prefect.runtime import flow_run

        run = flow_run.get_id()
        if run is None:
            return resolve_gce(self.connection)
        cache: dict[tuple, Gce] = _per_thread.__dict__.setdefault("gce", {})
        key = (run, self.connection, self.cluster, self.change_id)
        if key not in cache:
            while len(cache) >= _GCE_KEPT:
                del cache[next(iter(cache))]  # the oldest: a thread of a worker may serve many runs
            cache[key] = resolve_gce(self.connection)
        return cache[key]


_per_thread = threading.local()
_GCE_KEPT = 4  # changes whose client a thread keeps (a flow run has one change at a time, or a few)


def cluster_uid(cluster: str) -> str | None:
    """The cluster's uid from its spec (None: no spec, or a cluster from before uids)."""
    from blocks.store import read_spec

    spec = read_spec(cluster)
    return spec.uid if spec is not None else None


def retry_unless_refused(task: Any, task_run: Any, state: Any) -> bool:
    """A step that refused (a resource that is not ours) refuses again: it is not retried."""
    from haplane.core.ownership import OwnershipError

    return not isinstance(state.data, OwnershipError)


def checkpoint(fn: Any = None, **options: Any) -> Any:
    """A mutating task whose result is persisted under its change step."""
    opts = dict(
        cache_key_fn=step_key,
        persist_result=True,
        retries=3,
        retry_delay_seconds=[1, 3, 10],
        task_run_name="{step}",
        result_serializer=CheckpointSerializer(),
        retry_condition_fn=retry_unless_refused,
    )
    opts.update(options)
    if fn is None:
        return lambda f: CheckpointTask(f, **opts)
    return CheckpointTask(fn, **opts)


def probe(fn: Any = None, **options: Any) -> Any:
    """A read or a wait: never cached, safe to repeat."""
    opts = dict(cache_policy=NO_CACHE, persist_result=False)
    opts.update(options)
    if fn is None:
        return lambda f: task(f, **opts)
    return task(fn, **opts)


@checkpoint(retries=0, task_run_name="remember {step}")
def remember(change: Change, step: str, value: Any) -> Any:
    """Checkpoint a decision: the first run of a change stores ``value``; a resumed run gets the
    stored one back, whatever it passes (e.g. the zone of a replica that has since been removed)."""
    return value


class StepSchemaMismatch(RuntimeError):
    """A change started under other step ids: resuming it here would send its GCE calls again."""


SCHEMA_STEP = "step-schema"


def check_step_schema(change: Change, current: int = STEP_SCHEMA) -> None:
    """Record the step schema at a change's first run; refuse to resume a change recorded under another.

    Called before any step of a change runs: a refused run has sent nothing."""
    recorded = remember(change, SCHEMA_STEP, current)
    if recorded != current:
        raise StepSchemaMismatch(
            f"change {change.change_id!r} of cluster {change.cluster!r} was started by a haplane whose step "
            f"schema is {recorded}; this one uses step schema {current}, so the change's checkpoints would not "
            f"be found and its GCE calls would be sent again. Nothing was changed: finish the change with the "
            f"haplane version that started it, or look at the cluster (the replica table) and start a new "
            f"change (a new change_id)"
        )
