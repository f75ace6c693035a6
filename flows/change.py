"""The one shape of every mutating flow: lock -> observe -> plan -> publish -> (snapshot) -> run -> report.

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

from blocks.cluster import ClusterSpec
from haplane.core.model import ClusterState
from haplane.core.ownership import SpecWhere, check_project
from haplane.core.plans import Plan
from tasks.cluster import cluster_lock, observe_cluster, publish_plan, publish_report
from tasks.execute import Run, execute
from tasks.keys import check_keys, ensure_keys
from tasks.snapshots import SNAPSHOT_BEFORE, snapshot_before_change
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

    A membership change (:data:`tasks.snapshots.SNAPSHOT_BEFORE`) takes and verifies an etcd snapshot
    once its plan is accepted and before its first step; if that fails, the run stops with nothing
    changed, unless ``skip_snapshot``."""

    def observe() -> ClusterState:
        return observe_cluster(change.cluster, spec.region, change.connection, tolerate_zones=tolerate_zones)

    # a connection to another project than the spec's sees another cluster: refused before any key
    # is read or anything is changed
    check_project(
        change.cluster, change.gce().project, SpecWhere(spec.region, spec.project, spec.uid), "nothing was changed"
    )
    if dry_run:
        check_keys(change.cluster, change.connection)  # a key that cannot be read: refused, as the run would be
        plan = plan_for(observe(), False)
        publish_plan(plan, change)
        return plan
    with cluster_lock(change.cluster):
        # before any GCE or etcd call: a cluster saved the old way has its keys moved to Secret Manager,
        # and a key that cannot be read is refused, naming its secret
        ensure_keys(change.cluster, change.connection)
        check_step_schema(change)
        plan = plan_for(observe(), True)
        publish_plan(plan, change)
        if plan.action in SNAPSHOT_BEFORE and plan.steps:  # a plan with no step changes nothing
            snapshot_before_change(change, spec, plan.action, skip_snapshot)
        figures = execute(Run(change, spec), plan)
    if not report:
        return plan
    notes = [note] + [f"{k}={v:.1f}" for k, v in figures.items()] + [plan.even_note]
    return publish_report(observe(), "; ".join(n for n in notes if n))
