"""Unknown is not absent (issue 9): what could not be observed is never read as "no members",
"unhealthy" or "not ready", and nothing destructive is planned or done on it. Pure, table-driven.

The picture a worker gets when it cannot read etcd (its certificate expired, a firewall, the wrong
network, an unreadable PKI block): the VMs are there and RUNNING, but the member list is unknown.
Read as "no members", that picture made two removals and a 2 -> 1 hand-back plannable on a healthy
3-replica cluster, leaving 1 VM and 3 voting members.
"""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.core.model import ClusterState, ReplicaState, Unknown
from haplane.core.plans import PlanRefused, plan_add, plan_remove, plan_replace
from haplane.core.remediation import Action, Attempt, Outcome, decide, find_problems
from haplane.testing import REGION, ZONES

NOW = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
CERT = Unknown(
    "etcd membership of c",
    "member list failed: TLS handshake refused (certificate expired)",
    "that the operator certificate in block c-pki has not expired",
)
NO_PKI = Unknown(
    "etcd membership of c",
    "the PKI block c-pki could not be read (ValidationError)",
    "that block c-pki exists and loads",
)
NO_API = Unknown("API readiness", "no API server of the cluster answered this worker", "port 6443")


def vm(i: int, **kw) -> ReplicaState:
    """A replica whose VM GCE shows RUNNING, whose etcd could not be asked."""
    base = dict(
        name=f"c-master-{i}",
        zone=ZONES[i % 3],
        vm_status="RUNNING",
        internal_ip=f"127.10.0.{i + 2}",
        external_ip=f"127.20.0.{i + 2}",
        change="create-1",
        api_ready=True,
        etcd_unknown=Unknown(f"etcd health of c-master-{i}", CERT.reason, CERT.check),
    )
    base.update(kw)
    return ReplicaState(**base)


def known(i: int, **kw) -> ReplicaState:
    base = dict(
        name=f"c-master-{i}",
        zone=ZONES[i % 3],
        vm_status="RUNNING",
        internal_ip=f"127.10.0.{i + 2}",
        external_ip=f"127.20.0.{i + 2}",
        change="create-1",
        member_id=100 + i,
        started=True,
        etcd_ok=True,
        api_ready=True,
        leader=i == 0,
    )
    base.update(kw)
    return ReplicaState(**base)


def blind(n: int, why: Unknown = CERT, lb: bool = True) -> ClusterState:
    return ClusterState(
        cluster="c",
        region=REGION,
        replicas=tuple(
            vm(i, etcd_unknown=Unknown(f"etcd health of c-master-{i}", why.reason, why.check)) for i in range(n)
        ),
        endpoint_ip="127.30.0.2",
        address_status="IN_USE",
        load_balancer=lb,
        target_pool=lb,
        membership_unknown=why,
    )


THREE = ClusterState(
    cluster="c",
    region=REGION,
    replicas=tuple(known(i) for i in range(3)),
    endpoint_ip="127.30.0.2",
    address_status="IN_USE",
    load_balancer=True,
    target_pool=True,
)
# one member's health could not be asked although the member list was read
ONE_UNKNOWN = ClusterState(
    cluster="c",
    region=REGION,
    endpoint_ip="127.30.0.2",
    address_status="IN_USE",
    load_balancer=True,
    target_pool=True,
    replicas=(known(0), known(1), known(2, etcd_ok=False, etcd_unknown=CERT)),
)


