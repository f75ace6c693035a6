"""create-cluster: an HA-compatible control plane (the seed's `kube-up.sh` with MULTIZONE=true).

1 replica, as the seed does, or 3/5/7 at once spread over the zones of one
region. Certificates, firewall, a static endpoint IP, and a load balancer
(health check, target pool, forwarding rule) on that IP: from the first
replica in endpoint mode ``always`` (the default), from 2 replicas in
``as-needed`` (the seed's). The load balancer is built beside the VMs, off
the critical path; replicas join its pool once their API servers are ready.
The VMs are created side by side; etcd forms with initial-cluster when their
members start together. The steps: haplane.core.plans.plan_create.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from blocks.cluster import MULTIZONE_TEXT, QUORUM_READS_NOTE, QUORUM_READS_TEXT, ClusterSpec
from flows.change import run_change
from flows.params import (
    ChangeId,
    ClusterName,
    Connection,
    DryRun,
    EtcdRelease,
    KubernetesRelease,
    LeafLifetime,
    LoadBalancerMode,
    Size,
    Zones,
    documented,
)
from haplane.core.endpoint import EndpointMode
from haplane.core.ownership import check_create, new_uid
from haplane.core.plans import Plan, plan_create
from haplane.core.topology import check_cluster_name, check_multizone
from haplane.core.versions import DEFAULT_ETCD_VERSION, DEFAULT_KUBERNETES_VERSION, check_offered, check_pinned
from tasks.cluster import gce_footprint, spec_where, zones_of
from tasks.kinds.firewall import check_source_ranges
from tasks.steps import Change


@flow(name="create-cluster", log_prints=True)
@documented
def create_cluster(
    cluster: ClusterName,
    region: Annotated[str, Field(description="GCE region, e.g. europe-west1", pattern=r"^[a-z]+-[a-z]+[0-9]+$")],
    zones: Annotated[Zones, Field(description="Zones of that region to spread replicas over, each once")],
    replicas: Annotated[Size, Field(description="1, 3, 5 or 7 (2 is refused: two replicas are worse than one)")] = 1,
    load_balancer: LoadBalancerMode = EndpointMode.ALWAYS,
    multizone: Annotated[bool, Field(description=MULTIZONE_TEXT)] = True,
    quorum_reads: Annotated[bool, Field(description=QUORUM_READS_TEXT)] = False,
    machine_type: str = "e2-standard-2",
    api_source_ranges: list[str] | None = None,
    operator_ranges: Annotated[
        list[str] | None,
        Field(
            description="CIDRs the operator (Prefect workers) reaches etcd's client port from; default: this "
            "worker's own egress address toward the cluster, e.g. ['203.0.113.7/32']"
        ),
    ] = None,
    leaf_lifetime_minutes: LeafLifetime = None,
    etcd_version: EtcdRelease = DEFAULT_ETCD_VERSION,
    kubernetes_version: KubernetesRelease = DEFAULT_KUBERNETES_VERSION,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
) -> Plan | list[dict[str, str]]:
    check_cluster_name(cluster)
    check_offered(etcd_version, kubernetes_version)  # also when called as a function, without the form
    check_multizone(multizone, zones)
    if quorum_reads:
        get_run_logger().warning("quorum_reads=true is recorded but changes nothing: %s", QUORUM_READS_NOTE)
    api_ranges = check_source_ranges(api_source_ranges or ["0.0.0.0/0"], "api_source_ranges")
    if operator_ranges:
        check_source_ranges(operator_ranges, "operator_ranges")
    change = Change(cluster, change_id or f"create-{flow_run.get_id()}", connection)
    if not change.gce().endpoint:  # real GCE: its VMs install only releases with a pinned checksum
        check_pinned(etcd_version, kubernetes_version)
    known = zones_of(region, connection)  # refuses an unknown region before anything else
    project = change.gce().project
    where = spec_where(cluster)  # a name taken anywhere is refused before anything changes
    check_create(cluster, region, project, where, [] if where else gce_footprint(cluster, region, connection))
    spec = ClusterSpec(
        cluster=cluster,
        region=region,
        zones=list(zones),
        multizone=multizone,
        quorum_reads=quorum_reads,
        machine_type=machine_type,
        api_source_ranges=api_ranges,
        operator_ranges=operator_ranges or [],  # none: the worker's egress (tasks/execute.py)
        project=project,
        uid=where.uid if where else new_uid(),  # a resumed create keeps its uid
        load_balancer=EndpointMode(load_balancer),
        etcd_version=etcd_version,
        kubernetes_version=kubernetes_version,
    )
    return run_change(
        change,
        spec,
        lambda existing, _: plan_create(
            cluster,
            region,
            zones,
            replicas,
            change.change_id,
            known,
            existing,
            spec.load_balancer,
            leaf_lifetime_minutes,
        ),
        dry_run,
        note=f"created by run {flow_run.get_id()}",
    )
