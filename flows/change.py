"""The one shape of every mutating flow: lock -> observe -> plan -> publish -> run -> report.

create-cluster, add-replica, remove-replica, replace-replica and delete-cluster
differ only in how they plan (a pure function of the observed cluster, from
:mod:`haplane.core.plans`). A dry run observes, plans and publishes, and stops
there; a real run does the same under the cluster's lock, checks the change's
step schema (a change started by a haplane with other step ids is refused
before any call), runs the plan's steps through the one executor
(:func:`tasks.execute.execute`) and publishes the replica table.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger

from blocks.cluster import ClusterSpec
from haplane.core.model import ClusterState
from haplane.core.ownership import SpecWhere, check_project
from haplane.core.plans import SNAPSHOT_BEFORE, Plan, with_preamble
from tasks.cluster import cluster_lock, observe_cluster, publish_plan, publish_report
from tasks.execute import Run, execute
from tasks.keys import check_keys
from tasks.steps import Change, check_step_schema

# plan_for(state, running): the plan for the observed ``state``; ``running`` is False in a dry run
PlanFor = Callable[[ClusterState, bool], Plan]


def run_change(
    change: Change,
    spec: ClusterSpec,
    plan_for: PlanFor,
    dry_run: bool = False,
    note: str = "",
    report: bool = True,
    tolerate_zones: bool = False,
    skip_snapshot: bool = False,
) -> Plan | list[dict[str, str]]:
    """A dry run returns the plan; a run returns the replica table it leaves (or the plan, without ``report``).
    ``tolerate_zones``: a zone whose API does not answer is observed as such (the health check's zone
    moves) instead of failing the run.

    The plan's head (:func:`haplane.core.plans.with_preamble`) holds what the run does before the flow's own
    steps: a ``complete-keys`` step when the PKI block holds keys to move to Secret Manager (or lacks one),
    and for a membership change (:data:`haplane.core.plans.SNAPSHOT_BEFORE`) a verified etcd snapshot
    (``snapshot-before``); if that fails, the run stops with nothing changed. ``skip_snapshot``: no
    snapshot step (said in the log)."""

    def observe() -> ClusterState:
        return observe_cluster(change.cluster, spec.region, change.connection, tolerate_zones=tolerate_zones)

    # a connection to another project than the spec's sees another cluster: refused before any key
    # is read or anything is changed
    check_project(
        change.cluster, change.gce().project, SpecWhere(spec.region, spec.project, spec.uid), "nothing was changed"
    )
    if dry_run:
        keys = check_keys(change.cluster, change.connection)  # a key that cannot be read: refused, as the run would be
        plan = with_preamble(plan_for(observe(), False), keys, not skip_snapshot)
        publish_plan(plan, change)
        return plan
    with cluster_lock(change.cluster):
        # before any GCE or etcd call: a key that cannot be read is refused, naming its secret; keys of a
        # cluster saved the old way are moved to Secret Manager by the plan's first step
        keys = check_keys(change.cluster, change.connection)
        check_step_schema(change)
        plan = with_preamble(plan_for(observe(), True), keys, not skip_snapshot)
        publish_plan(plan, change)
        if skip_snapshot and plan.action in SNAPSHOT_BEFORE and plan.steps:
            get_run_logger().warning(
                "%s on %s WITHOUT a snapshot first (skip_snapshot=True)", plan.action, change.cluster
            )
        figures = execute(Run(change, spec), plan)
    if not report:
        return plan
    notes = [note] + [f"{k}={v:.1f}" for k, v in figures.items()] + [plan.even_note]
    return publish_report(observe(), "; ".join(n for n in notes if n))
