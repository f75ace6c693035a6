"""set-load-balancer: convert a cluster's endpoint mode between 'always' and 'as-needed'.

With 2 or more replicas both modes have the load balancer: only the spec changes
(in 'as-needed' the load balancer then goes at the next 2 -> 1, the seed's way).
A 1-replica cluster changes in GCE, with a one-time endpoint downtime its plan
states up front: to 'always' the replica's static IP moves onto a new forwarding
rule (the seed's 1 -> 2 move without the new replica); to 'as-needed' the
forwarding rule goes and the IP returns to the replica (the seed's 2 -> 1 move).
The steps: haplane.core.plans.plan_set_load_balancer.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from blocks.store import load_spec
from flows.change import run_change
from flows.params import ChangeId, ClusterName, Connection, DryRun, LoadBalancerMode, documented
from haplane.core.endpoint import EndpointMode
from haplane.core.plans import Plan, plan_set_load_balancer
from tasks.steps import Change


@flow(name="set-load-balancer", log_prints=True)
@documented
def set_load_balancer(
    cluster: ClusterName,
    mode: LoadBalancerMode,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
) -> Plan | list[dict[str, str]]:
    mode = EndpointMode(mode)
    spec = load_spec(cluster)
    current = spec.load_balancer
    change = Change(cluster, change_id or f"endpoint-{flow_run.get_id()}", connection)
    target_spec = spec.model_copy(update={"load_balancer": mode})  # what the plan's "spec" step saves
    return run_change(
        change,
        target_spec,
        lambda state, _: plan_set_load_balancer(state, current, mode),
        dry_run,
        note=f"endpoint mode {mode.value}",
    )
