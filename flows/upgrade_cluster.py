"""upgrade-cluster: a new etcd or kube-apiserver version, one replica at a time, with the endpoint up and quorum held.

Each replica is replaced with one built at the target versions (replace-replica's steps: the member
removed, leadership moved away first when it leads; the new replica added as a learner, promoted once
caught up; quorum waited for), followers first and the leader last. A verified etcd snapshot is taken
first, like every membership change. The plan says, before anything changes, the order, the versions
on each side and the etcd cluster version expected at the end (etcd keeps the old one until the last
older member is gone). The rules (one etcd minor at a time, no minor downgrade once the cluster
version moved, kube-apiserver one minor at most, a whole cluster only) refuse before any call,
naming the rule: :mod:`haplane.core.versions`. Resumed by ``change_id``: each replacement is a change of
its own (``<change_id>-<n>``), so a resumed run skips the replicas already replaced and finishes the
one it stopped in.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks.store import load_spec
from flows.change import run_change
from flows.params import (
    ChangeId,
    ClusterName,
    Connection,
    DryRun,
    EtcdRelease,
    KubernetesRelease,
    SkipSnapshot,
    documented,
)
from haplane.core.model import ClusterState
from haplane.core.plans import Plan, PlanRefused
from haplane.core.topology import label_value
from haplane.core.versions import VersionRefused, check_offered, check_pinned, decide_upgrade, plan_upgrade
from tasks.steps import Change, remember

ORDER_STEP = "upgrade-order"


@flow(name="upgrade-cluster", log_prints=True)
@documented
def upgrade_cluster(
    cluster: ClusterName,
    etcd_version: EtcdRelease | None = None,
    kubernetes_version: KubernetesRelease | None = None,
    connection: Connection = None,
    change_id: ChangeId = None,
    dry_run: DryRun = False,
    skip_snapshot: SkipSnapshot = False,
) -> Plan | list[dict[str, str]]:
    spec = load_spec(cluster)
    etcd_to, kube_to = etcd_version or spec.etcd_version, kubernetes_version or spec.kubernetes_version
    check_offered(etcd_to, kube_to)  # also when called as a function, without the form
    change = Change(cluster, change_id or f"upgrade-{flow_run.get_id()}", connection)
    if not change.gce().endpoint:  # real GCE: its VMs install only releases with a pinned checksum
        check_pinned(etcd_to, kube_to)
    target = spec.model_copy(update={"etcd_version": etcd_to, "kubernetes_version": kube_to})

    def plan_for(state: ClusterState, running: bool) -> Plan:
        prefix = label_value(change.change_id) + "-"
        started = any(r.change and r.change.startswith(prefix) for r in state.vms)
        try:
            decision = decide_upgrade(
                state, etcd_to, kube_to, {r.name: r.kubernetes_version or spec.kubernetes_version for r in state.vms}
            )
        except VersionRefused as exc:
            if not (running and started):  # a fresh upgrade is refused before any call, naming the rule
                raise PlanRefused(
                    f"cannot upgrade {cluster!r} to etcd {etcd_to} / kube-apiserver {kube_to}: "
                    f"{exc}. Nothing was changed"
                ) from None
            # resumed mid-replacement (a learner may be pending): the rounds' own quorum rules decide
            order = remember(change, ORDER_STEP, None)
            get_run_logger().info("resuming upgrade %s in the order it started with: %s", change.change_id, order)
            return plan_upgrade(state, _resumed(state, etcd_to, kube_to), change.change_id, tuple(order))
        if decision.noop:
            get_run_logger().info("%s: %s", cluster, decision.reason)
            return plan_upgrade(state, decision, change.change_id)
        # the order of the first run holds for every resumed run (the leader may have moved since)
        order = tuple(remember(change, ORDER_STEP, list(decision.order))) if running else decision.order
        return plan_upgrade(state, decision, change.change_id, order)

    return run_change(
        change,
        target,
        plan_for,
        dry_run,
        note=f"upgraded to etcd {etcd_to}, kube-apiserver {kube_to}",
        skip_snapshot=skip_snapshot,
    )


def _resumed(state: ClusterState, etcd_to: str, kube_to: str):
    """The decision of a resumed upgrade whose cluster is mid-replacement: versions as observed."""
    from haplane.core.versions import UpgradeDecision, minor_text

    return UpgradeDecision(
        noop=False,
        reason="resuming an upgrade that was stopped mid-replacement",
        order=(),
        etcd_from={r.name: r.etcd_version or "unread" for r in state.replicas},
        kubernetes_from={r.name: r.kubernetes_version or "?" for r in state.replicas},
        etcd_to=etcd_to,
        kubernetes_to=kube_to,
        cluster_version_before=state.etcd_cluster_version or "0.0.0",
        cluster_version_after=minor_text(etcd_to),
    )