@pytest.mark.parametrize(
    ("case", "plan", "words"),
    [
        ("remove by zone, cert expired", lambda: plan_remove(blind(3), ZONES[2], None), "certificate expired"),
        (
            "remove by name, PKI unreadable",
            lambda: plan_remove(blind(3, NO_PKI), ZONES[0], "c-master-0"),
            "could not be read",
        ),
        ("remove 2 -> 1 (hand-back)", lambda: plan_remove(blind(2), ZONES[1], None), "etcd membership of c"),
        ("replace, cert expired", lambda: plan_replace(blind(3), "c-master-1", "replace-1", ZONES), "has not expired"),
        (
            "replace, one member's health unknown",
            lambda: plan_replace(ONE_UNKNOWN, "c-master-2", "r-1", ZONES),
            "etcd membership of c",
        ),
        (
            "remove, one member's health unknown",
            lambda: plan_remove(ONE_UNKNOWN, ZONES[0], "c-master-0"),
            "certificate expired",
        ),
        (
            "add needs the member list for its quorum check",
            lambda: plan_add(blind(3), None, "add-1", ZONES, ZONES),
            "etcd membership",
        ),
    ],
)
def test_plans_refuse_to_act_on_an_unknown_membership(case, plan, words):
    with pytest.raises(PlanRefused, match=words) as refused:
        plan()
    text = str(refused.value)
    assert "could not be observed" in text and "check" in text and "Nothing was changed" in text


def test_the_same_cluster_seen_whole_is_plannable():
    """The refusals above come from the unknown, not from the cluster's shape."""
    assert plan_remove(THREE, ZONES[2], None).replica == "c-master-2"
    assert plan_replace(THREE, "c-master-1", "replace-1", ZONES)[0].replica == "c-master-1"


def test_the_issue_9_walk_cannot_lose_quorum():
    """Removing replicas of a cluster whose etcd is unreadable, one by one, as a script would: the first
    removal is refused, so the cluster keeps its 3 VMs and 3 voting members."""
    state = blind(3)
    removed = 0
    for zone in ZONES:
        try:
            plan_remove(state, zone, None)
            removed += 1
        except PlanRefused:
            pass
    assert removed == 0


@pytest.mark.parametrize(
    ("case", "state", "attempts"),
    [
        ("cert expired on every member", blind(3), []),
        ("PKI unreadable", blind(3, NO_PKI), []),
        ("one member's health unknown", ONE_UNKNOWN, []),
        (
            "no API server answered this worker",
            ClusterState(
                cluster="c",
                region=REGION,
                replicas=tuple(known(i, api_ready=False, api_unknown=NO_API) for i in range(3)),
                load_balancer=True,
                target_pool=True,
            ),
            [],
        ),
        (
            "unknown, with a stopped VM it would replace",
            ClusterState(
                cluster="c",
                region=REGION,
                membership_unknown=CERT,
                replicas=(vm(0), vm(1), vm(2, vm_status="TERMINATED", etcd_unknown=None)),
            ),
            [],
        ),
        (
            "unknown, with an unfinished replacement it would resume",
            blind(2),
            [Attempt("c-master-2", NOW - dt.timedelta(hours=1), Outcome.FAILED, run="r", change_id="replace-9")],
        ),
    ],
)
def test_the_health_check_never_acts_on_unknown_and_says_what_to_check(case, state, attempts):
    verdict = decide(state, attempts, NOW)
    assert verdict.action is Action.UNKNOWN and verdict.replica is None
    assert verdict.unknowns and "could not be observed" in verdict.reason
    assert "Could not be observed" in verdict.markdown()


def test_unknown_is_not_reported_as_unhealthy():
    """A member whose etcd could not be asked is not "unhealthy", nor a VM "that never joined"."""
    assert find_problems(blind(3)) == []
    problems = find_problems(
        ClusterState(
            cluster="c",
            region=REGION,
            membership_unknown=CERT,
            replicas=(vm(0), vm(1, api_ready=False), vm(2, vm_status="TERMINATED")),
        )
    )
    assert [(f.replica, f.problem.value) for f in problems] == [
        ("c-master-2", "VM not running"),
        ("c-master-1", "API server not ready"),
    ]


def test_unknowns_are_listed_once_membership_first():
    state = blind(3)
    assert state.unknowns[0] is CERT and len(state.unknowns) == 4  # membership, then each member's health
    assert not any(r.healthy for r in state.replicas)
