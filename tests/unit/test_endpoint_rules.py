"""Endpoint modes and zone-outage remediation, pure: plans (haplane/core/plans.py) and the zone rules
(haplane/core/remediation.py: decide_zones, track_outages). No I/O."""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.cloud.observe import ClusterState
from haplane.core.endpoint import EndpointMode
from haplane.core.plans import PlanRefused, plan_add, plan_create, plan_remove, plan_replace, plan_set_load_balancer
from haplane.core.remediation import StrandedVm, ZoneAction, decide_zones, track_outages
from tests.unit.test_plans import DEAD, KNOWN, ONE, REGION, THREE, cluster, replica

ALWAYS, AS_NEEDED = EndpointMode.ALWAYS, EndpointMode.AS_NEEDED
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c"]
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
# one replica behind a load balancer (mode "always"): it has its own ephemeral IP
ONE_LB = cluster(replica(0, "us-central1-a"), lb=True)
TWO_LB = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b"))


# --- endpoint modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "replicas", "lb"),
    [(ALWAYS, 1, "create"), (ALWAYS, 3, "create"), (AS_NEEDED, 1, "none"), (AS_NEEDED, 3, "create")],
)
def test_create_has_a_load_balancer_from_the_first_replica_only_in_always_mode(mode, replicas, lb):
    plan = plan_create("c", REGION, ZONES, replicas, "create-1", KNOWN, None, mode)
    assert plan.lb == lb
    ids, text = list(plan.ids), plan.markdown()
    if lb == "create":  # the forwarding rule is submitted before the VMs and waited for last
        assert ids.index("forwarding-rule") < min(i for i, x in enumerate(ids) if x.startswith("vm/"))
        assert ids[-1] == "forwarding-rule/wait"
        fr = next(s for s in plan.steps if s.id == "forwarding-rule")
        assert fr.arguments["background"] is True
        # replicas join the pool once their API servers are ready
        assert ids.index("pool-members") > max(i for i, x in enumerate(ids) if x.startswith("api-ready/"))
        assert "with the endpoint IP as its external IP" not in text
    else:
        assert "with the endpoint IP as its external IP" in text and "forwarding-rule" not in ids


def test_create_three_expects_little_more_than_the_forwarding_rule_on_gce():
    from haplane.core.plans import GCE_SECONDS

    plan = plan_create("c", REGION, ZONES, 3, "create-1", KNOWN, None, ALWAYS)
    assert plan.expected_seconds / GCE_SECONDS["forwarding_rule_insert"] <= 1.05


def test_always_mode_scales_one_two_one_by_the_pool_alone_without_downtime():
    add = plan_add(ONE_LB, "us-central1-b", "add-1", KNOWN)
    assert add.lb == "extend" and add.downtime == ""
    assert [s.kind.value for s in add.steps][-2:] == ["wait-api", "pool-add"]  # ready first, then the pool
    assert not any(s.kind.value in ("release-ip", "forwarding-rule") for s in add.steps)
    remove = plan_remove(TWO_LB, "us-central1-b", None, mode=ALWAYS)
    assert remove.lb == "shrink" and remove.downtime == ""
    # out of the pool before etcd: no request through the endpoint reaches a leaving replica
    assert [s.kind.value for s in remove.steps] == [
        "pool-remove",
        "remove-member",
        "wait-quorum",
        "delete-vm",
        "delete-keys",
    ]


def test_as_needed_mode_keeps_the_seeds_ip_move_and_says_its_downtime():
    add = plan_add(ONE, "us-central1-b", "add-1", KNOWN)
    assert add.lb == "create" and "does not answer" in add.downtime
    remove = plan_remove(TWO_LB, "us-central1-b", None, mode=AS_NEEDED)
    assert remove.lb == "delete" and "does not answer" in remove.downtime
    assert "endpoint downtime" in remove.markdown()


