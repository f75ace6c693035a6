"""Certificate rotation: its order and the expiry decisions (the rotations on a cluster are tests/test_rotation.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.core.model import ClusterState, ReplicaState, Unknown
from haplane.core.rotation import expiry_decision, rotation_order


def test_rotation_goes_leader_last_and_refuses_a_sick_or_unknown_cluster():
    state = ClusterState("c", "r", (_replica("c-1", leader=True), _replica("c-3"), _replica("c-2")))
    assert [r.name for r in rotation_order(state)] == ["c-2", "c-3", "c-1"]
    with pytest.raises(RuntimeError, match=r"\['c-3'\] are not healthy.*Nothing was rotated"):
        rotation_order(ClusterState("c", "r", (_replica("c-1", leader=True), _replica("c-3", healthy=False))))
    unknown = ClusterState("c", "r", (_replica("c-1"),), membership_unknown=Unknown("etcd membership of c", "timeout"))
    with pytest.raises(RuntimeError, match="could not be observed.*nothing was rotated"):
        rotation_order(unknown)


def test_expiry_warns_first_rotates_later_and_never_for_a_ca_alone():
    day = dt.timedelta(days=1)
    certs = [
        ("cluster-ca", NOW + 3000 * day),
        ("c-1/etcd-peer", NOW + 20 * day),
        ("operator-etcd-client", NOW + 40 * day),
    ]
    d = expiry_decision(certs, NOW)
    assert [e.role for e in d.warn] == ["c-1/etcd-peer"] and not d.rotate
    d = expiry_decision([*certs, ("c-2/apiserver", NOW + 13 * day)], NOW)
    assert [e.role for e in d.warn] == ["c-2/apiserver", "c-1/etcd-peer"] and d.rotate
    d = expiry_decision([("etcd-ca", NOW + 5 * day)], NOW)
    assert d.warn and not d.rotate and d.ca_attention and "CA rotation" in d.text
    with pytest.raises(ValueError, match="must not exceed warn_days"):
        expiry_decision(certs, NOW, warn_days=10, rotate_days=20)


NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


def _replica(name: str, leader: bool = False, healthy: bool = True) -> ReplicaState:
    return ReplicaState(
        name=name,
        zone="z-a",
        vm_status="RUNNING",
        member_id=hash(name) & 0xFFFF,
        etcd_ok=healthy,
        api_ready=healthy,
        leader=leader,
    )
