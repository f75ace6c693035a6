"""delete-cluster: remove everything a cluster owns (the seed's full kube-down.sh).

Load balancer first (forwarding rule, pool, health check), then the replica
VMs, the endpoint IP, the firewall rules, the replicas' secrets, and last
the cluster's PKI and spec blocks. Every step looks first, so a failed run is simply run again.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from blocks import delete_block_document
from blocks.cluster import ClusterSpec
from flows.params import ClusterName, documented
from haplane.topology import ClusterNames, check_cluster_name
from tasks.cluster import cluster_lock, load_spec, observe_cluster
from tasks.compute import submit_delete_vm
from tasks.network import (
    firewall_rules,
    submit_delete_firewall,
    submit_delete_forwarding_rule,
    submit_delete_health_check,
    submit_delete_target_pool,
    submit_release_address,
)
from tasks.operations import Step, apply, apply_all
from tasks.pki import delete_cluster_pki, delete_cluster_secrets
from tasks.steps import Change


@flow(name="delete-cluster", log_prints=True)
@documented
def delete_cluster(
    cluster: ClusterName,
    connection: Annotated[str | None, Field(description="Name of a haplane-gce-connection block")] = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
) -> list[str]:
    check_cluster_name(cluster)
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"delete-{flow_run.get_id()}", connection)
    names = ClusterNames(cluster)
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection)
        apply(change, Step(submit_delete_forwarding_rule, "forwarding-rule", "delete the load balancer",
                           (spec.region,), timeout=3600, progress_key=f"{cluster}-load-balancer"))
        apply(change, Step(submit_delete_target_pool, "target-pool", "delete target pool", (spec.region,)))
        apply(change, Step(submit_delete_health_check, "health-check", "delete health check"))
        apply_all(change, [Step(submit_delete_vm, f"vm/{r.name}", f"delete VM {r.name}", (r.zone, r.name))
                          for r in state.vms])
        apply(change, Step(submit_release_address, "address", "release the endpoint IP", (spec.region,)))
        rules = firewall_rules(cluster, spec.api_source_ranges, spec.operator_ranges)
        apply_all(change, [Step(submit_delete_firewall, f"firewall/{n}", f"delete firewall {n}", (n,)) for n in rules])
        delete_cluster_secrets(change)  # the replicas' private keys, after their VMs
        delete_cluster_pki(cluster)
        delete_block_document(names.spec_block, ClusterSpec.get_block_type_slug())
    deleted = [r.name for r in state.vms]
    get_run_logger().info("deleted cluster %s: VMs %s, endpoint %s", cluster, deleted, state.endpoint_ip)
    return deleted
