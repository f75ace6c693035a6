"""Certificate rotation: its order, its plan and the expiry decisions (the rotations on a cluster are
tests/test_rotation.py and tests/test_ca_rotation.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.core.model import ClusterState, ReplicaState, Unknown
from haplane.core.rotation import RotationOptions, expiry_decision, plan_rotation, rotation_order
from haplane.core.steps import StepKind


def test_rotation_goes_leader_last_and_refuses_a_sick_or_unknown_cluster():
    state = ClusterState("c", "r", (_replica("c-1", leader=True), _replica("c-3"), _replica("c-2")))
    assert [r.name for r in rotation_order(state)] == ["c-2", "c-3", "c-1"]
    with pytest.raises(RuntimeError, match=r"\['c-3'\] are not healthy.*Nothing was rotated"):
        rotation_order(ClusterState("c", "r", (_replica("c-1", leader=True), _replica("c-3", healthy=False))))
    unknown = ClusterState("c", "r", (_replica("c-1"),), membership_unknown=Unknown("etcd membership of c", "timeout"))
    with pytest.raises(RuntimeError, match="could not be observed.*nothing was rotated"):
        rotation_order(unknown)


def test_a_rotation_is_a_plan_one_replica_at_a_time_each_delivery_waited_for():
    """The default rotation: every replica's leaves (the leader last), each followed by the waits that prove
    it took before the next replica's; the operator's certificate; the service-account key, delivered to one
    replica at a time. The checkpoint ids of rotations started before the plan existed are kept."""
    plan = plan_rotation(THREE, RotationOptions(), None, "rot-1")
    assert plan.ids == (
        *(f"{p}/{n}" for n in ("c-2", "c-3", "c-1") for p in ("leaves", "leaves/served", "leaves/quorum")),
        "operator",
        "service-account/rotate",
        *(f"{p}/{n}" for n in ("c-2", "c-3", "c-1") for p in ("service-account/deliver", "service-account/api-ready")),
    )
    assert plan.steps[0].arguments == {"zone": "z-a", "name": "c-2", "endpoint_ip": THREE.endpoint_ip}
    assert plan.voting_before == plan.voting_after == 3 and "c-1, the leader last" in plan.markdown()
    only_leaves = plan_rotation(THREE, RotationOptions(operator=False, service_account_key=False), None, "rot-1")
    assert {s.kind for s in only_leaves.steps} == {StepKind.REISSUE_LEAVES, StepKind.WAIT_SERVING, StepKind.WAIT_QUORUM}


def test_a_ca_rotation_plans_three_passes_and_deletes_the_old_cas_last():
    plan = plan_rotation(THREE, RotationOptions(rotate_ca=True, service_account_key=False), None, "rot-1")
    kinds = [s.kind for s in plan.steps]
    first_leaf, first_drop = kinds.index(StepKind.REISSUE_LEAVES), plan.ids.index("ca/drop/c-2")
    assert plan.ids[0] == "ca/start" and plan.ids[-1] == "ca/finish"
    # pass 1: trust both CAs, each replica checked before the next; then the new CAs sign, the operator first
    assert plan.ids[1:5] == ("ca/trust/c-2", "ca/trust/etcd/c-2", "ca/trust/api-ready/c-2", "ca/trust/quorum/c-2")
    assert plan.ids[first_leaf - 2 : first_leaf] == ("ca/switch", "ca/operator")
    # pass 2: the leaves; pass 3: every replica drops the old CAs, only then are they deleted
    assert first_leaf < first_drop and StepKind.REISSUE_LEAVES not in kinds[first_drop:]
    assert [s.arguments["name"] for s in plan.steps if s.kind is StepKind.DELIVER_TRUST] == ["c-2", "c-3", "c-1"] * 2
    assert all(
        s.arguments["dropped"] == s.id.startswith("ca/drop/") for s in plan.steps if s.kind is StepKind.WAIT_TRUST
    )
    assert "operator" not in plan.ids  # renewed once, by the new etcd CA


def test_a_rotation_is_refused_before_any_step():
    with pytest.raises(RuntimeError, match=r"under way \(change 'rot-1'\).*Nothing was rotated"):
        plan_rotation(THREE, RotationOptions(), "rot-1", "rot-2")
    with pytest.raises(ValueError, match="leave leaves and operator true"):
        plan_rotation(THREE, RotationOptions(rotate_ca=True, operator=False), None, "rot-1")
    sick = ClusterState("c", "r", (_replica("c-1", leader=True), _replica("c-3", healthy=False)))
    with pytest.raises(RuntimeError, match="not healthy"):
        plan_rotation(sick, RotationOptions(), None, "rot-1")
    # resuming the CA rotation under way is its own change
    assert plan_rotation(THREE, RotationOptions(rotate_ca=True), "rot-1", "rot-1").ids[0] == "ca/start"


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


THREE = ClusterState("c", "r", (_replica("c-1", leader=True), _replica("c-3"), _replica("c-2")))
