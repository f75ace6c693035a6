"""set-load-balancer: convert a cluster's endpoint mode between 'always' and 'as-needed'.

With 2 or more replicas both modes have the load balancer: only the spec changes
(in 'as-needed' the load balancer then goes at the next 2 -> 1, the seed's way).
A 1-replica cluster changes in GCE, with a one-time endpoint downtime its plan
states up front: to 'always' the replica's static IP moves onto a new forwarding
rule (the seed's 1 -> 2 move without the new replica); to 'as-needed' the
forwarding rule goes and the IP returns to the replica (the seed's 2 -> 1 move).
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from flows.add_replica import move_ip_to_load_balancer
from flows.params import ClusterName, Connection, LoadBalancerMode, documented
from flows.remove_replica import move_ip_to_last_replica
from haplane.endpoint import EndpointMode
from haplane.model import LbChange
from haplane.plans import Plan, plan_set_load_balancer
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_plan, publish_report
from tasks.steps import Change


@flow(name="set-load-balancer", log_prints=True)
@documented
def set_load_balancer(
    cluster: ClusterName,
    mode: LoadBalancerMode,
    connection: Connection = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
    dry_run: bool = False,
) -> Plan | list[dict[str, str]]:
    mode = EndpointMode(mode)
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"endpoint-{flow_run.get_id()}", connection)
    if dry_run:
        plan = plan_set_load_balancer(observe_cluster(cluster, spec.region, connection), spec.load_balancer, mode)
        publish_plan(plan, change)
        return plan
    figures: dict[str, float] = {}
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection)
        plan = plan_set_load_balancer(state, spec.load_balancer, mode)
        publish_plan(plan, change)
        if plan.lb is LbChange.CREATE:
            figures = move_ip_to_load_balancer(change, state, "", [], "")
        elif plan.lb is LbChange.DELETE:
            last = state.vms[0]
            figures = move_ip_to_last_replica(change, state, last.name, last.zone, "")
        spec = load_spec(cluster)
        if spec.load_balancer is not mode:
            spec.load_balancer = mode
            spec.save(state.names.spec_block, overwrite=True)
    note = f"endpoint mode {mode.value}" + "".join(f"; {k}={v:.1f}" for k, v in figures.items())
    return publish_report(observe_cluster(cluster, spec.region, connection), note)
