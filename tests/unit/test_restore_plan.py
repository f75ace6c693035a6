"""The restore decision (pure): quorum must be seen lost; what is lost, what is removed, the size to grow to."""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.model import ClusterState, ReplicaState
from haplane.plans import PlanRefused
from haplane.restore import EtcdProbe, QuorumView, plan_restore, quorum_view
from haplane.snapshots import SnapshotMeta
from haplane.testing import ZONES
from haplane.topology import label_value, replica_name

NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
LOST = (QuorumView.LOST, "seen lost")


def _snap(members: int = 3, minutes: float = 10, cluster: str = "c") -> SnapshotMeta:
    taken = NOW - dt.timedelta(minutes=minutes)
    return SnapshotMeta(cluster=cluster, snapshot_id="s1", revision=100, taken_at=taken.isoformat(),
                        sha256="0" * 64, size=1, members=members)


def _state(*replicas: ReplicaState, pool: bool = True) -> ClusterState:
    return ClusterState(cluster="c", region="europe-west1", replicas=replicas, endpoint_ip="127.30.0.1",
                        load_balancer=pool, target_pool=pool)


def _r(name: str, zone: str = "europe-west1-b", change: str | None = None) -> ReplicaState:
    return ReplicaState(name=name, zone=zone, vm_status="RUNNING", internal_ip="127.10.0.2", change=change)


@pytest.mark.parametrize(("probe", "view"), [
    (EtcdProbe(3, answering=("a", "b"), with_leader=("a", "b"), readable=("a",)), QuorumView.HOLDS),
    (EtcdProbe(1, answering=("a",), unreachable=()), QuorumView.LOST),  # alive, no leader: seen lost
    (EtcdProbe(0, vms=0), QuorumView.LOST),  # GCE says the cluster has no VM left
    (EtcdProbe(0, vms=2), QuorumView.UNKNOWN),  # stopped VMs keep their data: start them first
    (EtcdProbe(3, unreachable=("a: TLS handshake failed", "b: timed out", "c: timed out")), QuorumView.UNKNOWN),
    (EtcdProbe(2, answering=("a",), with_leader=("a",)), QuorumView.UNKNOWN),  # an election, not a loss
])
def test_quorum_is_lost_only_when_seen_lost(probe, view):
    assert quorum_view(probe)[0] is view


def test_refused_while_quorum_holds_or_is_unknown():
    with pytest.raises(PlanRefused, match="still has etcd quorum"):
        plan_restore(_state(_r("a")), (QuorumView.HOLDS, "1 member(s) serve"), _snap(), 120, NOW, "r", ZONES)
    with pytest.raises(PlanRefused, match="cannot tell whether .* nothing was changed"):
        plan_restore(_state(_r("a")), (QuorumView.UNKNOWN, "no member answered"), _snap(), 120, NOW, "r", ZONES)


def test_lost_quorum_plan_says_what_is_lost_and_removes_what_is_left():
    state = _state(_r("a"), _r("b", zone="europe-west1-c"))
    plan = plan_restore(state, LOST, _snap(), 130, NOW, "restore-1", ZONES)
    assert plan.lost_revisions == 30 and plan.lost_seconds == 600
    assert "30 revision(s) (last seen 130)" in plan.loss() and "600 s" in plan.loss()
    assert plan.remove == (("a", "europe-west1-b"), ("b", "europe-west1-c"))
    assert plan.replica == replica_name("c", "restore-1", 0) and plan.grow_to == 3 and plan.keep_load_balancer
    assert "endpoint IP are kept" in plan.markdown()


def test_unknown_last_revision_and_sizes():
    plan = plan_restore(_state(pool=False), LOST, _snap(members=0), None, NOW, "r", ZONES)
    assert plan.lost_revisions is None and "unknown" in plan.loss()
    assert plan.grow_to == 1 and not plan.keep_load_balancer  # nothing known: one replica
    assert plan_restore(_state(), LOST, _snap(members=2), None, NOW, "r", ZONES).grow_to == 3  # even: up to odd
    assert plan_restore(_state(), LOST, _snap(members=3), None, NOW, "r", ZONES, size=5).grow_to == 5


def test_a_resumed_restore_keeps_its_own_replicas_and_goes_on_although_quorum_holds():
    mine = replica_name("c", "restore-1", 0)
    state = _state(_r(mine, change=label_value("restore-1")),
                   _r("grown", zone="europe-west1-c", change=label_value("restore-1-grow-1")), _r("old"))
    plan = plan_restore(state, (QuorumView.HOLDS, "its own"), _snap(), None, NOW, "restore-1", ZONES)
    assert plan.resuming and plan.remove == (("old", "europe-west1-b"),)


def test_snapshot_of_another_cluster_is_refused():
    with pytest.raises(PlanRefused, match="of cluster 'other'"):
        plan_restore(_state(), LOST, _snap(cluster="other"), None, NOW, "r", ZONES)
