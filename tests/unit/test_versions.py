"""The upgrade rules of haplane.core.versions, table by table: each refusal names its rule."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from haplane.core.model import ClusterState, ReplicaState, Unknown
from haplane.core.versions import (
    ETCD_RELEASES,
    KUBERNETES_RELEASES,
    EtcdVersion,
    KubernetesVersion,
    VersionRefused,
    check_etcd_move,
    check_kubernetes_move,
    check_offered,
    decide_upgrade,
    supported,
)


def rule_of(call) -> str | None:
    try:
        call()
    except VersionRefused as exc:
        assert exc.rule in str(exc)  # the refusal names its rule
        return exc.rule
    return None


# members' running versions, cluster version, target -> the rule that refuses (None: allowed)
ETCD_TABLE = [
    ({"a": "3.4.23", "b": "3.4.23", "c": "3.4.23"}, "3.4.0", "3.5.1", None),  # one minor up
    ({"a": "3.4.23", "b": "3.4.23", "c": "3.4.23"}, "3.4.0", "3.6.0", "etcd-one-minor"),  # two minors
    ({"a": "3.4.23", "b": "3.4.23"}, "3.4.0", "4.0.0", "etcd-one-minor"),  # another major
    ({"a": "3.5.1", "b": "3.5.1", "c": "3.5.1"}, "3.5.0", "3.4.23", "etcd-no-minor-downgrade"),  # moved: no way back
    ({"a": "3.5.1", "b": "3.4.23", "c": "3.4.23"}, "3.4.0", "3.4.23", None),  # mixed, not moved: back is fine
    ({"a": "3.5.1", "b": "3.5.1", "c": "3.5.1"}, "3.5.0", "3.5.9", None),  # patch up
    ({"a": "3.5.9", "b": "3.5.9", "c": "3.5.9"}, "3.5.0", "3.5.1", None),  # patch down
    ({"a": "3.5.1", "b": "3.4.23"}, "3.4.0", "3.6.0", "etcd-one-minor"),  # counted from the cluster version
    ({"a": "3.4.23"}, "3.4", "3.5.1", None),  # a cluster version given as X.Y
]


@pytest.mark.parametrize(("members", "cluster", "target", "rule"), ETCD_TABLE)
def test_etcd_rules(members, cluster, target, rule):
    assert rule_of(lambda: check_etcd_move(members, cluster, target)) == rule


KUBE_TABLE = [
    ({"a": "v1.30.0", "b": "v1.30.0"}, "v1.31.0", None),  # one minor
    ({"a": "v1.30.0", "b": "v1.30.0"}, "v1.32.0", "kubernetes-one-minor"),  # two minors
    ({"a": "v1.30.0", "b": "v1.31.0"}, "v1.32.0", "kubernetes-one-minor"),  # from the oldest of a mixed set
    ({"a": "v1.30.0", "b": "v1.31.0"}, "v1.30.0", "kubernetes-mixed-skew"),  # below the newest
    ({"a": "v1.30.0", "b": "v1.31.0"}, "v1.31.2", None),  # finish a mixed set
    ({"a": "v1.31.0", "b": "v1.31.0"}, "v1.30.0", "kubernetes-mixed-skew"),  # a minor down
    ({"a": "v1.30.5", "b": "v1.30.5"}, "v1.30.1", None),  # any patch move
    ({"a": "v1.30.0"}, "v2.0.0", "kubernetes-one-minor"),  # another major
]


@pytest.mark.parametrize(("replicas", "target", "rule"), KUBE_TABLE)
def test_kubernetes_rules(replicas, target, rule):
    assert rule_of(lambda: check_kubernetes_move(replicas, target)) == rule


def test_real_gce_needs_a_pinned_checksum(monkeypatch):
    """Real GCE installs only what is pinned: etcd 3.5.1 (its tarball's sha256) and every Kubernetes release
    (its server tarball's sha512); etcd 3.4.23 has no upstream checksum pinned, so it is refused, naming the fix."""
    from dataclasses import replace as swap

    from haplane.core import versions

    for kube in KUBERNETES_RELEASES:
        versions.check_pinned("3.5.1", kube)  # pinned: no refusal
    with pytest.raises(versions.VersionRefused) as refused:
        versions.check_pinned("3.4.23", "v1.30.0")
    assert refused.value.rule == "pinned-checksum"
    assert "etcd 3.4.23 has no pinned sha256 of etcd-v3.4.23-linux-amd64.tar.gz" in str(refused.value)
    assert "Choose a pinned release (etcd 3.5.1; Kubernetes v1.30.0, v1.31.0)" in str(refused.value)
    monkeypatch.setitem(
        versions.KUBERNETES_RELEASES, "v1.31.0", swap(KUBERNETES_RELEASES["v1.31.0"], server_tarball_sha512=None)
    )
    with pytest.raises(versions.VersionRefused, match="Kubernetes v1.31.0 has no pinned sha512 of kubernetes-server"):
        versions.check_pinned("3.5.1", "v1.31.0")
    assert rule_of(lambda: versions.check_pinned("3.5.1", "v1.30.0")) is None


def test_every_kubernetes_release_pins_its_server_tarball_sha512():
    for version, release in KUBERNETES_RELEASES.items():
        assert release.version == version
        assert re.fullmatch(r"[0-9a-f]{128}", release.server_tarball_sha512 or ""), version


def test_offered_versions_are_one_list():
    assert supported(tuple(ETCD_RELEASES), EtcdVersion)
    assert supported(tuple(KUBERNETES_RELEASES), KubernetesVersion)
    assert rule_of(lambda: check_offered("3.5.3")) == "offered-version"
    assert rule_of(lambda: check_offered(None, "v1.29.0")) == "offered-version"
    assert rule_of(lambda: check_offered("3.4.23", "v1.31.0")) is None


def replica(name: str, version: str = "3.4.23", leader: bool = False, **kw) -> ReplicaState:
    base = dict(
        zone="z-a",
        vm_status="RUNNING",
        internal_ip="127.1.0." + name[-1],
        member_id=ord(name[-1]),
        started=True,
        etcd_ok=True,
        api_ready=True,
        leader=leader,
        etcd_version=version,
        kubernetes_version="v1.30.0",
    )
    return ReplicaState(name=name, **{**base, **kw})


def cluster(*replicas: ReplicaState, version: str | None = "3.4.0", **kw) -> ClusterState:
    return ClusterState(cluster="c", region="r", replicas=replicas, etcd_cluster_version=version, **kw)


THREE = (replica("c-1", leader=True), replica("c-2"), replica("c-3"))
KUBE = {"c-1": "v1.30.0", "c-2": "v1.30.0", "c-3": "v1.30.0"}

# a cluster -> the rule that refuses an upgrade to 3.5.1 / v1.30.0 (None: allowed)
STATE_TABLE = [
    ("whole", cluster(*THREE), None),
    (
        "unhealthy replica",
        cluster(replace(THREE[0], etcd_ok=False, problems=("etcd member unreachable",)), *THREE[1:]),
        "healthy-replicas",
    ),
    ("API server not ready", cluster(THREE[0], replace(THREE[1], api_ready=False), THREE[2]), "healthy-replicas"),
    ("pending learner", cluster(*THREE, replica("c-4", learner=True)), "no-pending-learner"),
    (
        "membership unknown",
        cluster(*THREE, membership_unknown=Unknown("etcd membership of c", "timeout")),
        "healthy-replicas",
    ),
    ("one replica", cluster(THREE[0]), "quorum-during-swap"),
    (
        "a member's version unread",
        cluster(THREE[0], replace(THREE[1], etcd_version=None), THREE[2]),
        "versions-unknown",
    ),
    ("cluster version unread", cluster(*THREE, version=None), "versions-unknown"),
]


@pytest.mark.parametrize(("state", "rule"), [(s, r) for _, s, r in STATE_TABLE], ids=[n for n, _, _ in STATE_TABLE])
def test_cluster_must_be_whole(state, rule):
    assert rule_of(lambda: decide_upgrade(state, "3.5.1", "v1.30.0", KUBE)) == rule


def test_followers_first_leader_last_and_the_cluster_version_expected():
    d = decide_upgrade(cluster(*THREE), "3.5.1", "v1.30.0", KUBE)
    assert not d.noop
    assert d.order == ("c-2", "c-3", "c-1")
    assert d.etcd_from == {"c-1": "3.4.23", "c-2": "3.4.23", "c-3": "3.4.23"}
    assert (d.cluster_version_before, d.cluster_version_after) == ("3.4.0", "3.5")


def test_a_mixed_cluster_replaces_only_what_is_not_at_the_target():
    state = cluster(THREE[0], replace(THREE[1], etcd_version="3.5.1"), THREE[2])
    assert decide_upgrade(state, "3.5.1", "v1.30.0", KUBE).order == ("c-3", "c-1")


def test_a_kubernetes_only_upgrade_replaces_every_replica():
    state = cluster(*(replace(r, etcd_version="3.5.1") for r in THREE), version="3.5.0")
    d = decide_upgrade(state, "3.5.1", "v1.31.0", KUBE)
    assert d.order == ("c-2", "c-3", "c-1") and d.cluster_version_after == "3.5"


def test_already_at_the_target_is_a_noop_that_says_so():
    state = cluster(*(replace(r, etcd_version="3.5.1") for r in THREE), version="3.5.0")
    d = decide_upgrade(state, "3.5.1", "v1.30.0", KUBE)
    assert d.noop and d.order == ()
    assert "already at the target" in d.reason


def test_too_far_is_refused_even_on_a_whole_cluster():
    assert (
        rule_of(lambda: decide_upgrade(cluster(*THREE), "3.5.1", "v1.31.0", {**KUBE, "c-2": "v1.29.0"}))
        == "kubernetes-one-minor"
    )


@pytest.mark.parametrize(
    "versions, settled",
    [
        ([("3.4.23", "3.0.0")] * 3, False),  # a new 3.4 cluster in its first seconds
        ([("3.5.1", "not_decided")] * 3, False),
        ([("3.4.23", "3.4.0")] * 3, True),
        ([("3.5.1", "3.5.0")] * 3, True),
        ([("3.5.1", "3.4.0"), ("3.4.23", "3.4.0"), ("3.4.23", "3.4.0")], True),  # mid-upgrade: the lowest
        ([("3.5.1", "3.4.0")] * 3, False),  # every member on 3.5: the leader has yet to move it
        ([("3.5.1", "3.5.0"), ("3.5.1", "3.4.0")], False),  # members disagree
        ([("", "")], False),
        ([], False),
    ],
)
def test_the_quorum_wait_waits_for_the_cluster_version_to_be_decided(versions, settled):
    from tasks.etcd import cluster_version_settled

    assert cluster_version_settled(versions) is settled
