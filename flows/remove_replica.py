"""remove-replica: take one master replica out (the seed's kube-down.sh with KUBE_DELETE_NODES=false).

By zone, optionally by name. Never the last replica (that is delete-cluster),
never a removal that breaks quorum. Remove order: move etcd leadership away
if the victim leads -> remove the member -> take the VM out of the target
pool -> delete it. Going 2 -> 1 deletes the load balancer and hands its IP
back to the last replica.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from flows.params import ClusterName, SkipSnapshot, Zone, documented
from haplane.observe import ClusterState
from haplane.plans import Plan, plan_remove
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_plan, publish_report
from tasks.compute import submit_delete_vm
from tasks.etcd import move_leader_away, remove_member, wait_quorum
from tasks.network import (
    submit_delete_forwarding_rule,
    submit_delete_health_check,
    submit_delete_target_pool,
    submit_drop_access_config,
    submit_give_access_config,
    submit_pool_remove,
)
from tasks.operations import Step, apply
from tasks.snapshots import snapshot_before_change
from tasks.steps import Change


def leave_replica(change: Change, state: ClusterState, plan: Plan, prefix: str = "") -> dict[str, float]:
    """Execute a remove plan on a cluster already locked; returns measured figures."""
    victim = state.replica(plan.replica)
    survivors = [r for r in state.vms if r.name != victim.name and r.member_id is not None]
    survivor_ips = [r.internal_ip for r in survivors if r.vm_status == "RUNNING"]
    gce = change.gce()

    # 1-2. etcd first: leadership moves away, then the member goes.
    if victim.member_id is not None:
        healthy = [r.member_id for r in survivors if r.etcd_ok and not r.learner]
        if victim.leader:
            move_leader_away(change, survivor_ips + [victim.internal_ip], victim.member_id, victim.name, healthy)
        remove_member(change, f"{prefix}member/{victim.name}", survivor_ips, victim.member_id, victim.name)
        voters = sum(1 for r in survivors if not r.learner)
        wait_quorum(change.cluster, survivor_ips, expect_voting=voters)

    # 3. The load balancer: shrink it, or hand its IP back to the last replica.
    figures: dict[str, float] = {}
    if plan.lb == "delete":
        figures = move_ip_to_last_replica(change, state, survivors[0].name, survivors[0].zone, prefix)
    elif plan.lb == "shrink" and victim.vm_status != "MISSING":
        apply(change, Step(submit_pool_remove, f"{prefix}pool-remove/{victim.name}",
                           f"take {victim.name} out of the target pool",
                           (state.region, gce.instance_link(victim.zone, victim.name))))

    # 4. The VM itself.
    if victim.vm_status != "MISSING":
        apply(change, Step(submit_delete_vm, f"{prefix}delete-vm/{victim.name}", f"delete VM {victim.name}",
                           (victim.zone, victim.name)))
    return figures


def move_ip_to_last_replica(change: Change, state: ClusterState, last: str, zone: str, prefix: str) -> dict[str, float]:
    """The seed's 2 -> 1 move: delete the load balancer and give its IP to the last replica."""
    logger = get_run_logger()
    started = time.monotonic()
    apply(change, Step(submit_delete_forwarding_rule, f"{prefix}delete-forwarding-rule",
                       "delete the load balancer (forwarding rule)", (state.region,), timeout=3600,
                       progress_key=f"{change.cluster}-load-balancer"))
    logger.warning("endpoint %s is down until %s carries it", state.endpoint_ip, last)
    apply(change, Step(submit_drop_access_config, f"{prefix}drop-ephemeral/{last}", f"drop {last}'s ephemeral IP",
                       (zone, last), {"unless_ip": state.endpoint_ip}))
    apply(change, Step(submit_give_access_config, f"{prefix}endpoint-ip/{last}", f"give {state.endpoint_ip} to {last}",
                       (zone, last), {"nat_ip": state.endpoint_ip}))
    downtime = time.monotonic() - started
    logger.info("endpoint %s answers from %s again after %.1f s", state.endpoint_ip, last, downtime)
    apply(change, Step(submit_delete_target_pool, f"{prefix}delete-target-pool", "delete target pool", (state.region,)))
    apply(change, Step(submit_delete_health_check, f"{prefix}delete-health-check", "delete health check"))
    return {"endpoint_downtime_s": downtime}


@flow(name="remove-replica", log_prints=True)
@documented
def remove_replica(
    cluster: ClusterName,
    zone: Annotated[Zone, Field(description="Zone to remove a replica from")],
    replica_name: Annotated[str | None, Field(description="The replica to remove; empty: one in the zone")] = None,
    delete_nodes: Annotated[bool, Field(description="KUBE_DELETE_NODES: haplane manages masters only and never deletes worker nodes")] = False,
    connection: Annotated[str | None, Field(description="Name of a haplane-gce-connection block")] = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
    dry_run: bool = False,
    skip_snapshot: SkipSnapshot = False,
) -> Plan | list[dict[str, str]]:
    spec = load_spec(cluster)
    if delete_nodes:
        raise ValueError("delete_nodes=True is not supported: haplane manages master replicas only and keeps "
                         "worker nodes; delete nodes with your node-pool tooling")
    change = Change(cluster, change_id or f"remove-{flow_run.get_id()}", connection)
    if dry_run:
        plan = plan_remove(observe_cluster(cluster, spec.region, connection), zone, replica_name)
        publish_plan(plan, change)
        return plan
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection)
        plan = plan_remove(state, zone, replica_name)
        publish_plan(plan, change)
        snapshot_before_change(spec, connection, "remove-replica", skip_snapshot)
        figures = leave_replica(change, state, plan)
    note = "; ".join(f"{k}={v:.1f}" for k, v in figures.items())
    return publish_report(observe_cluster(cluster, spec.region, connection),
                          note + ("; " + plan.even_note if plan.even_note else ""))
