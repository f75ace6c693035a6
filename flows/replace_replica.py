"""replace-replica: the seed's best practice for a failed replica, in one quorum-safe, resumable run.

Remove the failed replica (kube-down.sh with KUBE_REPLICA_NAME), then add a
new one in the same zone (kube-up.sh with KUBE_REPLICATE_EXISTING_MASTER), as
one plan: the removal's steps ("remove/...") then the addition's ("add/...").
Removing first is what etcd advises: a dead member still counts in the
quorum, so adding before removing would raise the quorum it cannot meet.
A run resumed after the removal plans the rest of the addition. The steps:
haplane.core.plans.plan_replace.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from blocks.store import load_spec
from flows.change import run_change
from flows.params import ChangeId, ClusterName, Connection, DryRun, SkipSnapshot, documented
from haplane.core.model import ClusterState
from haplane.core.plans import Plan
from tasks.cluster import zones_of
from tasks.replace import plan_replacement
from tasks.steps import Change


@flow(name="replace-replica", log_prints=True)
@documented
def replace_replica(
    cluster: ClusterName,
    replica_name: Annotated[str, Field(description="The failed replica to replace")],
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
    skip_snapshot: SkipSnapshot = False,
) -> Plan | list[dict[str, str]]:
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"replace-{flow_run.get_id()}", connection)

    def plan_for(state: ClusterState, running: bool) -> Plan:
        # the zones are listed once the keys are read: a key that cannot be is refused before any GCE call
        return plan_replacement(change, spec, zones_of(spec.region, connection), replica_name, state, running)

    return run_change(change, spec, plan_for, dry_run, note=f"replaced {replica_name}", skip_snapshot=skip_snapshot)
