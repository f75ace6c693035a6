"""The watcher's pure part: what a look at a cluster is, and which events a transition emits (table-driven)."""

from __future__ import annotations

import pytest

from haplane.core.model import MISSING, ClusterState, ReplicaState, Unknown
from haplane.core.remediation import Finding, Problem
from haplane.core.restore import QuorumView
from haplane.watch import (
    CLUSTER_UNKNOWN,
    QUORUM_LOST,
    RECOVERED,
    UNHEALTHY,
    Look,
    Memory,
    look_at,
    parse_shard,
    shard_of,
    step,
)

C = "c1"


def ok(name: str, member_id: int) -> ReplicaState:
    return ReplicaState(
        name=name,
        zone="z-b",
        vm_status="RUNNING",
        internal_ip="10.0.0.1",
        member_id=member_id,
        started=True,
        etcd_ok=True,
        api_ready=True,
    )


def failed(name: str) -> Finding:
    return Finding(name, "z-b", Problem.ETCD_UNHEALTHY, "etcd member unreachable")


HEALTHY3 = Look(C, healthy=("a", "b", "c"))
A_FAILED = Look(C, failed=(failed("a"),), healthy=("b", "c"))
ALL_OK = Memory("ok", {"a": "healthy", "b": "healthy", "c": "healthy"})
A_DOWN = Memory("ok", {"a": "unhealthy", "b": "healthy", "c": "healthy"})


@pytest.mark.parametrize(
    ("memory", "look", "events", "after"),
    [
        # first look: a healthy cluster says nothing, a failed replica is reported at once (a restarted
        # watcher does not hide a failure)
        (Memory(), HEALTHY3, [], ALL_OK),
        (Memory(), A_FAILED, [(UNHEALTHY, "a")], A_DOWN),
        # transitions only: unhealthy once, then silence while it stays so; recovered once
        (ALL_OK, A_FAILED, [(UNHEALTHY, "a")], A_DOWN),
        (A_DOWN, A_FAILED, [], A_DOWN),
        (A_DOWN, HEALTHY3, [(RECOVERED, "a")], ALL_OK),
        (ALL_OK, HEALTHY3, [], ALL_OK),
        # replaced: the failed replica is gone, its successor healthy -> recovered (closes the automation's window)
        (
            A_DOWN,
            Look(C, healthy=("b", "c", "d")),
            [(RECOVERED, "a")],
            Memory("ok", {"b": "healthy", "c": "healthy", "d": "healthy"}),
        ),
        # a healthy replica removed on purpose: nothing to say
        (ALL_OK, Look(C, healthy=("b", "c")), [], Memory("ok", {"b": "healthy", "c": "healthy"})),
        # unknown is never failed: one event, the replicas' last known health kept, no replica event
        (ALL_OK, Look(C, unknown="etcd unreachable"), [(CLUSTER_UNKNOWN, "")], Memory("unknown", ALL_OK.replicas)),
        (
            Memory("unknown", ALL_OK.replicas),
            Look(C, unknown="etcd unreachable"),
            [],
            Memory("unknown", ALL_OK.replicas),
        ),
        (Memory(), Look(C, unknown="PKI block missing"), [(CLUSTER_UNKNOWN, "")], Memory("unknown", {})),
        # nor recovered: a failed replica stays failed while the cluster cannot be seen
        (A_DOWN, Look(C, unknown="x"), [(CLUSTER_UNKNOWN, "")], Memory("unknown", A_DOWN.replicas)),
        # seen again: only what changed since the last known look
        (Memory("unknown", ALL_OK.replicas), A_FAILED, [(UNHEALTHY, "a")], A_DOWN),
        (Memory("unknown", A_DOWN.replicas), A_FAILED, [], A_DOWN),
        # quorum lost: one event, then silence
        (ALL_OK, Look(C, quorum_lost="no leader"), [(QUORUM_LOST, "")], Memory("quorum-lost", ALL_OK.replicas)),
        (Memory("quorum-lost", {}), Look(C, quorum_lost="no leader"), [], Memory("quorum-lost", {})),
    ],
)
def test_transitions(memory, look, events, after):
    new, emitted = step(memory, look)
    assert [(e.name, e.replica) for e in emitted] == events
    assert new == after
    assert all(e.cluster == C for e in emitted)


def test_unhealthy_event_says_what_was_seen():
    _, (event,) = step(ALL_OK, A_FAILED)
    assert event.payload == {
        "zone": "z-b",
        "problem": "etcd member unhealthy or unreachable",
        "detail": "etcd member unreachable",
    }
    _, (unknown,) = step(ALL_OK, Look(C, unknown="no member answered"))
    assert unknown.payload == {"reason": "no member answered"}


def state(*replicas: ReplicaState, **kw) -> ClusterState:
    return ClusterState(cluster=C, region="r", replicas=replicas, **kw)


def test_look_uses_the_health_checks_rules():
    dead = ReplicaState(name="a", zone="z-b", vm_status="TERMINATED", member_id=1, started=True)
    gone = ReplicaState(name="x", zone="?", vm_status=MISSING, member_id=9, started=True)
    look = look_at(state(dead, ok("b", 2), ok("c", 3), gone))
    assert [(f.replica, f.problem) for f in look.failed] == [("x", Problem.VM_GONE), ("a", Problem.VM_STOPPED)]
    assert look.healthy == ("b", "c") and not look.unknown


def test_a_learner_is_a_failure_only_while_no_change_holds_the_lock():
    learner = ReplicaState(
        name="n", zone="z-b", vm_status="RUNNING", member_id=4, learner=True, started=True, etcd_ok=True, api_ready=True
    )
    s = state(ok("a", 1), ok("b", 2), ok("c", 3), learner)
    assert [f.problem for f in look_at(s).failed] == [Problem.LEARNER_STUCK]
    assert look_at(s, busy=True).failed == ()


def test_an_unknown_view_judges_no_replica():
    cut_off = Unknown("etcd membership of c1", "member list failed: no endpoint answered", "the network")
    stopped = ReplicaState(name="a", zone="z-b", vm_status="RUNNING", etcd_unknown=cut_off)
    look = look_at(state(stopped, membership_unknown=cut_off), (QuorumView.UNKNOWN, "nothing answered"))
    assert look.unknown and "member list failed" in look.unknown and not look.failed and not look.healthy


def test_quorum_seen_lost_is_not_unknown():
    lost = Unknown("etcd membership of c1", "member list failed: no leader")
    look = look_at(state(membership_unknown=lost), (QuorumView.LOST, "2 of 3 answer but none has a leader"))
    assert look.quorum_lost == "2 of 3 answer but none has a leader" and not look.unknown


@pytest.mark.parametrize(("text", "want"), [("0/1", (0, 1)), ("1/2", (1, 2)), ("3/4", (3, 4))])
def test_shard_parses(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1/0", "a/b", "1", ""])
def test_bad_shard_is_refused_with_the_fix(text):
    with pytest.raises(ValueError, match="e.g. 0/2 and 1/2"):
        parse_shard(text)


def test_shards_split_a_fleet_and_are_stable():
    names = [f"prod-{i}" for i in range(200)]
    shards = [shard_of(n, 3) for n in names]
    assert set(shards) == {0, 1, 2} and all(shards.count(s) > 40 for s in range(3))
    assert shards == [shard_of(n, 3) for n in names]  # the same answer every time (no per-process hash seed)
    assert {shard_of(n, 1) for n in names} == {0}
