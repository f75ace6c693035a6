"""restore-cluster: rebuild a cluster that lost etcd quorum from a snapshot, keeping its endpoint IP and CA.

Refuses unless etcd quorum is seen lost: while a member serves reads (replace-replica repairs that),
and while nothing answers this worker (a network or credentials problem is not a dead cluster).
Says what it will lose (the snapshot's time and revision against the last revision seen), then,
before removing anything, checks the snapshot (or the newest) decrypts and restores into a
throw-away etcd. Then: removes the replicas left (their data belongs to the lost cluster), creates
one replica whose etcd restores the snapshot at boot as a new one-member cluster (new cluster token,
new member id), puts it behind the endpoint IP, and grows back to the previous size through
add-replica's path (learner first). Never run by the health check: it only reports lost quorum.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import Field

from flows.params import ClusterName, Connection, documented
from haplane.node import ApiServerSpec, EtcdSpec, RestoreSpec, peer_url
from haplane.observe import now_utc
from haplane.plans import plan_add
from haplane.restore import RestorePlan, plan_restore, quorum_view
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_plan, publish_report, zones_of
from tasks.compute import submit_create_vm, submit_delete_vm
from tasks.etcd import wait_quorum
from tasks.execute import Run, execute
from tasks.keys import ensure_keys
from tasks.network import submit_pool_remove, submit_target_pool
from tasks.operations import Step, apply, apply_all
from tasks.pki import operator_tls, submit_configure_replica
from tasks.snapshots import check_restorable, last_revision_seen, probe_quorum
from tasks.steps import Change


@flow(name="restore-cluster", log_prints=True)
@documented
def restore_cluster(
    cluster: ClusterName,
    snapshot: Annotated[str | None, Field(description="Snapshot id to restore (see the <cluster>-snapshots "
                                                      "artifact); empty: the newest")] = None,
    size: Annotated[int | None, Field(description="Replicas to grow back to; empty: as many as voted when the "
                                                  "snapshot was taken", ge=1, le=7)] = None,
    storage: Annotated[str | None, Field(description="Storage block '<type>/<name>'; empty: the cluster's")] = None,
    connection: Connection = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
    dry_run: Annotated[bool, Field(description="Check the snapshot and say what would be lost; change nothing")] = False,
) -> RestorePlan | list[dict[str, str]]:
    logger = get_run_logger()
    started = time.monotonic()
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"restore-{flow_run.get_id()}", connection)
    with cluster_lock(cluster):
        ensure_keys(cluster, connection)  # keys moved out of an old block; an unreadable one refuses here
        state = observe_cluster(cluster, spec.region, connection)
        meta = check_restorable(spec, snapshot, storage, connection)  # refuses a snapshot that cannot work: nothing changed
        seen = last_revision_seen(change.gce(), spec, operator_tls(cluster, connection))
        view = quorum_view(probe_quorum(spec, connection))
        plan = plan_restore(state, view, meta, seen, now_utc(), change.change_id, spec.zones, size)
        logger.warning("%s", plan.loss())
        create_markdown_artifact(plan.markdown() + f"\n\n- change id: `{change.change_id}`", key=f"{cluster}-restore",
                                 description=f"restore-cluster plan for {cluster}: what is lost, what is done")
        if dry_run:
            return plan

        # 1. The replicas left go: their etcd data belongs to the cluster that was lost.
        gce = change.gce()
        if plan.keep_load_balancer:
            apply_all(change, [Step(submit_pool_remove, f"pool-remove/{n}", f"take {n} out of the target pool",
                                    (spec.region, gce.instance_link(z, n))) for n, z in plan.remove])
        apply_all(change, [Step(submit_delete_vm, f"delete-vm/{n}", f"delete VM {n}", (z, n)) for n, z in plan.remove])

        # 2. One replica whose etcd starts from the snapshot: a new one-member cluster.
        names = state.names
        apply(change, Step(submit_create_vm, f"vm/{plan.replica}", f"VM {plan.replica}",
                           (plan.zone, plan.replica, spec.machine_type, names.labels(spec.multizone, spec.quorum_reads),
                            [names.tag], None if plan.keep_load_balancer else state.endpoint_ip)))
        vm = gce.get_instance(plan.zone, plan.replica)
        etcd = EtcdSpec(name=plan.replica, initial_cluster=f"{plan.replica}={peer_url(vm.internal_ip)}",
                        initial_cluster_state="new", initial_cluster_token=plan.token)
        api = ApiServerSpec(quorum_reads=spec.quorum_reads, service_cluster_ip_range=spec.service_cidr)
        restore = RestoreSpec(url=meta.where, snapshot_id=meta.snapshot_id, sha256=meta.sha256)
        apply(change, Step(submit_configure_replica, f"configure/{plan.replica}", f"configure {plan.replica}",
                           (plan.zone, plan.replica, state.endpoint_ip, etcd, api), {"restore": restore}))
        wait_quorum(cluster, [vm.internal_ip], expect_voting=1, connection=connection)
        if plan.keep_load_balancer:
            apply(change, Step(submit_target_pool, f"pool-add/{plan.replica}", f"add {plan.replica} to the target pool",
                               (spec.region, [vm.self_link])))
        restored_s = time.monotonic() - started
        logger.info("etcd of %s answers again from snapshot %s after %.1f s", cluster, meta.snapshot_id, restored_s)

        # 3. Back to the previous size through the normal add path.
        known = zones_of(spec.region, connection)
        for i in range(1, plan.grow_to):
            grow = Change(cluster, f"{change.change_id}-grow-{i}", connection)
            current = observe_cluster(cluster, spec.region, connection)
            if len(current.voting) >= plan.grow_to:
                break
            addition = plan_add(current, None, grow.change_id, known, spec.zones)
            publish_plan(addition, grow)
            execute(Run(grow, spec), addition)
    total_s = time.monotonic() - started
    lost = "unknown" if plan.lost_revisions is None else str(plan.lost_revisions)
    note = (f"restored from {meta.snapshot_id} (revision {meta.revision}); lost revisions {lost}, up to "
            f"{plan.lost_seconds:.0f} s of writes; etcd answered after {restored_s:.1f} s, "
            f"{plan.grow_to} replicas after {total_s:.1f} s")
    logger.info("%s", note)
    return publish_report(observe_cluster(cluster, spec.region, connection), note)
