"""What the health check does about a zone outage (decided by :func:`haplane.remediation.decide_zones`).

Not a flow of its own: the health-check flow calls these under the cluster's lock. Each takes
the decision's replica and zones, observes again under the lock, and looks before acting.

- :func:`move_out_of_zone`: the stranded VM is recorded in the spec *first* (a crash after the
  etcd removal then still leaves it to be deleted), the etcd member is removed (its peers refuse
  it from then on: a VM that comes back cannot rejoin as a voter), its VM leaves the target pool,
  then the replacement is added in another zone (learner first, as add-replica does).
- :func:`add_owed_replacement`: the replacement a move could not add yet (another voter was dead).
- :func:`delete_stranded`: once the zone answers, the stranded VMs are deleted.
- :func:`rebalance`: remove one replica of a crowded zone, add one in an empty zone.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import get_run_logger
from prefect.runtime import flow_run

from blocks.cluster import ClusterSpec
from flows.add_replica import join_replica
from flows.remove_replica import leave_replica
from haplane.model import ClusterState
from haplane.observe import now_utc
from haplane.plans import plan_add, plan_remove
from haplane.remediation import StrandedVm, ZoneVerdict
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_plan, zones_of
from tasks.compute import submit_delete_vm
from tasks.etcd import remove_member, wait_quorum
from tasks.network import submit_pool_remove
from tasks.operations import Step, apply
from tasks.steps import Change


def _save_stranded(cluster: str, update) -> ClusterSpec:
    """Re-read the spec and save ``update(stranded) -> stranded``: done records are dropped."""
    spec = load_spec(cluster)
    spec.stranded = [s for s in update(list(spec.stranded)) if not s.done]
    spec.save(f"{cluster}-spec", overwrite=True)
    return spec


def _change(cluster: str, connection: str | None, what: str) -> Change:
    return Change(cluster, f"{what}-{flow_run.get_id()}", connection)


def move_out_of_zone(cluster: str, connection: str | None, verdict: ZoneVerdict) -> str | None:
    """Remove a dead zone's member, record its VM as stranded, add its replacement; returns the new replica."""
    logger = get_run_logger()
    spec = load_spec(cluster)
    change = _change(cluster, connection, "zone-move")
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection, tolerate_zones=True)
        victim = state.replica(verdict.replica)
        if victim is not None and victim.member_id is not None:
            if not any(s.name == victim.name for s in spec.stranded):
                _save_stranded(cluster, lambda s: [*s, StrandedVm(victim.name, victim.zone,
                                                                   now_utc().isoformat(timespec="seconds"))])
            alive = [r for r in state.replicas if r.name != victim.name and r.member_id is not None
                     and r.vm_status == "RUNNING" and r.etcd_ok]
            ips = [r.internal_ip for r in alive]
            remove_member(change, f"member/{victim.name}", ips, victim.member_id, victim.name)
            voters = sum(1 for r in state.replicas if r.name != victim.name and r.member_id is not None
                         and not r.learner)
            logger.warning("removed %s (zone %s out) from etcd; %d voting members left", victim.name,
                           victim.zone, voters)
            if state.target_pool and victim.name in state.pool_members:
                gce = change.gce()
                apply(change, Step(submit_pool_remove, f"pool-remove/{victim.name}",
                                   f"take {victim.name} out of the target pool",
                                   (state.region, gce.instance_link(victim.zone, victim.name))))
            wait_quorum(cluster, ips, expect_voting=voters)
        if not verdict.add_now:
            return None
        return _add(change, cluster, connection, spec, verdict.to_zone, verdict.replica)


def add_owed_replacement(cluster: str, connection: str | None, verdict: ZoneVerdict) -> str | None:
    spec = load_spec(cluster)
    change = _change(cluster, connection, "zone-add")
    with cluster_lock(cluster):
        return _add(change, cluster, connection, spec, verdict.to_zone, verdict.replica)


def _add(change: Change, cluster: str, connection: str | None, spec: ClusterSpec, zone: str | None,
         stranded: str | None) -> str:
    state = observe_cluster(cluster, spec.region, connection, tolerate_zones=True)
    plan = plan_add(state, zone, change.change_id, zones_of(spec.region, connection), spec.zones)
    publish_plan(plan, change)
    join_replica(change, state, plan, prefix="add/")
    _save_stranded(cluster, lambda s: [replace(x, replacement=plan.replica) if x.name == stranded else x for x in s])
    get_run_logger().info("added %s in %s for %s", plan.replica, plan.zone, stranded)
    return plan.replica


def delete_stranded(cluster: str, connection: str | None, verdict: ZoneVerdict) -> list[str]:
    """Delete the stranded VMs of ``verdict`` (their zone answers again; none is an etcd member)."""
    spec = load_spec(cluster)
    change = _change(cluster, connection, "zone-clean")
    deleted = []
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection, tolerate_zones=True)
        gce = change.gce()
        for s in verdict.stale:
            r = state.replica(s.name)
            if r is not None and r.member_id is not None:  # decided against it, but look again under the lock
                raise RuntimeError(f"stranded VM {s.name} is an etcd member again; not deleting it")
            if state.target_pool and s.name in state.pool_members:
                apply(change, Step(submit_pool_remove, f"pool-remove/{s.name}", f"take {s.name} out of the pool",
                                   (state.region, gce.instance_link(s.zone, s.name))))
            apply(change, Step(submit_delete_vm, f"delete-vm/{s.name}", f"delete stranded VM {s.name}",
                               (s.zone, s.name)))
            deleted.append(s.name)
        _save_stranded(cluster, lambda rec: [replace(x, deleted=True) if x.name in deleted else x for x in rec])
    get_run_logger().info("deleted stranded VM(s) %s", deleted)
    return deleted


def rebalance(cluster: str, connection: str | None, verdict: ZoneVerdict) -> str:
    """Move one replica from a crowded zone to an empty one: remove it (quorum-safe), then add."""
    spec = load_spec(cluster)
    change = _change(cluster, connection, "rebalance")
    with cluster_lock(cluster):
        state: ClusterState = observe_cluster(cluster, spec.region, connection)
        removal = plan_remove(state, verdict.from_zone, verdict.replica, spec.load_balancer)
        publish_plan(removal, change)
        leave_replica(change, state, removal, prefix="remove/")
        state = observe_cluster(cluster, spec.region, connection)
        plan = plan_add(state, verdict.to_zone, change.change_id, zones_of(spec.region, connection), spec.zones)
        publish_plan(plan, change)
        join_replica(change, state, plan, prefix="add/")
    return plan.replica