def test_replace_at_three_in_always_mode_keeps_the_load_balancer():
    three = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c"))
    removal, addition = plan_replace(three, "c-master-1", "replace-1", KNOWN, mode=ALWAYS)
    assert removal.lb == "shrink" and addition.lb == "extend"


@pytest.mark.parametrize(
    ("state", "current", "target", "lb", "downtime"),
    [
        (ONE, AS_NEEDED, ALWAYS, "create", True),  # 1 replica: the seed's 1 -> 2 move without a new replica
        (ONE_LB, ALWAYS, AS_NEEDED, "delete", True),  # 1 replica: the 2 -> 1 move
        (THREE, AS_NEEDED, ALWAYS, "none", False),  # the load balancer is there already: the spec alone
        (THREE, ALWAYS, AS_NEEDED, "none", False),
        (ONE_LB, ALWAYS, ALWAYS, "none", False),
        # an interrupted conversion (the forwarding rule exists, the spec not yet written) is finished, not redone
        (ONE_LB, AS_NEEDED, ALWAYS, "none", False),
    ],
)
def test_set_load_balancer_changes_gce_only_at_one_replica_and_says_the_downtime(state, current, target, lb, downtime):
    plan = plan_set_load_balancer(state, current, target)
    assert plan.lb == lb
    assert bool(plan.downtime) is downtime
    kinds = [s.kind.value for s in plan.steps]
    if lb == "create":
        assert kinds == ["health-check", "target-pool", "release-ip", "forwarding-rule", "ephemeral-ip", "save-spec"]
    elif lb == "delete":
        assert kinds == [
            "delete-forwarding-rule",
            "drop-ephemeral-ip",
            "endpoint-ip",
            "delete-target-pool",
            "delete-health-check",
            "save-spec",
        ]
    else:
        assert kinds in ([], ["save-spec"])
    if downtime:
        assert "one time" in plan.downtime and "endpoint downtime: one time" in plan.markdown()


def test_set_load_balancer_refuses_while_a_replica_is_being_added():
    adding = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", learner=True), lb=True)
    with pytest.raises(PlanRefused, match="still being added"):
        plan_set_load_balancer(adding, ALWAYS, AS_NEEDED)


def test_specs_saved_before_the_mode_existed_read_as_as_needed():
    from blocks.cluster import ClusterSpec

    spec = ClusterSpec.model_validate({"cluster": "c", "region": REGION, "zones": ZONES})
    assert spec.load_balancer is AS_NEEDED and spec.stranded == [] and spec.zones_out == {}


# --- zone outage ----------------------------------------------------------------------------------


def out(state: ClusterState, zone: str, **kw) -> ClusterState:
    """``state`` seen while ``zone``'s API does not answer: its replicas are UNKNOWN and unreachable."""
    reps = tuple(
        r
        if r.zone != zone
        else replica(
            int(r.name.rsplit("-", 1)[1]), zone, vm_status="UNKNOWN", external_ip=None, leader=False, **DEAD, **kw
        )
        for r in state.replicas
    )
    return ClusterState(
        cluster=state.cluster,
        region=state.region,
        replicas=reps,
        endpoint_ip=state.endpoint_ip,
        address_status=state.address_status,
        load_balancer=state.load_balancer,
        target_pool=state.target_pool,
        unavailable_zones=(zone,),
    )


def ago(seconds: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).isoformat()


def decide(state, outages=None, stranded=(), **kw):
    kw.setdefault("grace_s", 300)
    return decide_zones(state, outages or {}, list(stranded), NOW, zones=ZONES, region_zones=KNOWN, **kw)


def test_outages_keep_their_first_sighting_and_end_when_the_zone_answers():
    first = track_outages({}, ["us-central1-b"], NOW)
    assert first == {"us-central1-b": NOW.isoformat(timespec="seconds")}
    later = NOW + dt.timedelta(minutes=5)
    assert track_outages(first, ["us-central1-b", "us-central1-c"], later) == {
        "us-central1-b": first["us-central1-b"],
        "us-central1-c": later.isoformat(timespec="seconds"),
    }
    assert track_outages(first, [], later) == {}


