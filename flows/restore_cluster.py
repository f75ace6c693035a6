"""restore-cluster: rebuild a cluster that lost etcd quorum from a snapshot, keeping its endpoint IP and CA.

Refused, with nothing changed, unless etcd quorum is *seen* lost (:mod:`haplane.core.restore`): a majority
of the voting members as last known seen gone or answering without a leader across looks spanning
several election timeouts. Refused too while a member serves reads (replace-replica repairs that),
while members do not answer this worker (a partition may hide a majority with quorum), on a
connection to another project than the cluster's, and when the snapshot does not decrypt and
restore into a throw-away etcd. Its plan is typed steps run by the one executor (the dry run is the
run): save a verified snapshot from the surviving member with the highest revision, remove the
replicas left with their private keys, create one replica whose etcd restores the newer of that
snapshot and the stored one at boot as a new one-member cluster (new token, new member id), put it
behind the endpoint IP, then grow back through add-replica's path (learner first; each replica a
``grow/N`` step, a change of its own ``<change id>-grow-N`` planned when its turn comes). A failed run is
resumed with the same change_id. Never run by the health check: it only reports lost quorum.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import Field

from blocks.cluster import ClusterSpec
from blocks.store import load_spec
from flows.params import ChangeId, ClusterName, Connection, DryRun, documented
from haplane.cloud.observe import now_utc
from haplane.core.ownership import SpecWhere, check_project
from haplane.core.plans import with_preamble
from haplane.core.restore import (
    QuorumView,
    RestorePlan,
    Survivor,
    best_survivor,
    own_replicas,
    plan_restore,
    quorum_view,
)
from tasks.cluster import cluster_lock, observe_cluster, publish_plan, publish_report
from tasks.execute import Run, execute
from tasks.keys import check_keys
from tasks.snapshots import check_restorable, observe_quorum
from tasks.steps import Change, check_step_schema, remember


def plan_for(
    change: Change, spec: ClusterSpec, snapshot: str | None, storage: str | None, size: int | None, running: bool
) -> RestorePlan:
    """Observe, check the snapshot, look at etcd several times, decide. A run records the surviving member it
    saves a snapshot from (a resumed run, whose survivors are deleted by then, finds that snapshot again)."""
    cluster, connection = change.cluster, change.connection
    state = observe_cluster(cluster, spec.region, connection)
    meta = check_restorable(spec, snapshot, storage, connection)  # refuses a snapshot that cannot work: nothing changed
    evidence, ips = observe_quorum(
        spec, connection, ignore=own_replicas(cluster, change.change_id), snapshot_voters=meta.members
    )
    view = quorum_view(evidence)
    best = best_survivor(evidence.looks) if view[0] is QuorumView.LOST else None
    seen = [best[0], ips[best[0]], best[1]] if best else None
    vms = {n for n, _ in evidence.vms}
    gone = tuple(v for v in evidence.voters if v not in vms)
    pool = change.gce().get_target_pool(spec.region, state.names.target_pool) if state.target_pool else None
    links = tuple(pool.instances) if pool else ()

    def decide(found: list | None) -> RestorePlan:
        survivor = Survivor(*found) if found else None
        return plan_restore(
            state,
            view,
            meta,
            survivor.revision if survivor else None,
            now_utc(),
            change.change_id,
            spec.zones,
            size,
            survivor=survivor,
            named=snapshot is not None,
            gone_members=gone,
            pool_links=links,
        )

    plan = decide(seen)  # refuses here, before anything is recorded, unless quorum is seen lost
    if running:
        recorded = remember(change, "survivor", seen)
        if recorded != seen:
            plan = decide(recorded)
    return plan


@flow(name="restore-cluster", log_prints=True)
@documented
def restore_cluster(
    cluster: ClusterName,
    snapshot: Annotated[
        str | None,
        Field(
            description="Snapshot id to restore (see the <cluster>-snapshots "
            "artifact); empty: the newer of the newest stored one and "
            "the one saved first from the surviving members"
        ),
    ] = None,
    size: Annotated[
        int | None,
        Field(description="Replicas to grow back to; empty: as many as voted when the snapshot was taken", ge=1, le=7),
    ] = None,
    storage: Annotated[str | None, Field(description="Storage block '<type>/<name>'; empty: the cluster's")] = None,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
) -> RestorePlan | list[dict[str, str]]:
    logger = get_run_logger()
    started = time.monotonic()
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"restore-{flow_run.get_id()}", connection)
    # another project's view is not the cluster's: refused before anything is looked at there
    check_project(cluster, change.gce().project, SpecWhere(spec.region, spec.project, spec.uid), "nothing was changed")
    if dry_run:
        keys = check_keys(cluster, connection)  # a key that cannot be read: refused, as the run would be
        plan = plan_for(change, spec, snapshot, storage, size, running=False)
        plan = replace(plan, plan=with_preamble(plan.plan, keys))
        _publish(plan, change)
        return plan
    with cluster_lock(cluster):
        keys = check_keys(cluster, connection)  # an unreadable key refuses here; the plan's first step moves old ones
        check_step_schema(change)
        plan = plan_for(change, spec, snapshot, storage, size, running=True)
        plan = replace(plan, plan=with_preamble(plan.plan, keys))
        _publish(plan, change)
        # save the survivor's data, delete what is left, boot the restore, grow back through add-replica's path
        run = Run(change, spec)
        figures = execute(run, plan.plan)
        restored_s = run.started - started + figures.get("etcd_back_s", time.monotonic() - run.started)
        logger.info("etcd of %s answered again after %.1f s", cluster, restored_s)
    total_s = time.monotonic() - started
    lost = "unknown" if plan.lost_revisions is None else str(plan.lost_revisions)
    source = (
        f"the snapshot saved from {plan.survivor.name} (revision {plan.survivor.revision})"
        if plan.from_survivor and plan.survivor
        else f"{plan.snapshot_id} (revision {plan.snapshot_revision})"
    )
    note = (
        f"restored from {source}; lost revisions {lost}; etcd answered after {restored_s:.1f} s, "
        f"{plan.grow_to} replicas after {total_s:.1f} s"
    )
    logger.info("%s", note)
    return publish_report(observe_cluster(cluster, spec.region, connection), note)


def _publish(plan: RestorePlan, change: Change) -> None:
    get_run_logger().warning("%s", plan.loss())
    publish_plan(plan.plan, change)
    create_markdown_artifact(
        plan.markdown() + f"\n\n- change id: `{change.change_id}`",
        key=f"{change.cluster}-restore",
        description=f"restore-cluster plan for {change.cluster}: what is lost, what is done",
    )
