"""The health check's decision rules (haplane/core/remediation.py), table-driven. Pure: no I/O."""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.core.model import ClusterState, ReplicaState
from haplane.core.remediation import Action, Attempt, Outcome, Policy, Problem, decide, failures_in_a_row, find_problems

NOW = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
ZONES = "bcdfg"


def ok(i: int, **kw) -> ReplicaState:
    base = dict(
        name=f"m{i}",
        zone=f"europe-west1-{ZONES[i]}",
        vm_status="RUNNING",
        internal_ip=f"127.10.0.{i + 1}",
        member_id=i + 1,
        started=True,
        etcd_ok=True,
        api_ready=True,
        leader=i == 0,
    )
    base.update(kw)
    return ReplicaState(**base)


KILLED = dict(etcd_ok=False, api_ready=False, problems=("etcd member unreachable",))
STOPPED = dict(vm_status="TERMINATED", etcd_ok=False, api_ready=False)
GONE = dict(zone="?", vm_status="MISSING", internal_ip="", etcd_ok=False, api_ready=False)
LEARNER = dict(learner=True, etcd_ok=True)
BARE = dict(member_id=None, etcd_ok=False, api_ready=False)
API_DOWN = dict(api_ready=False)


def cluster(*replicas: ReplicaState) -> ClusterState:
    return ClusterState(cluster="c", region="europe-west1", replicas=tuple(replicas))


def ago(minutes: float) -> dt.datetime:
    return NOW - dt.timedelta(minutes=minutes)


def failed(replica: str, minutes: float) -> Attempt:
    return Attempt(replica, ago(minutes), Outcome.FAILED, run=f"run-{minutes}")


def unfinished(replica: str, minutes: float) -> Attempt:
    return Attempt(replica, ago(minutes), Outcome.FAILED, run=f"run-{minutes}", change_id=f"replace-{minutes}")


CASES = [
    # (id, replicas, attempts, busy, action, chosen replica, words in the reason)
    ("all healthy", [ok(0), ok(1), ok(2)], [], False, Action.NOTHING, None, "are healthy"),
    ("no replicas", [], [], False, Action.NOTHING, None, "no replicas"),
    ("killed follower", [ok(0), ok(1, **KILLED), ok(2)], [], False, Action.REPLACE, "m1", "etcd member unhealthy"),
    ("stopped VM", [ok(0), ok(1), ok(2, **STOPPED)], [], False, Action.REPLACE, "m2", "VM not running"),
    ("VM gone, member left", [ok(0), ok(1), ok(2, **GONE)], [], False, Action.REPLACE, "m2", "VM gone"),
    ("API not ready", [ok(0), ok(1, **API_DOWN), ok(2)], [], False, Action.REPLACE, "m1", "API server not ready"),
    ("stuck learner", [ok(0), ok(1), ok(2), ok(3, **LEARNER)], [], False, Action.REPLACE, "m3", "learner"),
    ("VM that never joined", [ok(0), ok(1), ok(2, **BARE)], [], False, Action.REPLACE, "m2", "never joined"),
    (
        "learner while a change runs",
        [ok(0), ok(1), ok(2, **LEARNER)],
        [],
        True,
        Action.NOTHING,
        None,
        "change is in progress",
    ),
    (
        "failure while a change runs",
        [ok(0), ok(1, **KILLED), ok(2)],
        [],
        True,
        Action.WAIT,
        None,
        "change is in progress",
    ),
    (
        "the worst first",
        [ok(0), ok(1, **API_DOWN), ok(2), ok(3, **STOPPED), ok(4)],
        [],
        False,
        Action.REPLACE,
        "m3",
        "m1 next",
    ),
    (
        "quorum already lost",
        [ok(0), ok(1, **KILLED), ok(2, **KILLED)],
        [],
        False,
        Action.CANNOT,
        None,
        "would lose quorum",
    ),
    ("single replica", [ok(0, **KILLED)], [], False, Action.CANNOT, None, "would lose quorum"),
    # etcd's strict reconfiguration check: no add while another voter is down, so no one-by-one replace
    (
        "two of five down",
        [ok(0), ok(1, **KILLED), ok(2), ok(3, **KILLED), ok(4)],
        [],
        False,
        Action.CANNOT,
        None,
        "remove them first",
    ),
    (
        "two API servers down: one at a time",
        [ok(0), ok(1, **API_DOWN), ok(2), ok(3, **API_DOWN), ok(4)],
        [],
        False,
        Action.REPLACE,
        "m1",
        "m3 next",
    ),
    (
        "a replacement is running",
        [ok(0), ok(1, **KILLED), ok(2)],
        [Attempt("m1", ago(1), Outcome.RUNNING, "r")],
        False,
        Action.WAIT,
        None,
        "still running",
    ),
    (
        "backing off after one failure",
        [ok(0), ok(1, **KILLED), ok(2)],
        [failed("m1", 2)],
        False,
        Action.WAIT,
        None,
        "backing off",
    ),
    ("back-off over", [ok(0), ok(1, **KILLED), ok(2)], [failed("m1", 6)], False, Action.REPLACE, "m1", "try 2"),
    (
        "back-off doubles",
        [ok(0), ok(1, **KILLED), ok(2)],
        [failed("m1", 30), failed("m1", 8)],
        False,
        Action.WAIT,
        None,
        "next try in 120 s",
    ),
    (
        "given up after three",
        [ok(0), ok(1, **KILLED), ok(2)],
        [failed("m1", 300), failed("m1", 200), failed("m1", 100)],
        False,
        Action.CANNOT,
        None,
        "given up",
    ),
    (
        "a success resets the count",
        [ok(0), ok(1, **KILLED), ok(2)],
        [failed("m1", 300), failed("m1", 200), Attempt("m1", ago(150), Outcome.COMPLETED), failed("m1", 100)],
        False,
        Action.REPLACE,
        "m1",
        "try 2",
    ),
    (
        "old failures are forgotten",
        [ok(0), ok(1, **KILLED), ok(2)],
        [failed("m1", 3000), failed("m1", 2900), failed("m1", 2800)],
        False,
        Action.REPLACE,
        "m1",
        "replace",
    ),
    (
        "backing off one, the next one goes",
        [ok(0), ok(1, **API_DOWN), ok(2), ok(3, **API_DOWN), ok(4)],
        [failed("m1", 1)],
        False,
        Action.REPLACE,
        "m3",
        "replace m3",
    ),
    (
        "failures of another replica do not count",
        [ok(0), ok(1, **KILLED), ok(2)],
        [failed("m7", 1), failed("m7", 2), failed("m7", 3)],
        False,
        Action.REPLACE,
        "m1",
        "replace m1",
    ),
    # a replacement removed m2 and then failed to add the new replica: finish it with its change id
    (
        "an unfinished replacement is resumed",
        [ok(0), ok(1)],
        [unfinished("m2", 10)],
        False,
        Action.RESUME,
        "m2",
        "finish replacing m2",
    ),
    (
        "an unfinished replacement backs off",
        [ok(0), ok(1)],
        [unfinished("m2", 1)],
        False,
        Action.WAIT,
        None,
        "backing off",
    ),
    (
        "an unfinished replacement is given up",
        [ok(0), ok(1)],
        [unfinished("m2", 300), unfinished("m2", 200), unfinished("m2", 100)],
        False,
        Action.CANNOT,
        None,
        "never added",
    ),
    (
        "an unfinished replacement goes before a new failure",
        [ok(0), ok(1, **API_DOWN), ok(3)],
        [unfinished("m2", 10)],
        False,
        Action.RESUME,
        "m2",
        "finish replacing m2",
    ),
]