@pytest.mark.parametrize(
    ("state", "outages", "kw", "action", "words"),
    [
        # within the grace period: wait, saying how long it has been out
        (out(THREE, "us-central1-b"), {"us-central1-b": ago(60)}, {}, ZoneAction.WAIT, "out 60 s"),
        # after it: move the replica to the least used zone that answers (the fourth zone is not the cluster's)
        (
            out(THREE, "us-central1-b"),
            {"us-central1-b": ago(301)},
            {},
            ZoneAction.MOVE,
            "add a replica in us-central1-a",
        ),
        # a change holds the lock: one change at a time
        (out(THREE, "us-central1-b"), {"us-central1-b": ago(900)}, {"busy": True}, ZoneAction.WAIT, "one change"),
        # a zone out where the cluster has no replica: nothing
        (out(THREE, "us-central1-f"), {"us-central1-f": ago(900)}, {}, ZoneAction.NOTHING, "no replica"),
        # nothing out
        (THREE, {}, {}, ZoneAction.NOTHING, "every zone answers"),
    ],
)
def test_zone_outage_decisions(state, outages, kw, action, words):
    verdict = decide(state, outages, **kw)
    assert verdict.action is action, verdict.reason
    assert words in verdict.reason


def test_a_move_names_the_replica_and_both_zones():
    verdict = decide(out(THREE, "us-central1-b"), {"us-central1-b": ago(400)})
    assert (verdict.replica, verdict.from_zone, verdict.to_zone) == ("c-master-1", "us-central1-b", "us-central1-a")


def test_quorum_lost_does_nothing_and_says_what_a_person_must_do():
    # two of three voters down (zone b out, the replica in c dead too): etcd refuses membership changes
    state = out(
        cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b"), replica(2, "us-central1-c", **DEAD)),
        "us-central1-b",
    )
    verdict = decide(state, {"us-central1-b": ago(3600)})
    assert verdict.action is ZoneAction.CANNOT
    assert (
        "quorum lost: 1 of 3" in verdict.reason and "snapshot" in verdict.reason and "bring the zone" in verdict.reason
    )


def test_one_at_a_time_when_a_zone_holds_two_replicas():
    five = cluster(
        replica(0, "us-central1-a"),
        replica(1, "us-central1-b"),
        replica(2, "us-central1-c"),
        replica(3, "us-central1-a"),
        replica(4, "us-central1-b"),
    )
    verdict = decide(out(five, "us-central1-b"), {"us-central1-b": ago(400)})
    assert verdict.action is ZoneAction.MOVE and verdict.replica == "c-master-1"
    # etcd refuses to add while a voter is unreachable: both dead members go before any replacement
    assert not verdict.add_now and "then remove c-master-4" in verdict.reason
    # next check: the second one goes, and its replacement is added at once
    four = cluster(*(r for r in five.replicas if r.name != "c-master-1"))
    stranded = [StrandedVm("c-master-1", "us-central1-b", ago(60))]
    verdict = decide(out(four, "us-central1-b"), {"us-central1-b": ago(500)}, stranded)
    assert verdict.action is ZoneAction.MOVE and verdict.replica == "c-master-4" and verdict.add_now
    assert verdict.to_zone == "us-central1-c"  # the least used zone that answers
    # then the replacement the first move owed
    stranded.append(StrandedVm("c-master-4", "us-central1-b", ago(30), replacement="c-master-5"))
    three = cluster(
        replica(0, "us-central1-a"),
        replica(2, "us-central1-c"),
        replica(3, "us-central1-a"),
        replica(5, "us-central1-c"),
    )
    still_out = ClusterState(**{**three.__dict__, "unavailable_zones": ("us-central1-b",)})
    verdict = decide(still_out, {"us-central1-b": ago(600)}, stranded)
    assert verdict.action is ZoneAction.ADD and verdict.replica == "c-master-1"


