"""create-cluster: an HA-compatible control plane (the seed's `kube-up.sh` with MULTIZONE=true).

1 replica, as the seed does, or 3/5/7 at once spread over the zones of one
region. Certificates, firewall, a static endpoint IP; with more than one
replica a load balancer (target pool + forwarding rule) on that IP.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from blocks.cluster import ClusterSpec
from flows.params import ClusterName, Size, Zone, documented
from haplane.node import ApiServerSpec, EtcdSpec, peer_url
from haplane.plans import Plan, plan_create
from haplane.topology import ClusterNames, check_cluster_name
from tasks.cluster import cluster_lock, observe_cluster, publish_plan, publish_report, zones_of
from tasks.compute import submit_create_vm
from tasks.etcd import wait_quorum
from tasks.network import (
    check_source_ranges,
    default_operator_ranges,
    firewall_rules,
    submit_firewall,
    submit_forwarding_rule,
    submit_health_check,
    submit_reserve_address,
    submit_target_pool,
)
from tasks.operations import Step, apply, apply_all
from tasks.pki import ensure_cluster_pki, submit_configure_replica
from tasks.steps import Change


@flow(name="create-cluster", log_prints=True)
@documented
def create_cluster(
    cluster: ClusterName,
    region: Annotated[str, Field(description="GCE region, e.g. europe-west1", pattern=r"^[a-z]+-[a-z]+[0-9]+$")],
    zones: Annotated[list[Zone], Field(description="Zones of that region to spread replicas over", min_length=1)],
    replicas: Annotated[Size, Field(description="1, 3, 5 or 7 (2 is refused: two replicas are worse than one)")] = 1,
    multizone: Annotated[bool, Field(description="MULTIZONE: keep kubelets in other zones")] = True,
    quorum_reads: Annotated[bool, Field(description="ENABLE_ETCD_QUORUM_READ: API reads go to the etcd leader")] = False,
    machine_type: str = "e2-standard-2",
    api_source_ranges: list[str] | None = None,
    operator_ranges: Annotated[list[str] | None, Field(
        description="CIDRs the operator (Prefect workers) reaches etcd's client port from; default: this "
                    "worker's own egress address toward the cluster, e.g. ['203.0.113.7/32']")] = None,
    connection: Annotated[str | None, Field(description="Name of a haplane-gce-connection block")] = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
    dry_run: bool = False,
) -> Plan | list[dict[str, str]]:
    logger = get_run_logger()
    check_cluster_name(cluster)
    api_ranges = check_source_ranges(api_source_ranges or ["0.0.0.0/0"], "api_source_ranges")
    if operator_ranges:
        check_source_ranges(operator_ranges, "operator_ranges")
    change = Change(cluster, change_id or f"create-{flow_run.get_id()}", connection)
    names = ClusterNames(cluster)

    # Decide from what is there: nothing is changed before the plan is accepted.
    known = zones_of(region, connection)
    if dry_run:
        plan = plan_create(cluster, region, zones, replicas, change.change_id, known,
                           observe_cluster(cluster, region, connection))
        publish_plan(plan, change)
        return plan

    with cluster_lock(cluster):
        plan = plan_create(cluster, region, zones, replicas, change.change_id, known,
                           observe_cluster(cluster, region, connection))
        publish_plan(plan, change)
        ensure_cluster_pki(cluster)

        # The endpoint: a static IP, kept for the cluster's life (later the load balancer's IP).
        apply(change, Step(submit_reserve_address, "address", "endpoint IP", (region,)))
        endpoint_ip = change.gce().get_address(region, names.address).address

        if not operator_ranges:
            operator_ranges = default_operator_ranges(endpoint_ip)
            logger.info("etcd's client port admits this worker's egress %s (operator_ranges not given; "
                        "give them when workers reach the VMs through NAT or from other hosts)",
                        operator_ranges[0])
        ClusterSpec(cluster=cluster, region=region, zones=list(zones), multizone=multizone,
                    quorum_reads=quorum_reads, machine_type=machine_type, api_source_ranges=api_ranges,
                    operator_ranges=operator_ranges).save(names.spec_block, overwrite=True)
        rules = firewall_rules(cluster, api_ranges, operator_ranges)
        apply_all(change, [Step(submit_firewall, f"firewall/{n}", f"firewall {n}", (n, r)) for n, r in rules.items()])

        # The VMs, in parallel. A single replica carries the endpoint IP itself.
        labels = names.labels(multizone, quorum_reads)
        nat_ip = endpoint_ip if replicas == 1 else None
        apply_all(change, [
            Step(submit_create_vm, f"vm/{name}", f"VM {name}", (zone, name, machine_type, labels, [names.tag], nat_ip))
            for name, zone in plan.new_replicas])

        # etcd forms with initial-cluster when the members start together.
        gce = change.gce()
        vms = {name: gce.get_instance(zone, name) for name, zone in plan.new_replicas}
        initial = ",".join(f"{name}={peer_url(vm.internal_ip)}" for name, vm in vms.items())
        api = ApiServerSpec(quorum_reads=quorum_reads)
        apply_all(change, [
            Step(submit_configure_replica, f"configure/{name}", f"configure {name}",
                 (zone, name, endpoint_ip, EtcdSpec(name=name, initial_cluster=initial, initial_cluster_token=cluster), api))
            for name, zone in plan.new_replicas])
        wait_quorum(cluster, [vm.internal_ip for vm in vms.values()], expect_voting=replicas)

        if replicas > 1:
            apply(change, Step(submit_health_check, "health-check", "health check"))
            apply(change, Step(submit_target_pool, "target-pool", "target pool",
                               (region, [vm.self_link for vm in vms.values()])))
            logger.info("creating the load balancer on %s", endpoint_ip)
            apply(change, Step(submit_forwarding_rule, "forwarding-rule", "load balancer (forwarding rule)",
                               (region, endpoint_ip), timeout=3600, progress_key=f"{cluster}-load-balancer"))

    state = observe_cluster(cluster, region, connection)
    return publish_report(state, f"created by run {flow_run.get_id()}")
