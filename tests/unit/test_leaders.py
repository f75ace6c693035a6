"""Leader election in the model and the health check's rules: a replica whose controller-manager or
scheduler is not running is failed; one whose components could not be asked is unknown, never failed;
a component whose Lease is missing or lapsed has no leader."""

from __future__ import annotations

import pytest

from haplane.core.model import LeaderLease as Lease
from haplane.core.model import Unknown
from haplane.core.remediation import Action, Problem, decide, find_problems
from tests.unit.test_remediation import NOW, cluster, ok


@pytest.mark.parametrize(
    ("kw", "problem"),
    [
        (dict(components_down=("controller-manager",)), Problem.COMPONENT_DOWN),
        (dict(components_down=("controller-manager", "scheduler")), Problem.COMPONENT_DOWN),
        (dict(components_down=("scheduler",), api_ready=False), Problem.API_NOT_READY),  # the worse one is named
        (dict(leads=("controller-manager", "scheduler")), None),
    ],
)
def test_component_problems(kw, problem):
    found = find_problems(cluster(ok(0), ok(1, **kw), ok(2)))
    assert [f.problem for f in found] == ([problem] if problem else [])
    assert ok(1, **kw).healthy is (problem is None)


def test_a_follower_without_its_scheduler_is_replaced():
    verdict = decide(cluster(ok(0), ok(1, components_down=("scheduler",)), ok(2)), [], NOW)
    assert verdict.action is Action.REPLACE and verdict.replica == "m1"


def test_components_that_could_not_be_asked_are_unknown_not_failed():
    r = ok(1, components_unknown=Unknown("controller-manager and scheduler of m1", "componentstatuses answered 500"))
    verdict = decide(cluster(ok(0), r, ok(2)), [], NOW)
    assert not r.healthy and verdict.action is Action.UNKNOWN and verdict.replica is None


@pytest.mark.parametrize(
    ("lease", "leader"),
    [
        (Lease("controller-manager"), None),  # no Lease at all
        (Lease("scheduler", holder="m1", identity="m1_x", renew_time="t", expired=True), None),
        (Lease("scheduler", holder="m1", identity="m1_x", renew_time="t", expired=False), "m1"),
    ],
)
def test_leaderless(lease, leader):
    state = cluster(ok(0))
    state = type(state)(**{**state.__dict__, "leases": (lease,)})
    assert lease.leader == leader
    assert state.leaderless() == (() if leader else (lease,))
    assert ("kube-scheduler" if lease.component == "scheduler" else "kube-controller-manager") in lease.text
