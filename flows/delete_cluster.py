"""delete-cluster: remove everything a cluster owns (the seed's full kube-down.sh).

Load balancer first (forwarding rule, pool, health check), then the replica
VMs, the endpoint IP, the firewall rules, and last the cluster's PKI and
spec blocks. Every step looks first, so a failed run is simply run again.
The steps: haplane.plans.plan_delete.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.change import run_change
from flows.params import ChangeId, ClusterName, Connection, DryRun, documented
from haplane.plans import Plan, plan_delete
from haplane.topology import check_cluster_name
from tasks.cluster import load_spec
from tasks.steps import Change


@flow(name="delete-cluster", log_prints=True)
@documented
def delete_cluster(
    cluster: ClusterName,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
) -> list[str] | Plan:
    check_cluster_name(cluster)
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"delete-{flow_run.get_id()}", connection)
    plan = run_change(change, spec, lambda state, _: plan_delete(state), dry_run, report=False)
    if dry_run:
        return plan
    deleted = [s.arguments["name"] for s in plan.steps if s.id.startswith("vm/")]
    get_run_logger().info("deleted cluster %s: VMs %s", cluster, deleted)
    return deleted
