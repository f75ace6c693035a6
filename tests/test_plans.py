"""The flows' decisions, pure: plans from observed state (haplane/plans.py) and placement and naming
rules (haplane/topology.py). No I/O."""

from __future__ import annotations

import pytest

from haplane.model import ClusterState, ReplicaState
from haplane.plans import PlanRefused, choose_victim, member_health, plan_add, plan_create, plan_remove, plan_replace
from haplane.quorum import Reason
from haplane.topology import (
    TopologyError,
    check_cluster_name,
    check_cluster_size,
    check_zones,
    label_value,
    next_zones,
    replica_name,
)

REGION = "us-central1"
KNOWN = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]


def replica(i: int, zone: str, **kw) -> ReplicaState:
    base = dict(name=f"c-master-{i}", zone=zone, vm_status="RUNNING", internal_ip=f"127.10.0.{i + 2}",
                external_ip=f"127.20.0.{i + 2}", change="create-1", member_id=100 + i, started=True,
                etcd_ok=True, api_ready=True, leader=i == 0)
    base.update(kw)
    return ReplicaState(**base)


def cluster(*replicas: ReplicaState, lb: bool | None = None, endpoint: str = "127.30.0.2",
            address_status: str = "IN_USE") -> ClusterState:
    lb = len(replicas) > 1 if lb is None else lb
    return ClusterState(cluster="c", region=REGION, replicas=tuple(replicas), endpoint_ip=endpoint,
                        address_status=address_status, load_balancer=lb, target_pool=lb)


ONE = cluster(replica(0, "us-central1-a", external_ip="127.30.0.2"))
THREE = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b"), replica(2, "us-central1-c"))
DEAD = dict(etcd_ok=False, api_ready=False)


# --- topology -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("zones", "existing", "count", "expected"), [
    (["a", "b", "c"], [], 3, ["a", "b", "c"]),
    (["a", "b", "c"], [], 5, ["a", "b", "c", "a", "b"]),
    (["a", "b", "c"], ["a", "a", "b"], 1, ["c"]),
    (["a", "b", "c"], ["a", "b", "c"], 1, ["a"]),  # ties go to the zone listed first
    (["a", "b"], ["x", "a"], 2, ["b", "a"]),  # a replica outside the zones does not count
])
def test_next_zones_fills_the_zone_with_the_fewest_replicas_first(zones, existing, count, expected):
    assert next_zones(zones, existing, count) == expected


def test_zones_must_be_known_zones_of_the_region():
    assert check_zones(REGION, ["us-central1-b", "us-central1-a", "us-central1-b"], KNOWN) == \
        ["us-central1-b", "us-central1-a"]
    with pytest.raises(TopologyError, match="not a zone of region 'us-central1'"):
        check_zones(REGION, ["europe-west1-b"], KNOWN)


@pytest.mark.parametrize(("size", "words"), [(2, "worse than one"), (4, "even count"), (0, "at least 1"),
                                              (9, "maximum of 7")])
def test_sizes_other_than_1_3_5_7_are_refused_with_a_reason(size, words):
    with pytest.raises(TopologyError, match=words):
        check_cluster_size(size)
    for ok in (1, 3, 5, 7):
        check_cluster_size(ok)


@pytest.mark.parametrize("name", ["Prod", "1abc", "a_b", "a-", "x" * 31, ""])
def test_bad_cluster_names_are_refused(name):
    with pytest.raises(TopologyError, match="not valid"):
        check_cluster_name(name)


def test_names_are_fixed_by_the_change_and_labels_are_gce_safe():
    assert replica_name("c", "add-1", 0) == replica_name("c", "add-1", 0)
    assert replica_name("c", "add-1", 0) != replica_name("c", "add-2", 0)
    assert label_value("Replace-ABC/1.x") == "replace-abc-1-x"
    assert len(label_value("x" * 100)) == 63


# --- create ---------------------------------------------------------------------------------------

def test_create_three_spreads_over_zones_with_a_load_balancer():
    plan = plan_create("c", REGION, KNOWN[:3], 3, "create-1", KNOWN, None)
    assert [z for _, z in plan.new_replicas] == KNOWN[:3]
    assert plan.lb == "create" and plan.voting_before == 0 and plan.voting_after == 3
    assert any("forwarding rule" in s for s in plan.steps)
    assert plan.expected_seconds > 1200  # the seed's 20-minute load balancer is in the estimate


def test_create_one_puts_the_endpoint_ip_on_the_vm():
    plan = plan_create("c", REGION, KNOWN[:3], 1, "create-1", KNOWN, None)
    assert plan.lb == "none" and len(plan.new_replicas) == 1
    assert any("endpoint IP as its external IP" in s for s in plan.steps)


def test_create_refuses_an_existing_cluster_but_resumes_its_own_change():
    with pytest.raises(PlanRefused, match="already exists.*change_id='create-1'"):
        plan_create("c", REGION, KNOWN[:3], 3, "create-2", KNOWN, THREE)
    assert plan_create("c", REGION, KNOWN[:3], 3, "create-1", KNOWN, THREE).new_replicas


# --- add ------------------------------------------------------------------------------------------

def test_add_to_one_creates_the_load_balancer_and_passes_through_two():
    plan = plan_add(ONE, None, "add-1", KNOWN, ["us-central1-a", "us-central1-b", "us-central1-c"])
    assert plan.zone == "us-central1-b" and plan.lb == "create"
    assert plan.voting_before == 1 and plan.voting_after == 2 and "even count" in plan.even_note
    order = " | ".join(plan.steps)
    assert order.index("learner") < order.index("initial-cluster-state=existing") < order.index("promote")
    assert order.index("target pool") < order.index("take the endpoint IP off") < order.index("forwarding rule")


