"""The restore decision (pure): quorum must be seen lost; a restore resumes only its own change; its plan is
typed steps (save the survivor's data first, delete with keys, boot the restore); what is lost."""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.core.model import ClusterState, ReplicaState
from haplane.core.plans import PlanRefused
from haplane.core.restore import (
    ELECTIONS_SPANNED,
    Look,
    QuorumEvidence,
    QuorumView,
    Survivor,
    best_survivor,
    own_replicas,
    plan_restore,
    quorum_view,
    settled,
)
from haplane.core.snapshot_meta import SnapshotMeta
from haplane.core.steps import Ref, StepKind
from haplane.core.topology import TopologyError, check_change_id, label_value, replica_name, restored_replica_name
from haplane.testing import ZONES

NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
LOST = (QuorumView.LOST, "seen lost")
ABC = (("a", "RUNNING"), ("b", "RUNNING"), ("c", "RUNNING"))
SPAN = ELECTIONS_SPANNED  # seconds: election timeouts of 1 s


def _looks(n: int = 4, span: float = SPAN, **kw) -> tuple[Look, ...]:
    return tuple(Look(at_s=i * span / max(1, n - 1), **kw) for i in range(n))


def _ev(vms=ABC, looks=(), seen=True, snapshot_voters=0, ignore=()) -> QuorumEvidence:
    return QuorumEvidence(
        vms=vms, footprint_seen=seen, looks=looks, snapshot_voters=snapshot_voters, election_s=1.0, ignore=ignore
    )


# Each row: what was seen, the verdict, and a phrase the verdict must carry.
CASES = [
    (
        "a member serves a read",
        _ev(looks=_looks(1, 0, answering=("a", "b"), with_leader=("a", "b"), readable=("a",))),
        QuorumView.HOLDS,
        "a served a linearizable read",
    ),
    # the first example: the cut-off member answers without a leader, the majority (with quorum) does
    # not answer this worker
    (
        "a minority answers, the majority is unreachable",
        _ev(looks=_looks(answering=("a",), unreachable=("b: timed out", "c: timed out"), voters=("a", "b", "c"))),
        QuorumView.UNKNOWN,
        "b (unreachable: timed out); c (unreachable: timed out)",
    ),
    # the second example: one probe during a leader election
    (
        "a single look during an election",
        _ev(looks=_looks(1, 0, answering=("a", "b", "c"), voters=("a", "b", "c"))),
        QuorumView.UNKNOWN,
        "election",
    ),
    (
        "looks spanning too short a time",
        _ev(looks=_looks(4, SPAN - 0.5, answering=("a", "b", "c"))),
        QuorumView.UNKNOWN,
        "election",
    ),
    (
        "every member without a leader across the looks",
        _ev(looks=_looks(answering=("a", "b", "c"))),
        QuorumView.LOST,
        "3 of 3",
    ),
    (
        "a majority without a leader, one unreachable",
        _ev(looks=_looks(answering=("a", "b"), unreachable=("c: timed out",))),
        QuorumView.LOST,
        "2 of 3",
    ),
    (
        "a leader appears in one look (an election that ended)",
        _ev(
            looks=_looks(answering=("a", "b", "c"))[:3]
            + (Look(at_s=SPAN, answering=("a", "b", "c"), with_leader=("a", "b", "c")),)
        ),
        QuorumView.UNKNOWN,
        "names a leader",
    ),
    (
        "a member answers only in some looks",
        _ev(
            looks=(Look(0, answering=("a", "b")), Look(SPAN, answering=("a",), unreachable=("b: timed out",))), vms=ABC
        ),
        QuorumView.UNKNOWN,
        "b (unreachable",
    ),
    # two of three VMs deleted (GCE shows them gone, the cluster's resources seen): the survivor's own member
    # list names them
    (
        "two VMs gone, the survivor without a leader",
        _ev(vms=(("c", "RUNNING"),), looks=_looks(answering=("c",), voters=("a", "b", "c"))),
        QuorumView.LOST,
        "a (VM gone), b (VM gone), c (no leader)",
    ),
    (
        "two VMs gone but the survivor is not reached",
        _ev(vms=(("c", "RUNNING"),), looks=_looks(unreachable=("c: timed out",), voters=())),
        QuorumView.UNKNOWN,
        "c (unreachable",
    ),
    (
        "the snapshot counts more voters than are seen by name",
        _ev(vms=(("c", "RUNNING"),), looks=_looks(answering=("c",)), snapshot_voters=3),
        QuorumView.UNKNOWN,
        "2 more member(s) the newest snapshot counts",
    ),
    (
        "stopped VMs keep their data",
        _ev(vms=(("a", "TERMINATED"), ("b", "TERMINATED")), looks=_looks()),
        QuorumView.UNKNOWN,
        "a (VM TERMINATED: start it",
    ),
    ("no VM left, the cluster's resources seen", _ev(vms=(), looks=_looks()), QuorumView.LOST, "no replica VM left"),
    # a wrong connection: nothing stamped with the cluster's uid is seen there
    ("nothing of the cluster seen (another project?)", _ev(vms=(), seen=False), QuorumView.UNKNOWN, "another project"),
    (
        "TLS refused everywhere",
        _ev(looks=_looks(unreachable=("a: TLS handshake failed", "b: timed out", "c: timed out"))),
        QuorumView.UNKNOWN,
        "0 of 3",
    ),
    (
        "this restore's own replica serving reads is not the old cluster's quorum",
        _ev(
            vms=(("c", "RUNNING"),),
            looks=_looks(answering=("c", "mine"), readable=("mine",), voters=("a", "b", "c")),
            ignore=("mine",),
        ),
        QuorumView.LOST,
        "3 of 3",
    ),
]


