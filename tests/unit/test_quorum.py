"""Quorum rules, table-driven (pure: no etcd, no Prefect)."""

from __future__ import annotations

import pytest

from haplane.cloud.etcd import Alarm, EndpointStatus, EndpointUnreachable, Member
from haplane.core.quorum import (
    MemberHealth,
    Reason,
    assess,
    can_add,
    can_promote,
    can_remove,
    can_replace,
    check_target_size,
    fault_tolerance,
    has_quorum,
    quorum,
    unhealthy_reasons,
)

# one letter per member, ids 1, 2, 3, ... in order:
#   H healthy voter   U unreachable voter   N voter that never started   A voter with an alarm
#   L learner caught up   l learner not caught up
_LETTERS = {
    "H": (True, ()),
    "U": (True, (Reason.UNREACHABLE,)),
    "N": (True, (Reason.NEVER_STARTED,)),
    "A": (True, (Reason.ALARM,)),
    "L": (False, ()),
    "l": (False, (Reason.LEARNER_NOT_CAUGHT_UP,)),
}


def cluster(spec: str) -> list[MemberHealth]:
    return [
        MemberHealth(id=i, name=f"m{i}", voting=_LETTERS[c][0], reasons=_LETTERS[c][1]) for i, c in enumerate(spec, 1)
    ]


@pytest.mark.parametrize(
    "voting,q,tol", [(0, 1, 0), (1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2), (6, 4, 2), (7, 4, 3)]
)
def test_quorum_size(voting, q, tol):
    assert quorum(voting) == q
    assert fault_tolerance(voting) == tol


@pytest.mark.parametrize(
    "voting,unhealthy,ok",
    [
        (1, 0, True),
        (1, 1, False),
        (2, 1, False),
        (3, 1, True),
        (3, 2, False),
        (5, 2, True),
        (5, 3, False),
        (0, 0, False),
    ],
)
def test_has_quorum(voting, unhealthy, ok):
    assert has_quorum(voting, unhealthy) is ok


@pytest.mark.parametrize(
    "size,ok,words",
    [
        (1, True, "0 failure"),
        (3, True, "1 failure"),
        (5, True, "2 failure"),
        (7, True, "3 failure"),
        (2, False, "two members are worse than one"),
        (4, False, "even"),
        (6, False, "even"),
        (0, False, "at least 1"),
        (9, False, "maximum"),
    ],
)
def test_target_size(size, ok, words):
    d = check_target_size(size)
    assert d.allowed is ok
    assert words in d.reason


# (cluster, victim id, allowed, words in the reason)
REMOVE_TABLE = [
    ("H", 1, False, "last member"),
    ("HL", 1, False, "being added"),  # a learner in progress blocks other changes
    ("HL", 2, True, "learner"),  # ...but the learner itself may be swept
    ("Hl", 2, True, "learner"),
    ("HH", 1, True, "leaves 1 voting"),
    ("HU", 2, False, "quorum is already lost"),  # 2 voting, 1 down: etcd cannot commit the removal
    ("HHH", 1, True, "two members are worse than one"),  # passes through 2: allowed, said plainly
    ("HHU", 3, True, "leaves 2 voting"),  # Cluster API: 3 CP tolerates no failure besides the victim
    ("HHU", 1, False, "below the quorum"),  # removing a healthy one while another is down
    ("HUU", 2, False, "quorum is already lost"),
    ("HHHHU", 5, True, "leaves 4 voting"),
    ("HHHUU", 4, True, "3 healthy"),  # 5 CP tolerates 1 more failure besides the victim
    ("HHHUU", 1, False, "below the quorum"),
    ("HHHHHUU", 6, True, "leaves 6 voting"),  # 7 CP tolerates 2 more
    ("HHHHUUU", 5, True, "leaves 6 voting"),
    ("HHHHUUU", 1, False, "below the quorum"),
    ("HHN", 3, True, "never started"),  # sweep members that never started
    ("HHA", 3, True, "alarm"),
    ("HHH", 9, False, "no member"),
]


@pytest.mark.parametrize("spec,victim,ok,words", REMOVE_TABLE)
def test_can_remove(spec, victim, ok, words):
    d = can_remove(cluster(spec), victim)
    assert d.allowed is ok, d.reason
    assert words in d.reason


ADD_TABLE = [
    ("", False, "no cluster"),
    ("H", True, "two members are worse than one"),  # 1 -> 2 on the way to 3, as the seed does
    ("HH", True, "3 voting members"),
    ("HHH", True, "4 voting members"),
    ("HL", False, "already being added"),
    ("HHl", False, "already being added"),
    ("HU", False, "quorum is already lost"),
    ("HHU", False, "remove them first"),  # etcd: every voting member must be connected to add
    ("HHA", False, "strict reconfiguration"),
    ("HUU", False, "quorum is already lost"),
    ("HHHHU", False, "remove them first"),
    ("HHHH", True, "5 voting members"),
]


@pytest.mark.parametrize("spec,ok,words", ADD_TABLE)
def test_can_add(spec, ok, words):
    d = can_add(cluster(spec))
    assert d.allowed is ok, d.reason
    assert words in d.reason


PROMOTE_TABLE = [
    ("HL", 2, True, "two members are worse than one"),
    ("HHL", 3, True, "3 voting members"),
    ("HHl", 3, False, "learner not caught up"),
    ("HH", 2, True, "already a voting member"),
    ("HH", 7, False, "no member"),
    ("HUUL", 4, False, "quorum is already lost"),
]


