"""remove-replica: take one master replica out (the seed's kube-down.sh with KUBE_DELETE_NODES=false).

By zone, optionally by name. Never the last replica (that is delete-cluster),
never a removal that breaks quorum, never on an etcd membership it could not
read. Remove order: take the VM out of the target pool (no request through
the endpoint reaches it) -> move etcd leadership away if the victim leads ->
remove the member -> delete the VM. In endpoint mode ``as-needed`` going
2 -> 1 deletes the load balancer and hands its IP back to the last replica;
in ``always`` the load balancer stays. The steps: haplane.core.plans.plan_remove.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from blocks.store import load_spec
from flows.change import run_change
from flows.params import ChangeId, ClusterName, Connection, DryRun, SkipSnapshot, Zone, documented
from haplane.core.model import ClusterState
from haplane.core.plans import Plan, PlanRefused, choose_victim, plan_remove, plan_removed
from tasks.steps import Change, remember


@flow(name="remove-replica", log_prints=True)
@documented
def remove_replica(
    cluster: ClusterName,
    zone: Annotated[Zone, Field(description="Zone to remove a replica from")],
    replica_name: Annotated[str | None, Field(description="The replica to remove; empty: one in the zone")] = None,
    delete_nodes: Annotated[
        bool, Field(description="KUBE_DELETE_NODES: haplane manages masters only and never deletes worker nodes")
    ] = False,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
    skip_snapshot: SkipSnapshot = False,
) -> Plan | list[dict[str, str]]:
    spec = load_spec(cluster)
    if delete_nodes:
        raise ValueError(
            "delete_nodes=True is not supported: haplane manages master replicas only and keeps "
            "worker nodes; delete nodes with your node-pool tooling"
        )
    change = Change(cluster, change_id or f"remove-{flow_run.get_id()}", connection)

    def plan_for(state: ClusterState, running: bool) -> Plan:
        name = replica_name
        if running:
            # the replica the change's first run chose: a resumed run finishes that one (its VM may be
            # gone by now) and never picks another one in the zone
            try:
                chosen = choose_victim(state, zone, replica_name)
                choice = [chosen.name, chosen.zone]
            except PlanRefused:
                choice = None
            recorded = remember(change, "victim", choice)
            if recorded:
                name = recorded[0]
                if state.replica(name) is None:
                    return plan_removed(state, name, recorded[1])
        return plan_remove(state, zone, name, mode=spec.load_balancer)

    return run_change(change, spec, plan_for, dry_run, skip_snapshot=skip_snapshot)
