"""Restoring a cluster that lost etcd quorum: the decision, from observed state alone. Pure.

A restore is destructive (it removes every replica left and starts a new etcd cluster from a
snapshot), so it needs quorum *seen* lost (:func:`quorum_view`): it is refused while any member
answers a linearizable read (then membership changes repair the cluster), and when nothing answers
this worker at all (that may be a network or credentials problem, not a dead cluster). It says what will
be lost: everything written after the snapshot (its revision against the last revision a surviving
member reported, and the time since it was taken).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from haplane.model import ClusterState
from haplane.plans import PlanRefused
from haplane.quorum import VALID_SIZES
from haplane.topology import label_value, replica_name

if TYPE_CHECKING:  # a pure module: the snapshot's metadata is only read here
    from haplane.snapshots import SnapshotMeta


class QuorumView(StrEnum):
    HOLDS = "holds"  # a member serves a linearizable read
    LOST = "lost"  # seen lost: members answer but none has a leader, or no replica VM runs at all
    UNKNOWN = "unknown"  # nothing answered this worker: lost quorum cannot be told from a network or
    #                      credentials problem, so nothing destructive may follow


@dataclass(frozen=True)
class EtcdProbe:
    """What the operator saw when it asked each running replica's etcd (see tasks.snapshots.probe_quorum)."""

    running_vms: int
    answering: tuple[str, ...] = ()  # answered maintenance/status: alive, and our credentials accepted
    with_leader: tuple[str, ...] = ()  # ... and named a leader
    readable: tuple[str, ...] = ()  # served a linearizable read
    unreachable: tuple[str, ...] = ()  # "endpoint: reason"
    vms: int | None = None  # replica VMs in any state (None: as many as run)


def quorum_view(p: EtcdProbe) -> tuple[QuorumView, str]:
    """Lost quorum is a fact only when seen: a member answers and has no leader, or no VM runs."""
    if p.readable:
        return QuorumView.HOLDS, f"{len(p.readable)} member(s) serve linearizable reads"
    if p.running_vms == 0:
        if p.vms:  # stopped VMs keep their data: starting them may bring quorum back
            return QuorumView.UNKNOWN, f"{p.vms} replica VM(s) exist but none runs: start them first"
        return QuorumView.LOST, "the cluster has no replica VM left"
    if p.answering and not p.with_leader:
        return QuorumView.LOST, (f"{len(p.answering)} of {p.running_vms} running member(s) answer but none has a "
                                 f"leader or serves a read; the others: {'; '.join(p.unreachable) or 'none'}")
    if p.with_leader:
        return QuorumView.UNKNOWN, "members name a leader but serve no read (an election?): look again shortly"
    return QuorumView.UNKNOWN, ("no etcd member answered this worker (" + "; ".join(p.unreachable) + "): that is "
                                "not proof of lost quorum; check the network and the operator's certificate")


@dataclass(frozen=True)
class RestorePlan:
    cluster: str
    snapshot_id: str
    snapshot_revision: int
    snapshot_time: str
    last_revision_seen: int | None  # None: no member answers (unknown)
    lost_seconds: float  # since the snapshot was taken: writes in that window are lost
    remove: tuple[tuple[str, str], ...]  # (name, zone) of the replicas left, all removed first
    replica: str  # the replica restored from the snapshot
    zone: str
    grow_to: int  # then grown back to this size through add-replica's path
    token: str  # the new cluster's initial-cluster-token
    keep_load_balancer: bool
    resuming: bool = False

    @property
    def lost_revisions(self) -> int | None:
        if self.last_revision_seen is None:
            return None
        return max(0, self.last_revision_seen - self.snapshot_revision)

    def loss(self) -> str:
        revs = ("an unknown number of revisions (no member answers)" if self.lost_revisions is None
                else f"{self.lost_revisions} revision(s) (last seen {self.last_revision_seen})")
        return (f"restoring snapshot {self.snapshot_id} (revision {self.snapshot_revision}, taken "
                f"{self.snapshot_time}) loses every write after it: {revs}, up to {self.lost_seconds:.0f} s of writes")

    def markdown(self) -> str:
        lines = [f"## Plan: restore-cluster on `{self.cluster}`", "", f"**Data loss:** {self.loss()}.", ""]
        steps = [f"delete replica {n} ({z}): its etcd data belongs to the lost cluster" for n, z in self.remove]
        steps.append(f"create {self.replica} in {self.zone}; its etcd restores the snapshot at boot as a new "
                     f"one-member cluster (token {self.token}, new member id)")
        if self.keep_load_balancer:
            steps.append(f"add {self.replica} to the load balancer's target pool (the endpoint IP is kept)")
        else:
            steps.append(f"{self.replica} carries the endpoint IP")
        steps += [f"add-replica: grow to {self.grow_to} replicas (learner first, as always)"] if self.grow_to > 1 else []
        lines += [f"{i}. {s}" for i, s in enumerate(steps, 1)]
        lines += ["", "The cluster CA, the etcd CA and the endpoint IP are kept: clients keep working."]
        return "\n".join(lines)


def grow_size(state: ClusterState, snapshot: SnapshotMeta, size: int | None) -> int:
    """The size to grow back to: as asked, else the voting members when the snapshot was taken, else the
    replicas seen; an even count goes up to the next odd one."""
    n = size or snapshot.members or len(state.replicas) or 1
    if n not in VALID_SIZES:
        n = min((v for v in VALID_SIZES if v >= n), default=max(VALID_SIZES))
    return n


def plan_restore(state: ClusterState, view: tuple[QuorumView, str], snapshot: SnapshotMeta,
                 last_revision_seen: int | None, now: dt.datetime, change_id: str, zones: list[str],
                 size: int | None = None) -> RestorePlan:
    """Refuses unless quorum is seen lost (a resumed run, whose restored replica exists, goes on)."""
    name = replica_name(state.cluster, change_id, 0)
    ours = label_value(change_id)  # the restored replica and those grown after it carry this change's label
    resuming = any(r.name == name or (r.change or "").startswith(ours) for r in state.vms)
    if not resuming:
        verdict, why = view
        if verdict is QuorumView.HOLDS:
            raise PlanRefused(
                f"cluster {state.cluster!r} still has etcd quorum ({why}): nothing needs restoring and nothing "
                f"was changed; replace failed replicas with replace-replica (or let the health check do it)")
        if verdict is QuorumView.UNKNOWN:
            raise PlanRefused(f"cannot tell whether {state.cluster!r} lost etcd quorum: {why}. A restore removes "
                              f"every replica, so it needs quorum seen lost; nothing was changed")
    if snapshot.cluster != state.cluster:
        raise PlanRefused(f"snapshot {snapshot.snapshot_id} is of cluster {snapshot.cluster!r}, not {state.cluster!r}")
    if not zones:
        raise PlanRefused(f"cluster {state.cluster!r} has no zones to restore into")
    mine = next((r for r in state.vms if r.name == name), None)
    remove = tuple((r.name, r.zone) for r in state.vms if r.name != name and not (r.change or "").startswith(ours))
    return RestorePlan(
        cluster=state.cluster, snapshot_id=snapshot.snapshot_id, snapshot_revision=snapshot.revision,
        snapshot_time=snapshot.taken_at, last_revision_seen=last_revision_seen,
        lost_seconds=max(0.0, snapshot.age_s(now)), remove=remove, replica=name,
        zone=mine.zone if mine else zones[0], grow_to=grow_size(state, snapshot, size),
        token=label_value(f"{state.cluster}-{change_id}")[:48], keep_load_balancer=state.target_pool,
        resuming=resuming)