def test_stranded_vms_are_deleted_only_once_their_zone_answers():
    stranded = [StrandedVm("c-master-1", "us-central1-b", ago(100))]
    moved = cluster(replica(0, "us-central1-a"), replica(2, "us-central1-c"), replica(3, "us-central1-a"))
    still_out = ClusterState(**{**moved.__dict__, "unavailable_zones": ("us-central1-b",)})
    stranded = [StrandedVm("c-master-1", "us-central1-b", ago(100), replacement="c-master-3")]
    assert decide(still_out, {"us-central1-b": ago(500)}, stranded).action is ZoneAction.NOTHING
    back = cluster(*moved.replicas, replica(1, "us-central1-b", member_id=None, vm_status="RUNNING", **DEAD))
    verdict = decide(back, {}, stranded)
    assert verdict.action is ZoneAction.DELETE_STALE and verdict.stale == tuple(stranded)


def test_a_stranded_vm_that_is_a_member_again_is_left_to_a_person():
    stranded = [StrandedVm("c-master-1", "us-central1-b", ago(100))]
    verdict = decide(THREE, {}, stranded)
    assert verdict.action is ZoneAction.CANNOT and "must not have rejoined" in verdict.reason


def test_rebalance_back_to_one_per_zone_only_when_asked_and_healthy():
    crowded = cluster(replica(0, "us-central1-a"), replica(2, "us-central1-c"), replica(3, "us-central1-a"))
    assert decide(crowded).action is ZoneAction.NOTHING
    verdict = decide(crowded, rebalance=True)
    assert verdict.action is ZoneAction.REBALANCE
    assert (verdict.replica, verdict.from_zone, verdict.to_zone) == ("c-master-3", "us-central1-a", "us-central1-b")
    sick = cluster(replica(0, "us-central1-a"), replica(2, "us-central1-c", **DEAD), replica(3, "us-central1-a"))
    assert decide(sick, rebalance=True).action is ZoneAction.NOTHING
    assert decide(THREE, rebalance=True).action is ZoneAction.NOTHING


# --- zone-outage plans (what the health check executes) ---------------------------------------------


def test_a_zone_move_records_the_stranded_vm_before_removing_its_member_then_adds_elsewhere():
    from haplane.core.plans import plan_zone_move

    state = out(THREE, "us-central1-b")
    state = ClusterState(**{**state.__dict__, "pool_members": ("c-master-0", "c-master-1", "c-master-2")})
    plan = plan_zone_move(state, "c-master-1", "us-central1-a", "zone-move-1", KNOWN, ZONES)
    kinds = [s.kind.value for s in plan.steps]
    assert kinds[:4] == ["strand", "remove-member", "pool-remove", "wait-quorum"]
    assert kinds[4:9] == ["create-vm", "add-learner", "configure", "promote", "wait-quorum"]
    assert kinds[-1] == "strand-replaced" and not any(k == "delete-vm" for k in kinds)  # its VM cannot be seen
    assert plan.new_replicas[0][1] == "us-central1-a" and plan.voting_after == 3
    # the member is removed through the members that answer only
    remove = plan.steps[1].arguments
    assert "127.10.0.3" not in remove["member_ips"] and len(remove["member_ips"]) == 2
    # with another dead voter left, only the removal: etcd refuses to add while a voter is unreachable
    only = plan_zone_move(state, "c-master-1", "us-central1-a", "zone-move-1", KNOWN, ZONES, add_now=False)
    assert [s.kind.value for s in only.steps] == ["strand", "remove-member", "pool-remove", "wait-quorum"]


