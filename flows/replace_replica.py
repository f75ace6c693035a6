"""replace-replica: the seed's best practice for a failed replica, in one quorum-safe, resumable run.

Remove the failed replica (kube-down.sh with KUBE_REPLICA_NAME), then add a
new one in the same zone (kube-up.sh with KUBE_REPLICATE_EXISTING_MASTER).
Removing first is what etcd advises: a dead member still counts in the
quorum, so adding before removing would raise the quorum it cannot meet.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from flows.add_replica import join_replica
from flows.params import ClusterName, SkipSnapshot, documented
from flows.remove_replica import leave_replica
from haplane.plans import Plan, plan_add, plan_replace
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_plan, publish_report, zones_of
from tasks.snapshots import snapshot_before_change
from tasks.steps import Change, remember


@flow(name="replace-replica", log_prints=True)
@documented
def replace_replica(
    cluster: ClusterName,
    replica_name: Annotated[str, Field(description="The failed replica to replace")],
    connection: Annotated[str | None, Field(description="Name of a haplane-gce-connection block")] = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
    dry_run: bool = False,
    skip_snapshot: SkipSnapshot = False,
) -> tuple[Plan, Plan] | list[dict[str, str]]:
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"replace-{flow_run.get_id()}", connection)
    known = zones_of(spec.region, connection)
    if dry_run:
        plans = plan_replace(observe_cluster(cluster, spec.region, connection), replica_name,
                             change.change_id, known)
        for plan in plans:
            publish_plan(plan, change)
        return plans
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection)
        if state.replica(replica_name) is not None:
            removal, _ = plan_replace(state, replica_name, change.change_id, known)
            publish_plan(removal, change)
            snapshot_before_change(spec, connection, "replace-replica", skip_snapshot)
            leave_replica(change, state, removal, prefix="remove/")
            # a VM gone: its zone is unknown, take the least used
            zone = remember(change, "replaced-zone", removal.zone if removal.zone != "?" else None)
        else:  # resumed after the removal: the new replica goes where the old one was
            zone = remember(change, "replaced-zone", None)
            if zone is None and _zone_of_change(state, change) is None:
                plan_replace(state, replica_name, change.change_id, known)  # not a resumed replace: refuse
        state = observe_cluster(cluster, spec.region, connection)
        addition = plan_add(state, zone, change.change_id, known, spec.zones)
        publish_plan(addition, change)
        join_replica(change, state, addition, prefix="add/")
    final = observe_cluster(cluster, spec.region, connection)
    return publish_report(final, f"replaced {replica_name} by {addition.replica}"
                          + ("; " + addition.even_note if addition.even_note else ""))


def _zone_of_change(state, change: Change) -> str | None:
    from haplane.topology import label_value

    return next((r.zone for r in state.vms if r.change == label_value(change.change_id)), None)