def test_add_goes_to_the_least_used_of_the_clusters_zones_or_a_named_one():
    assert plan_add(THREE, None, "add-1", KNOWN, KNOWN[:3]).zone == "us-central1-a"
    assert plan_add(THREE, None, "add-1", KNOWN).zone == "us-central1-f"  # no spec: any zone of the region
    plan = plan_add(THREE, "us-central1-c", "add-1", KNOWN, KNOWN[:3])
    assert plan.zone == "us-central1-c" and plan.lb == "extend" and plan.voting_after == 4
    with pytest.raises(TopologyError, match="not a zone of region"):
        plan_add(THREE, "europe-west1-b", "add-1", KNOWN)


def test_add_is_refused_while_another_add_is_unfinished_but_its_own_change_resumes():
    learning = cluster(*THREE.replicas, replica(3, "us-central1-f", learner=True, change="add-7"))
    with pytest.raises(PlanRefused, match="still being added.*change_id='add-7'"):
        plan_add(learning, None, "add-8", KNOWN)
    plan = plan_add(learning, None, "add-7", KNOWN)
    assert plan.replica == "c-master-3" and plan.zone == "us-central1-f" and "resuming" in plan.reason


def test_add_is_refused_while_a_voter_is_down():
    sick = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c"))
    with pytest.raises(PlanRefused, match="cannot add"):
        plan_add(sick, None, "add-1", KNOWN)


def test_an_interrupted_one_to_two_move_is_finished_on_resume():
    # the forwarding rule exists but the first replica has no external IP yet
    moved = cluster(replica(0, "us-central1-a", external_ip=None),
                    replica(1, "us-central1-b", change="add-1"), lb=True)
    plan = plan_add(moved, None, "add-1", KNOWN)
    assert plan.replica == "c-master-1" and plan.lb == "create"


# --- remove ---------------------------------------------------------------------------------------

def test_remove_by_zone_prefers_an_unhealthy_then_a_non_leader():
    two_in_a = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-a"), replica(2, "us-central1-b"),
                       replica(3, "us-central1-c", **DEAD), replica(4, "us-central1-c"))
    assert choose_victim(two_in_a, "us-central1-a", None).name == "c-master-1"  # c-master-0 leads
    assert choose_victim(two_in_a, "us-central1-c", None).name == "c-master-3"  # the dead one


def test_remove_moves_leadership_first_and_shrinks_the_pool():
    plan = plan_remove(THREE, "us-central1-a", None)
    assert plan.replica == "c-master-0" and plan.steps[0].startswith("move etcd leadership away")
    assert plan.lb == "shrink" and plan.voting_after == 2 and "even count" in plan.even_note
    steps = " | ".join(plan.steps)
    assert steps.index("remove c-master-0 from etcd") < steps.index("target pool") < steps.index("delete VM")


def test_two_to_one_hands_the_ip_back():
    two = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b"))
    plan = plan_remove(two, "us-central1-b", None)
    assert plan.lb == "delete" and plan.voting_after == 1 and not plan.even_note
    assert any("give c-master-0 the endpoint IP" in s for s in plan.steps)


def test_a_resumed_two_to_one_still_hands_the_ip_back():
    # the forwarding rule and pool are gone, the IP is reserved, the victim's VM is still there
    half = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", member_id=None), lb=False,
                   address_status="RESERVED")
    assert plan_remove(half, "us-central1-b", None).lb == "delete"


@pytest.mark.parametrize(("state", "zone", "name", "words"), [
    (ONE, "us-central1-a", None, "last replica"),
    (THREE, "us-central1-f", None, "no replica in zone"),
    (THREE, "us-central1-a", "nosuch", "no replica named 'nosuch'"),
    (THREE, "us-central1-b", "c-master-0", "is in zone us-central1-a"),
    (cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c")),
     "us-central1-c", None, "below the quorum"),
])
def test_remove_refusals(state, zone, name, words):
    with pytest.raises(PlanRefused, match=words):
        plan_remove(state, zone, name)


# --- replace --------------------------------------------------------------------------------------

def test_replace_removes_first_then_adds_in_the_same_zone():
    sick = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c"))
    removal, addition = plan_replace(sick, "c-master-1", "replace-1", KNOWN)
    assert removal.replica == "c-master-1" and removal.voting_after == 2
    assert addition.zone == "us-central1-b" and addition.voting_before == 2 and addition.voting_after == 3
    assert addition.lb == "extend"


def test_replace_is_refused_when_quorum_would_be_lost():
    lost = cluster(replica(0, "us-central1-a", **DEAD), replica(1, "us-central1-b", **DEAD),
                   replica(2, "us-central1-c"))
    with pytest.raises(PlanRefused, match="cannot replace"):
        plan_replace(lost, "c-master-0", "replace-1", KNOWN)


def test_member_health_marks_unreachable_members_and_learners():
    state = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD),
                    replica(2, "us-central1-c", learner=True), replica(3, "us-central1-f", member_id=None))
    health = {m.name: m for m in member_health(state)}
    assert set(health) == {"c-master-0", "c-master-1", "c-master-2"}  # a VM that is no member is not counted
    assert health["c-master-0"].healthy and Reason.UNREACHABLE in health["c-master-1"].reasons
    assert not health["c-master-2"].voting