def test_a_zone_move_is_refused_for_a_replica_that_can_be_seen():
    from haplane.core.plans import plan_zone_move

    with pytest.raises(PlanRefused, match="not an etcd member in a zone that does not answer"):
        plan_zone_move(THREE, "c-master-1", "us-central1-a", "zone-move-1", KNOWN, ZONES)


def test_stranded_vms_are_deleted_unless_they_are_members_again():
    from haplane.core.plans import plan_delete_stranded

    back = cluster(
        replica(0, "us-central1-a"),
        replica(2, "us-central1-c"),
        replica(3, "us-central1-a"),
        replica(1, "us-central1-b", member_id=None, **DEAD),
    )
    plan = plan_delete_stranded(back, [("c-master-1", "us-central1-b")])
    assert [s.kind.value for s in plan.steps] == ["delete-vm", "delete-keys", "strand-deleted"]
    with pytest.raises(PlanRefused, match="etcd member again"):
        plan_delete_stranded(THREE, [("c-master-1", "us-central1-b")])


def two_zones_out(state: ClusterState, zones: tuple[str, str]) -> ClusterState:
    """``state`` seen while two zones do not answer, as haplane.cloud.observe reports it: the members there are
    UNKNOWN and, since neither zone can be looked at, placed in no zone ("?")."""
    reps = tuple(
        r
        if r.zone not in zones
        else replica(int(r.name.rsplit("-", 1)[1]), "?", vm_status="UNKNOWN", external_ip=None, leader=False, **DEAD)
        for r in state.replicas
    )
    return ClusterState(
        cluster=state.cluster,
        region=state.region,
        replicas=reps,
        endpoint_ip=state.endpoint_ip,
        address_status=state.address_status,
        load_balancer=state.load_balancer,
        target_pool=state.target_pool,
        unavailable_zones=zones,
    )


FIVE = cluster(
    replica(0, "us-central1-a"),
    replica(1, "us-central1-b"),
    replica(2, "us-central1-c"),
    replica(3, "us-central1-f"),
    replica(4, "us-central1-a"),
)


@pytest.mark.parametrize(
    "state",
    [two_zones_out(THREE, ("us-central1-b", "us-central1-c")), two_zones_out(FIVE, ("us-central1-b", "us-central1-c"))],
    ids=["3", "5"],
)
def test_members_in_two_zones_that_do_not_answer_are_unknown_not_failed(state):
    """Two zones out (quorum kept at 5, not at 3): the unseen members are unknown, never "VM not running",
    never "quorum lost"; neither the zone rules nor the replica rules act."""
    from haplane.core.remediation import Action, Problem
    from haplane.core.remediation import decide as decide_replicas

    outages = {"us-central1-b": ago(3600), "us-central1-c": ago(3600)}
    verdict = decide(state, outages)
    assert verdict.action.value == "unknown", verdict.reason
    assert "c-master-1, c-master-2" in verdict.reason and "nothing is moved, replaced or deleted" in verdict.reason
    assert verdict.replica is None and verdict.to_zone is None
    replicas = decide_replicas(state, [], NOW)
    assert replicas.action is Action.UNKNOWN and replicas.replica is None, replicas.reason
    assert not [f for f in replicas.findings if f.problem is Problem.VM_STOPPED], replicas.findings
    assert sum("the VM of c-master-" in u.text for u in replicas.unknowns) == 2


def test_a_zone_out_while_the_membership_cannot_be_read_is_unknown():
    """Which members the dead zone holds cannot be told without the member list: not "no replica is there"."""
    from dataclasses import replace

    from haplane.core.model import Unknown

    state = replace(
        cluster(replica(0, "us-central1-a"), replica(2, "us-central1-c")),
        unavailable_zones=("us-central1-b",),
        membership_unknown=Unknown("etcd membership of c", "member list failed", "the firewall"),
    )
    verdict = decide(state, {"us-central1-b": ago(3600)})
    assert verdict.action.value == "unknown" and "etcd membership could not be read" in verdict.reason
