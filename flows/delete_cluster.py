"""delete-cluster: remove everything a cluster owns (the seed's full kube-down.sh).

Load balancer first (forwarding rule, pool, health check), then the replica
VMs, the endpoint IP, the firewall rules, and last the cluster's PKI and
spec blocks. Every step looks first, so a failed run is simply run again.
The steps: haplane.core.plans.plan_delete.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from blocks.store import load_spec
from deployments.clusters import forget_cluster as forget_workspace_entries
from flows.change import run_change
from flows.params import ChangeId, ClusterName, Connection, DryRun, documented
from haplane.core.ownership import SpecWhere, check_delete
from haplane.core.plans import Plan, plan_delete
from haplane.core.topology import check_cluster_name
from tasks.cluster import forget_cluster, gce_footprint
from tasks.steps import Change, remember


@flow(name="delete-cluster", log_prints=True)
@documented
def delete_cluster(
    cluster: ClusterName,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
    gone: Annotated[
        bool,
        Field(
            description="The cluster is truly gone from GCE: remove its spec, PKI, schedule "
            "and locks although GCE shows nothing of it"
        ),
    ] = False,
) -> list[str] | Plan:
    check_cluster_name(cluster)
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"delete-{flow_run.get_id()}", connection)
    project = change.gce().project

    def plan_for(state, running):
        # a view that shows nothing may be a wrong connection: never delete the CA on it -- unless this
        # change itself emptied GCE: a resumed run (same change_id) counts what its first run found
        found = gce_footprint(cluster, spec.region, connection, ours_only=True)
        started_with = remember(change, "footprint", found) if running else found
        check_delete(cluster, project, SpecWhere(spec.region, spec.project, spec.uid), found or started_with, gone)
        return plan_delete(state)

    plan = run_change(change, spec, plan_for, dry_run, report=False)
    if dry_run:
        return plan
    # after the lock is released (its limit goes too): every schedule and automation naming the cluster
    removed = forget_workspace_entries(cluster) + forget_cluster(cluster)
    get_run_logger().info("removed %s", ", ".join(removed) or "no schedule, automation or lock")
    deleted = [s.arguments["name"] for s in plan.steps if s.id.startswith("vm/")]
    get_run_logger().info("deleted cluster %s: VMs %s", cluster, deleted)
    return deleted