@pytest.mark.parametrize(
    ("replicas", "attempts", "busy", "action", "chosen", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(replicas, attempts, busy, action, chosen, words):
    verdict = decide(cluster(*replicas), attempts, NOW, busy=busy, policy=Policy())
    assert verdict.action is action, verdict.reason
    assert verdict.replica == chosen
    assert (verdict.change_id is not None) == (action is Action.RESUME)
    assert words in verdict.reason, verdict.reason
    assert verdict.markdown().startswith(f"## Health check of `c`: {action.value}")


@pytest.mark.parametrize(
    ("replica", "problem"),
    [
        (ok(1, **KILLED), Problem.ETCD_UNHEALTHY),
        (ok(1, **STOPPED), Problem.VM_STOPPED),
        (ok(1, **GONE), Problem.VM_GONE),
        (ok(1, **LEARNER), Problem.LEARNER_STUCK),
        (ok(1, **BARE), Problem.NOT_A_MEMBER),
        (ok(1, **API_DOWN), Problem.API_NOT_READY),
        (ok(1), None),
    ],
)
def test_find_problems(replica, problem):
    found = find_problems(cluster(ok(0), replica, ok(2)))
    assert [f.problem for f in found] == ([problem] if problem else [])


def test_unremediable_lists_given_up_and_quorum_refusals_but_not_back_off():
    verdict = decide(
        cluster(ok(0), ok(1, **API_DOWN), ok(2), ok(3, **API_DOWN), ok(4)),
        [failed("m1", 300), failed("m1", 200), failed("m1", 100), failed("m3", 1)],
        NOW,
    )
    assert verdict.action is Action.WAIT
    assert [r for r, _ in verdict.unremediable] == ["m1"]
    assert "Not acted on" in verdict.markdown()


def test_failures_in_a_row_are_in_time_order():
    attempts = [failed("m1", 1), Attempt("m1", ago(5), Outcome.COMPLETED), failed("m1", 10)]
    assert [a.run for a in failures_in_a_row(attempts, "m1")] == ["run-1"]


def test_policy_backoff_is_capped():
    p = Policy(backoff_base_s=300, backoff_max_s=1000)
    assert [p.backoff_s(n) for n in (1, 2, 3, 4)] == [300, 600, 1000, 1000]
