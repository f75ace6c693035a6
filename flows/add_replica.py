"""add-replica: one more master replica (the seed's KUBE_REPLICATE_EXISTING_MASTER=true kube-up.sh).

The zone must be in the cluster's region; none given, the zone with the
fewest replicas. MULTIZONE and quorum reads are inherited from the cluster.
Join order: the VM runs -> its etcd member is added as a learner -> its
certificates and settings are written and etcd starts with
initial-cluster-state=existing -> promoted once caught up. Going 1 -> 2
creates the load balancer and moves the first replica's static IP onto it,
timing how long the endpoint does not answer. The steps: haplane.core.plans.plan_add.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from blocks.store import load_spec
from flows.change import run_change
from flows.params import ChangeId, ClusterName, Connection, DryRun, SkipSnapshot, documented
from haplane.core.plans import Plan, plan_add
from haplane.core.topology import check_multizone
from tasks.cluster import zones_of
from tasks.steps import Change


@flow(name="add-replica", log_prints=True)
@documented
def add_replica(
    cluster: ClusterName,
    zone: Annotated[
        str | None,
        Field(
            description="Zone of the cluster's region; empty: the zone with the fewest replicas",
            pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$",
        ),
    ] = None,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
    skip_snapshot: SkipSnapshot = False,
) -> Plan | list[dict[str, str]]:
    spec = load_spec(cluster)
    if zone is not None:
        check_multizone(spec.multizone, [*spec.zones, zone])  # a one-zone cluster stays in its zone
    change = Change(cluster, change_id or f"add-{flow_run.get_id()}", connection)
    return run_change(  # the zones are listed once the keys are read: a key that cannot be, before any GCE call
        change,
        spec,
        lambda state, _: plan_add(state, zone, change.change_id, zones_of(spec.region, connection), spec.zones),
        dry_run,
        skip_snapshot=skip_snapshot,
    )