@pytest.mark.parametrize("spec,member,ok,words", PROMOTE_TABLE)
def test_can_promote(spec, member, ok, words):
    d = can_promote(cluster(spec), member)
    assert d.allowed is ok, d.reason
    assert words in d.reason


REPLACE_TABLE = [
    ("HHU", [3], True, "down to 2 voting"),
    ("HHU", [3], True, "two members are worse than one"),
    (
        "HHHUU",
        [4, 5],
        True,
        "remove m4 (4); then remove m5 (5); then add and promote replacement 1; then add and promote replacement 2",
    ),
    ("HHHUU", [5, 4], True, "remove m5"),
    ("HHHUU", [4], False, "remove them first"),  # m5 still down: etcd would refuse the add
    ("HHHHU", [5], True, "one change at a time"),
    ("HUU", [2, 3], False, "quorum is already lost"),
    ("HHHHUUU", [5, 6, 7], True, "then"),
    ("HHHUU", [1], False, "healthy"),
    ("HHHl", [4], True, "remove learner"),
    ("HHU", [3, 3], False, "twice"),
    ("HHU", [], True, "nothing"),
    ("HU", [2], False, "quorum is already lost"),
    ("HHU", [9], False, "no member"),
]


@pytest.mark.parametrize("spec,ids,ok,words", REPLACE_TABLE)
def test_can_replace(spec, ids, ok, words):
    d = can_replace(cluster(spec), ids)
    assert d.allowed is ok, d.reason
    assert words in d.reason


@pytest.mark.parametrize(
    "facts,expected",
    [
        (dict(started=True, reachable=True), ()),
        (dict(started=False, reachable=False), (Reason.NEVER_STARTED,)),
        (dict(started=True, reachable=False), (Reason.UNREACHABLE,)),
        (dict(started=True, reachable=True, is_learner=True, learner_caught_up=False), (Reason.LEARNER_NOT_CAUGHT_UP,)),
        (dict(started=True, reachable=True, is_learner=True, learner_caught_up=True), ()),
        (dict(started=True, reachable=True, alarms=["NOSPACE"]), (Reason.ALARM,)),
        (dict(started=True, reachable=True, alarms=["NONE"]), ()),
        (dict(started=True, reachable=False, alarms=["CORRUPT"]), (Reason.UNREACHABLE, Reason.ALARM)),
        (dict(started=True, reachable=True, knows_leader=False), (Reason.NO_LEADER,)),
    ],
)
def test_unhealthy_reasons(facts, expected):
    assert unhealthy_reasons(**facts) == expected


def _status(url, mid, leader, index, applied=None, learner=False):
    return EndpointStatus(
        endpoint=url,
        member_id=mid,
        leader_id=leader,
        raft_index=index,
        raft_term=2,
        raft_applied_index=applied if applied is not None else index,
        version="3.5.1",
        db_size=1,
        is_learner=learner,
    )


def test_assess_from_observations():
    members = [
        Member(1, "a", ("https://a:2380",), ("https://a:2379",)),
        Member(2, "b", ("https://b:2380",), ("https://b:2379",)),
        Member(3, "c", ("https://c:2380",), ("https://c:2379",)),
        Member(4, "", ("https://d:2380",), (), is_learner=True),  # added, never started
        Member(5, "e", ("https://e:2380",), ("https://e:2379",), is_learner=True),  # lagging learner
    ]
    statuses = [
        _status("https://a:2379", 1, 1, 1000),
        _status("https://b:2379", 2, 1, 1000),
        EndpointUnreachable("https://c:2379", "cannot connect"),
        _status("https://e:2379", 5, 1, 400, learner=True),
    ]
    health = {h.id: h for h in assess(members, statuses, [Alarm(2, "NOSPACE")])}
    assert health[1].healthy and health[1].reason == "healthy"
    assert health[2].reasons == (Reason.ALARM,)
    assert health[3].reasons == (Reason.UNREACHABLE,)
    assert health[4].reasons == (Reason.NEVER_STARTED,) and health[4].is_learner
    assert health[5].reasons == (Reason.LEARNER_NOT_CAUGHT_UP,)
    caught_up = assess(members[4:], [_status("https://a:2379", 1, 1, 1000), _status("https://e:2379", 5, 1, 999)])
    assert caught_up[0].healthy


def test_decisions_are_sentences():
    for d in (can_remove(cluster("H"), 1), can_add(cluster("HL")), can_replace(cluster("HUU"), [2])):
        assert not d.allowed
        assert d.reason[0].isalpha() and len(d.reason.split()) >= 5


def test_decision_has_no_truth_value_trap():
    """A refusal must be read from ``.allowed``; the rules' callers never test a Decision's truth."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    paths = [*root.glob("haplane/**/*.py"), *root.glob("flows/*.py"), *root.glob("tasks/**/*.py")]
    assert len(paths) > 20, f"no sources found under {root}"
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.UnaryOp)
                and isinstance(node.op, ast.Not)
                and isinstance(node.operand, ast.Name)
                and node.operand.id in ("decision", "d")
            ):
                raise AssertionError(f"{path.name}:{node.lineno} tests a Decision's truth; use .allowed")