@pytest.mark.parametrize(("seen", "verdict", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lost_quorum_is_seen_not_inferred(seen, verdict, says):
    got, why = quorum_view(seen)
    assert got is verdict, why
    assert says in why, why


def test_an_unknown_verdict_names_what_to_check():
    _, why = quorum_view(_ev(looks=_looks(answering=("a",), unreachable=("b: timed out", "c: timed out"))))
    assert "port 2379" in why and "partition" in why and "look again" in why


@pytest.mark.parametrize(
    ("seen", "done"),
    [
        (_ev(looks=_looks(1, 0, answering=("a",), readable=("a",))), True),  # quorum holds: no need to look again
        (_ev(looks=_looks(1, 0, answering=("a",), unreachable=("b: x", "c: x"))), True),  # 1 of 3: can never be lost
        (_ev(looks=_looks(1, 0, answering=("a", "b", "c"))), False),  # all without a leader once: look again
        (_ev(looks=_looks(2, 1, answering=("a", "b"))), False),
        (_ev(looks=()), False),
    ],
)
def test_looking_stops_early_only_when_more_looks_cannot_make_it_lost(seen, done):
    assert settled(seen) is done
    if done:
        assert quorum_view(seen)[0] is not QuorumView.LOST


def test_the_survivor_with_the_highest_revision_is_chosen():
    looks = (
        Look(0, answering=("a", "b"), revisions=(("a", 90), ("b", 80))),
        Look(SPAN, answering=("a", "b"), revisions=(("a", 100), ("b", 120))),
    )
    assert best_survivor(looks) == ("b", 120)
    assert best_survivor(looks, ignore=("b",)) == ("a", 100)
    assert best_survivor((Look(0),)) is None


@pytest.mark.parametrize("bad", ["", "Create-1", "../other/x", "a/b", "x" * 64, "a b", "a_b"])
def test_change_id_pattern_refuses(bad):
    with pytest.raises(TopologyError, match="1-63 lower-case letters, digits or '-'.*nothing was read"):
        check_change_id(bad)


def test_change_id_pattern_accepts():
    for good in ("create-1111", "x" * 63, "restore-0b6f1e0c-7d2a-4c1e-9f00-aa11bb22cc33", "7"):
        assert check_change_id(good) == good


def _snap(members: int = 3, minutes: float = 10, cluster: str = "c", revision: int = 100) -> SnapshotMeta:
    taken = NOW - dt.timedelta(minutes=minutes)
    return SnapshotMeta(
        cluster=cluster,
        snapshot_id="s1",
        revision=revision,
        taken_at=taken.isoformat(),
        sha256="0" * 64,
        size=1,
        members=members,
        where="file:///s1",
    )


def _state(*replicas: ReplicaState, pool: bool = True) -> ClusterState:
    return ClusterState(
        cluster="c",
        region="europe-west1",
        replicas=replicas,
        endpoint_ip="127.30.0.1",
        load_balancer=pool,
        target_pool=pool,
        pool_members=tuple(r.name for r in replicas) if pool else (),
    )


def _r(name: str, zone: str = "europe-west1-b", change: str | None = None) -> ReplicaState:
    return ReplicaState(name=name, zone=zone, vm_status="RUNNING", internal_ip="127.10.0.2", change=change)


def test_refused_while_quorum_holds_or_is_unknown():
    with pytest.raises(PlanRefused, match="still has etcd quorum"):
        plan_restore(_state(_r("a")), (QuorumView.HOLDS, "a served"), _snap(), 120, NOW, "r", ZONES)
    with pytest.raises(PlanRefused, match="cannot tell whether .* nothing was changed"):
        plan_restore(_state(_r("a")), (QuorumView.UNKNOWN, "no member answered"), _snap(), 120, NOW, "r", ZONES)


def test_the_plan_saves_the_survivor_first_deletes_with_keys_and_restores_the_newer():
    state = _state(_r("a"), _r("b", zone="europe-west1-c"))
    survivor = Survivor("b", "127.10.0.3", 130)
    gone_link = "https://compute/projects/p/zones/europe-west1-d/instances/g"
    links = (gone_link, "https://compute/projects/p/zones/europe-west1-b/instances/a")
    plan = plan_restore(
        state, LOST, _snap(), 130, NOW, "restore-1", ZONES, survivor=survivor, gone_members=("g",), pool_links=links
    )
    mine = restored_replica_name("c", "restore-1")
    assert plan.plan.ids == (
        "snapshot-survivor",
        "pool-remove/a",
        "pool-remove/b",
        "pool-remove/g",
        "delete-vm/a",
        "delete-vm/b",
        "delete-keys/a",
        "delete-keys/b",
        "delete-keys/g",
        f"vm/{mine}",
        f"configure/{mine}",
        f"quorum/{mine}",
        f"pool-add/{mine}",
        "grow/1",
        "grow/2",
    )
    assert plan.plan.steps[-1].arguments == {"change": "restore-1-grow-2", "grow_to": 3}
    assert plan.plan.steps[3].arguments["link"] == gone_link  # a VM gone: its link, as the pool holds it
    kinds = [s.kind for s in plan.plan.steps]
    assert kinds[0] is StepKind.SAVE_SNAPSHOT and kinds.index(StepKind.SAVE_SNAPSHOT) < kinds.index(StepKind.DELETE_VM)
    configure = plan.plan.steps[plan.plan.ids.index(f"configure/{mine}")].arguments
    assert configure["restore"] == (
        Ref("snapshot-survivor", "where"),
        Ref("snapshot-survivor", "snapshot_id"),
        Ref("snapshot-survivor", "sha256"),
    )
    assert plan.from_survivor and plan.lost_revisions == 0
    assert "saved first from surviving member b (revision 130" in plan.loss()
    assert "snapshot-survivor" in plan.markdown() and "grow to 3 replicas" in plan.markdown()


def test_a_stored_snapshot_newer_than_the_survivor_or_named_is_restored_and_the_loss_said():
    state = _state(_r("a"), _r("b", zone="europe-west1-c"))
    older = Survivor("b", "127.10.0.3", 90)
    plan = plan_restore(state, LOST, _snap(), 90, NOW, "restore-1", ZONES, survivor=older)
    assert not plan.from_survivor and plan.plan.steps[0].kind is StepKind.SAVE_SNAPSHOT
    configure = next(s for s in plan.plan.steps if s.kind is StepKind.CONFIGURE)
    assert configure.arguments["restore"] == ("file:///s1", "s1", "0" * 64)
    named = plan_restore(
        state, LOST, _snap(), 130, NOW, "restore-1", ZONES, survivor=Survivor("b", "ip", 130), named=True
    )
    assert not named.from_survivor and named.lost_revisions == 30
    assert "30 revision(s) (last seen 130)" in named.loss() and "keeps them" in named.loss()


def test_no_survivor_no_pool_unknown_loss_and_sizes():
    plan = plan_restore(_state(pool=False), LOST, _snap(members=0), None, NOW, "r", ZONES)
    assert plan.lost_revisions is None and "unknown" in plan.loss()
    assert plan.grow_to == 1 and not plan.keep_load_balancer
    assert [s.kind for s in plan.plan.steps] == [StepKind.CREATE_VM, StepKind.CONFIGURE, StepKind.WAIT_QUORUM]
    assert plan.plan.steps[0].arguments["nat_ip"] == "127.30.0.1"  # the endpoint IP on the restored replica
    assert plan_restore(_state(), LOST, _snap(members=2), None, NOW, "r", ZONES).grow_to == 3  # even: up to odd
    assert plan_restore(_state(), LOST, _snap(members=3), None, NOW, "r", ZONES, size=5).grow_to == 5


def test_a_restore_resumes_only_its_own_replicas():
    mine, grown = own_replicas("c", "restore-1")[:2]
    state = _state(_r(mine), _r(grown, zone="europe-west1-c"), _r("old"))
    plan = plan_restore(state, LOST, _snap(), None, NOW, "restore-1", ZONES)
    assert plan.resuming and plan.remove == (("old", "europe-west1-b"),)


@pytest.mark.parametrize("change_id", ["create", "create-1111", "add-2222"])
def test_another_changes_id_never_makes_its_replicas_ours(change_id):
    """The issue's case: a healthy cluster from create-1111... and add-2222...; a restore given a prefix of a
    change label, or a change's own id, finds none of them its own: the quorum check decides, and refuses."""
    create = [_r(replica_name("c", "create-1111", i), change=label_value("create-1111")) for i in range(2)]
    add = _r(replica_name("c", "add-2222", 0), zone="europe-west1-c", change=label_value("add-2222"))
    state = _state(*create, add)
    assert not set(own_replicas("c", change_id)) & {r.name for r in state.vms}
    with pytest.raises(PlanRefused, match="still has etcd quorum"):
        plan_restore(state, (QuorumView.HOLDS, "3 served"), _snap(), None, NOW, change_id, ZONES)


def test_snapshot_of_another_cluster_is_refused():
    with pytest.raises(PlanRefused, match="of cluster 'other'"):
        plan_restore(_state(), LOST, _snap(cluster="other"), None, NOW, "r", ZONES)
