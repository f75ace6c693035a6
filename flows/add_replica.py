"""add-replica: one more master replica (the seed's KUBE_REPLICATE_EXISTING_MASTER=true kube-up.sh).

The zone must be in the cluster's region; none given, the zone with the
fewest replicas. MULTIZONE and quorum reads are inherited from the cluster.
Join order: the VM runs -> its etcd member is added as a learner -> etcd
starts with initial-cluster-state=existing -> promoted once caught up.
Going 1 -> 2 creates the load balancer and moves the first replica's
static IP onto it, timing how long the endpoint does not answer.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from flows.params import ClusterName, SkipSnapshot, documented
from haplane.node import ApiServerSpec, EtcdSpec, peer_url
from haplane.observe import ClusterState
from haplane.plans import Plan, plan_add
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_plan, publish_report, zones_of
from tasks.compute import submit_create_vm
from tasks.etcd import add_learner, promote, wait_quorum
from tasks.network import (
    submit_drop_access_config,
    submit_forwarding_rule,
    submit_give_access_config,
    submit_health_check,
    submit_target_pool,
)
from tasks.operations import Step, apply
from tasks.pki import submit_configure_replica
from tasks.snapshots import snapshot_before_change
from tasks.steps import Change


def join_replica(change: Change, state: ClusterState, plan: Plan, prefix: str = "") -> dict[str, float]:
    """Execute an add plan on a cluster already locked; returns measured figures."""
    spec = load_spec(change.cluster)
    names, gce = state.names, change.gce()
    name, zone = plan.replica, plan.zone
    members = [r for r in state.vms if r.member_id is not None and r.name != name]
    member_ips = [r.internal_ip for r in members]

    # 1. The VM, bare, with the cluster's inherited settings as labels.
    labels = names.labels(spec.multizone, spec.quorum_reads)
    apply(change, Step(submit_create_vm, f"{prefix}vm/{name}", f"VM {name}",
                       (zone, name, spec.machine_type, labels, [names.tag])))
    vm = gce.get_instance(zone, name)

    # 2. etcd learns of it first, as a learner that does not vote.
    member_id = add_learner(change, f"{prefix}learner/{name}", member_ips, vm.internal_ip)

    # 3. Its etcd starts and joins the existing cluster.
    initial = ",".join([f"{r.name}={peer_url(r.internal_ip)}" for r in members] + [f"{name}={peer_url(vm.internal_ip)}"])
    etcd = EtcdSpec(name=name, initial_cluster=initial, initial_cluster_state="existing",
                    initial_cluster_token=change.cluster)
    api = ApiServerSpec(quorum_reads=spec.quorum_reads, service_cluster_ip_range=spec.service_cidr)
    apply(change, Step(submit_configure_replica, f"{prefix}configure/{name}", f"configure {name}",
                       (zone, name, state.endpoint_ip, etcd, api)))

    # 4. Promoted once caught up; then the cluster must be healthy with one more voter.
    promote(change, member_ips, member_id, name)
    wait_quorum(change.cluster, member_ips + [vm.internal_ip], expect_voting=len(members) + 1)

    figures: dict[str, float] = {}
    if plan.lb == "extend":
        apply(change, Step(submit_target_pool, f"{prefix}pool-add/{name}", f"add {name} to the target pool",
                           (state.region, [vm.self_link])))
    elif plan.lb == "create":
        figures = move_ip_to_load_balancer(change, state, name, [vm.self_link], prefix)
    return figures


def move_ip_to_load_balancer(change: Change, state: ClusterState, new_name: str, new_links: list[str],
                             prefix: str) -> dict[str, float]:
    """The seed's 1 -> 2 move: the first replica's static IP becomes the load balancer's IP.

    Health check and pool come first, so the only step inside the window where the endpoint does not
    answer is the forwarding rule GCE refuses while the IP is still on the VM.
    """
    logger = get_run_logger()
    region, gce = state.region, change.gce()
    first = next(r for r in state.vms if r.name != new_name)
    first_link = gce.instance_link(first.zone, first.name)
    apply(change, Step(submit_health_check, f"{prefix}health-check", "health check"))
    apply(change, Step(submit_target_pool, f"{prefix}target-pool", "target pool", (region, [first_link, *new_links])))

    started = time.monotonic()
    apply(change, Step(submit_drop_access_config, f"{prefix}release-ip/{first.name}",
                       f"take {state.endpoint_ip} off {first.name}", (first.zone, first.name),
                       {"only_if_ip": state.endpoint_ip}))
    logger.warning("endpoint %s is down until the load balancer answers", state.endpoint_ip)
    apply(change, Step(submit_forwarding_rule, f"{prefix}forwarding-rule", "load balancer (forwarding rule)",
                       (region, state.endpoint_ip), timeout=3600, progress_key=f"{change.cluster}-load-balancer"))
    downtime = time.monotonic() - started
    logger.info("endpoint %s answers through the load balancer; it was down %.1f s", state.endpoint_ip, downtime)
    apply(change, Step(submit_give_access_config, f"{prefix}ephemeral-ip/{first.name}",
                       f"new ephemeral IP for {first.name}", (first.zone, first.name)))
    return {"endpoint_downtime_s": downtime}


@flow(name="add-replica", log_prints=True)
@documented
def add_replica(
    cluster: ClusterName,
    zone: Annotated[str | None, Field(description="Zone of the cluster's region; empty: the zone with the fewest replicas", pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")] = None,
    connection: Annotated[str | None, Field(description="Name of a haplane-gce-connection block")] = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
    dry_run: bool = False,
    skip_snapshot: SkipSnapshot = False,
) -> Plan | list[dict[str, str]]:
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"add-{flow_run.get_id()}", connection)
    known = zones_of(spec.region, connection)
    if dry_run:
        plan = plan_add(observe_cluster(cluster, spec.region, connection), zone, change.change_id, known, spec.zones)
        publish_plan(plan, change)
        return plan
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection)
        plan = plan_add(state, zone, change.change_id, known, spec.zones)
        publish_plan(plan, change)
        snapshot_before_change(spec, connection, "add-replica", skip_snapshot)
        figures = join_replica(change, state, plan)
    note = "; ".join(f"{k}={v:.1f}" for k, v in figures.items())
    return publish_report(observe_cluster(cluster, spec.region, connection), note + ("; " + plan.even_note if plan.even_note else ""))
