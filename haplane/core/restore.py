"""Restoring a cluster that lost etcd quorum: the decision, from observed state alone. Pure.

A restore is destructive (it removes every replica left and starts a new etcd cluster from a
snapshot), so it needs quorum *seen* lost (:func:`quorum_view`):

- the voting members *as last known* are the cluster's VMs, the members each answering member's own
  member list names, and at least as many as voted when the newest snapshot was taken;
- a majority of them must be seen not serving: a member whose VM GCE shows gone (in a listing that
  sees the cluster's uid-stamped resources, so not a wrong project), or a member that answers and
  names no leader in *every* look, the looks spanning several election timeouts (an election looks
  the same in one look);
- anything less is unknown: a member that does not answer this worker may be on the majority's side
  of a partition, with quorum. The verdict names those members and what to check.

A restore resumes only its own change: its replica's name (:func:`restored_replica_name`) and its grown
replicas' names follow from its change id and from no other flow's, so another change's VMs are always
judged (never kept as "ours"). Before anything is deleted the plan saves a verified snapshot from the
surviving member with the highest revision, and it restores the newer of that one and the stored one
(unless a snapshot was named), saying which and what is lost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from haplane.core.gce_timings import GCE_SECONDS
from haplane.core.model import ClusterState
from haplane.core.plans import Plan, PlanRefused
from haplane.core.quorum import VALID_SIZES, quorum
from haplane.core.snapshot_meta import SnapshotMeta
from haplane.core.steps import PlanStep, Ref, StepKind, step
from haplane.core.topology import label_value, replica_name, restored_replica_name

# lost quorum must hold across looks spanning this many election timeouts: one look may fall in an election
ELECTIONS_SPANNED = 5
GROW_CHANGES = 6  # a restore grows back to at most 7 replicas: changes "<id>-grow-1" .. "<id>-grow-6"


class QuorumView(StrEnum):
    HOLDS = "holds"  # a member served a linearizable read
    LOST = "lost"  # seen lost: a majority of the voting members seen gone or without a leader, for long enough
    UNKNOWN = "unknown"  # anything less: nothing destructive may follow


@dataclass(frozen=True)
class Look:
    """One look at the etcd of every running replica VM (tasks.snapshots.look_at_etcd), by member name."""

    at_s: float  # when, in monotonic seconds
    answering: tuple[str, ...] = ()  # answered maintenance/status: alive, and our credentials accepted
    with_leader: tuple[str, ...] = ()  # ... and named a leader
    readable: tuple[str, ...] = ()  # served a linearizable read
    unreachable: tuple[str, ...] = ()  # "name: reason"
    revisions: tuple[tuple[str, int], ...] = ()  # (name, store revision) of each member that answered
    voters: tuple[str, ...] = ()  # voting members named by the answering members' own (local) member lists


@dataclass(frozen=True)
class QuorumEvidence:
    """What :func:`quorum_view` decides on."""

    vms: tuple[tuple[str, str], ...]  # (name, GCE status) of the cluster's own (uid-stamped) VMs judged
    footprint_seen: bool  # GCE shows resources stamped with the cluster's uid through this connection
    looks: tuple[Look, ...] = ()
    snapshot_voters: int = 0  # voting members when the newest snapshot was taken
    election_s: float = 1.0  # etcd's election timeout
    ignore: tuple[str, ...] = ()  # this restore's own replicas: never judged

    @property
    def voters(self) -> tuple[str, ...]:
        """The voting members as last known, by name (VMs that are not members count too: conservative)."""
        named = {n for n, _ in self.vms} | {v for look in self.looks for v in look.voters}
        return tuple(sorted(named - set(self.ignore)))


def leaderless(looks: tuple[Look, ...]) -> set[str]:
    """Members that answered in every look and never named a leader."""
    if not looks:
        return set()
    return set.intersection(*(set(look.answering) - set(look.with_leader) for look in looks))


def quorum_view(ev: QuorumEvidence) -> tuple[QuorumView, str]:
    """HOLDS when a member served a read; LOST only when seen (see the module doc); else UNKNOWN, naming
    the members that could not be seen and what to check."""
    held = sorted({n for look in ev.looks for n in look.readable} - set(ev.ignore))
    if held:
        return QuorumView.HOLDS, f"{', '.join(held)} served a linearizable read"
    if not ev.footprint_seen:
        return QuorumView.UNKNOWN, (
            "GCE shows nothing stamped with the cluster's uid through this connection (no "
            "VM, address or firewall rule): the connection may point at another project; "
            "nothing of the cluster is taken for lost on that view"
        )
    status = {n: s for n, s in ev.vms if n not in ev.ignore}
    if not status:
        return QuorumView.LOST, "the cluster has no replica VM left (its uid-stamped resources are seen)"
    known, n, need, gone, silent = _count(ev)
    dead = set(gone) | set(silent)
    span = ev.looks[-1].at_s - ev.looks[0].at_s if ev.looks else 0.0
    seen = ", ".join([f"{g} (VM gone)" for g in gone] + [f"{s} (no leader)" for s in silent]) or "none"
    if len(dead) >= need and span >= ELECTIONS_SPANNED * ev.election_s:
        return QuorumView.LOST, (
            f"{len(dead)} of {n} voting member(s) are seen gone or without a leader across "
            f"{len(ev.looks)} looks over {span:.1f} s: {seen}; quorum needs {need}"
        )
    if len(dead) >= need:
        return QuorumView.UNKNOWN, (
            f"{seen} seen without a leader for only {span:.1f} s, under {ELECTIONS_SPANNED} election timeouts "
            f"({ev.election_s:g} s each): an election looks the same; look again"
        )
    reasons: dict[str, str] = {}
    for look in ev.looks:
        for u in look.unreachable:
            name, _, why = u.partition(": ")
            reasons[name] = why
    unseen = []
    for name in sorted(known - dead):
        vm = status.get(name)
        if vm is not None and vm != "RUNNING":
            unseen.append(f"{name} (VM {vm}: start it, its data may bring quorum back)")
        elif name in reasons:
            unseen.append(f"{name} (unreachable: {reasons[name]})")
        elif any(name in look.with_leader for look in ev.looks):
            unseen.append(f"{name} (names a leader)")
        else:
            unseen.append(f"{name} (not seen without a leader in every look)")
    if n > len(known):
        unseen.append(f"{n - len(known)} more member(s) the newest snapshot counts, not seen by name")
    return QuorumView.UNKNOWN, (
        f"only {len(dead)} of {n} voting member(s) are seen gone or without a leader ({seen}); lost quorum needs "
        f"{need}. Not seen: {'; '.join(unseen)}. A member that does not answer this worker may be on the "
        f"majority's side of a partition, with quorum: check that this worker reaches port 2379 of those VMs "
        f"(the etcd-client firewall rule, the worker's network) and that they run, then look again"
    )


def _count(ev: QuorumEvidence) -> tuple[set[str], int, int, list[str], list[str]]:
    """(voters as last known, how many, the majority of them, those whose VM is gone, those without a leader
    in every look)."""
    status = {n for n, _ in ev.vms if n not in ev.ignore}
    known = set(ev.voters)
    n = max(len(known), ev.snapshot_voters)
    return known, n, quorum(n), sorted(v for v in known if v not in status), sorted(leaderless(ev.looks) & known)


def settled(ev: QuorumEvidence) -> bool:
    """More looks cannot make the view LOST: a member served a read, or fewer than a majority are seen gone
    or without a leader so far (a member must be so in every look). Lets a probe stop looking early."""
    if any(set(look.readable) - set(ev.ignore) for look in ev.looks):
        return True
    _, _, need, gone, silent = _count(ev)
    return bool(ev.looks) and bool(ev.vms) and len(set(gone) | set(silent)) < need


def best_survivor(looks: tuple[Look, ...], ignore: tuple[str, ...] = ()) -> tuple[str, int] | None:
    """The member that answered last with the highest store revision (its data is the newest left)."""
    for look in reversed(looks):
        revs = [(rev, name) for name, rev in look.revisions if name not in ignore]
        if revs:
            rev, name = max(revs)
            return name, rev
    return None


def own_replicas(cluster: str, change_id: str) -> tuple[str, ...]:
    """The replica names a restore change makes: the restored one, then one per grow change."""
    return (restored_replica_name(cluster, change_id),) + tuple(
        replica_name(cluster, f"{change_id}-grow-{i}", 0) for i in range(1, GROW_CHANGES + 1)
    )


@dataclass(frozen=True)
class Survivor:
    """The surviving member a snapshot is saved from before anything is deleted."""

    name: str
    ip: str
    revision: int


@dataclass(frozen=True)
class RestorePlan:
    cluster: str
    snapshot_id: str  # the stored snapshot checked restorable
    snapshot_revision: int
    snapshot_time: str
    last_revision_seen: int | None  # None: no member answers (unknown)
    lost_seconds: float  # since the stored snapshot was taken
    remove: tuple[tuple[str, str], ...]  # (name, zone) of the replicas left, all removed first
    replica: str  # the replica restored from the snapshot
    zone: str
    grow_to: int  # then grown back to this size through add-replica's path
    token: str  # the new cluster's initial-cluster-token
    keep_load_balancer: bool
    plan: Plan  # the typed steps, run by the one executor
    survivor: Survivor | None = None  # a snapshot is saved from it first
    from_survivor: bool = False  # restore that snapshot (newer than the stored one), not the stored one
    resuming: bool = False
    why: str = ""  # the quorum verdict

    @property
    def lost_revisions(self) -> int | None:
        if self.last_revision_seen is None:
            return None
        restored = self.survivor.revision if self.from_survivor and self.survivor else self.snapshot_revision
        return max(0, self.last_revision_seen - restored)

    def loss(self) -> str:
        if self.from_survivor and self.survivor:
            return (
                f"restoring the snapshot saved first from surviving member {self.survivor.name} (revision "
                f"{self.survivor.revision}, the highest a member reports; newer than stored snapshot "
                f"{self.snapshot_id} at revision {self.snapshot_revision}): {self.lost_revisions} revision(s) "
                f"lost (last seen {self.last_revision_seen}); writes only the unseen members held are lost"
            )
        revs = (
            "an unknown number of revisions (no member answers)"
            if self.lost_revisions is None
            else f"{self.lost_revisions} revision(s) (last seen {self.last_revision_seen})"
        )
        kept = (
            f"; the snapshot saved first from {self.survivor.name} (revision {self.survivor.revision}) keeps "
            f"them in the snapshot storage"
            if self.survivor
            else ""
        )
        return (
            f"restoring snapshot {self.snapshot_id} (revision {self.snapshot_revision}, taken "
            f"{self.snapshot_time}) loses every write after it: {revs}, up to {self.lost_seconds:.0f} s of "
            f"writes{kept}"
        )

    def markdown(self) -> str:
        lines = [
            f"## Plan: restore-cluster on `{self.cluster}`",
            "",
            f"**Quorum:** {self.why or 'resuming'}.",
            "",
            f"**Data loss:** {self.loss()}.",
            "",
        ]
        lines += [f"{i}. {s.text} (`{s.id}`)" for i, s in enumerate(self.plan.steps, 1)]
        lines += ["", "The cluster CA, the etcd CA and the endpoint IP are kept: clients keep working."]
        return "\n".join(lines)


def grow_change(change_id: str, i: int) -> str:
    """The change id of a restore's i-th replica grown back (its checkpoints; the new VM's label)."""
    return f"{change_id}-grow-{i}"


def grow_size(state: ClusterState, snapshot: SnapshotMeta, size: int | None) -> int:
    """The size to grow back to: as asked, else the voting members when the snapshot was taken, else the
    replicas seen; an even count goes up to the next odd one."""
    n = size or snapshot.members or len(state.replicas) or 1
    if n not in VALID_SIZES:
        n = min((v for v in VALID_SIZES if v >= n), default=max(VALID_SIZES))
    return n


def plan_restore(
    state: ClusterState,
    view: tuple[QuorumView, str],
    snapshot: SnapshotMeta,
    last_revision_seen: int | None,
    now: dt.datetime,
    change_id: str,
    zones: list[str],
    size: int | None = None,
    survivor: Survivor | None = None,
    named: bool = False,
    gone_members: tuple[str, ...] = (),
    pool_links: tuple[str, ...] = (),
) -> RestorePlan:
    """Refuses unless quorum is seen lost among every VM that is not this restore's own (a resumed run,
    whose restored replica exists, is judged on the others alike). ``named``: the snapshot was asked for
    by id (it is restored even when the survivor's is newer). ``gone_members``: members whose VM is
    gone; their private keys are deleted too. ``pool_links``: the target pool's instance links (those of
    VMs gone are taken out too)."""
    ours = own_replicas(state.cluster, change_id)
    name = ours[0]
    verdict, why = view
    if verdict is QuorumView.HOLDS:
        raise PlanRefused(
            f"cluster {state.cluster!r} still has etcd quorum ({why}): nothing needs restoring and nothing "
            f"was changed; replace failed replicas with replace-replica (or let the health check do it)"
        )
    if verdict is QuorumView.UNKNOWN:
        raise PlanRefused(
            f"cannot tell whether {state.cluster!r} lost etcd quorum: {why}. A restore removes "
            f"every replica, so it needs quorum seen lost; nothing was changed"
        )
    if snapshot.cluster != state.cluster:
        raise PlanRefused(f"snapshot {snapshot.snapshot_id} is of cluster {snapshot.cluster!r}, not {state.cluster!r}")
    if not zones:
        raise PlanRefused(f"cluster {state.cluster!r} has no zones to restore into")
    mine = next((r for r in state.vms if r.name == name), None)
    remove = tuple((r.name, r.zone) for r in state.vms if r.name not in ours)
    from_survivor = survivor is not None and not named and survivor.revision > snapshot.revision
    keep_lb = state.target_pool
    zone = mine.zone if mine else zones[0]
    token = label_value(f"{state.cluster}-{change_id}")[:48]
    steps: list[PlanStep] = []
    if survivor is not None:
        steps.append(
            step(
                StepKind.SAVE_SNAPSHOT,
                "snapshot-survivor",
                f"save a verified snapshot of {survivor.name}'s "
                f"etcd data (revision {survivor.revision}, served from its own store without quorum) "
                f"before anything is deleted",
                name=survivor.name,
                ip=survivor.ip,
            )
        )
    steps += [
        step(
            StepKind.POOL_REMOVE,
            f"pool-remove/{n}",
            f"take {n} out of the target pool",
            "pool",
            region=state.region,
            zone=z,
            name=n,
        )
        for n, z in remove
        if n in state.pool_members
    ]
    vm_names = {r.name for r in state.vms}
    steps += [
        step(
            StepKind.POOL_REMOVE,
            f"pool-remove/{link.rsplit('/', 1)[-1]}",
            f"take {link.rsplit('/', 1)[-1]} (its VM is gone) out of the target pool",
            "pool",
            region=state.region,
            link=link,
        )
        for link in pool_links
        if link.rsplit("/", 1)[-1] not in vm_names | set(ours)
    ]
    steps += [
        step(
            StepKind.DELETE_VM,
            f"delete-vm/{n}",
            f"delete replica {n} ({z}): its etcd data belongs to the lost cluster",
            "vms",
            zone=z,
            name=n,
        )
        for n, z in remove
    ]
    steps += [
        step(StepKind.DELETE_KEYS, f"delete-keys/{n}", f"delete the private keys of {n}, whose VM is deleted", name=n)
        for n, _ in remove
    ]
    steps += [
        step(StepKind.DELETE_KEYS, f"delete-keys/{n}", f"delete the private keys of {n}, whose VM is gone", name=n)
        for n in gone_members
        if n not in ours and n not in {r for r, _ in remove}
    ]
    vm = f"vm/{name}"
    ip = Ref(vm, "internal_ip")
    if from_survivor:
        source = (
            Ref("snapshot-survivor", "where"),
            Ref("snapshot-survivor", "snapshot_id"),
            Ref("snapshot-survivor", "sha256"),
        )
        what = f"the snapshot saved from {survivor.name}"  # type: ignore[union-attr]
    else:
        source = (snapshot.where, snapshot.snapshot_id, snapshot.sha256)
        what = f"stored snapshot {snapshot.snapshot_id}"
    steps += [
        step(
            StepKind.CREATE_VM,
            vm,
            f"insert VM {name} in {zone}" + ("" if keep_lb else " with the endpoint IP"),
            zone=zone,
            name=name,
            nat_ip=None if keep_lb else state.endpoint_ip,
        ),
        step(
            StepKind.CONFIGURE,
            f"configure/{name}",
            f"issue {name}'s certificates; its etcd restores {what} at "
            f"boot as a new one-member cluster (token {token}, new member id)",
            zone=zone,
            name=name,
            endpoint_ip=state.endpoint_ip,
            initial_cluster=((name, ip),),
            cluster_state="new",
            token=token,
            restore=source,
        ),
        step(
            StepKind.WAIT_QUORUM,
            f"quorum/{name}",
            "wait for etcd quorum: 1 voting member answering a linearizable read",
            ips=(ip,),
            voting=1,
        ),
    ]
    if keep_lb:
        steps.append(
            step(
                StepKind.POOL_ADD,
                f"pool-add/{name}",
                f"add {name} to the target pool (the endpoint IP is kept)",
                region=state.region,
                zone=zone,
                name=name,
            )
        )
    grow_to = grow_size(state, snapshot, size)
    for i in range(1, grow_to):  # each a change of its own, planned on the cluster as it is when its turn comes
        steps.append(
            step(
                StepKind.GROW,
                f"grow/{i}",
                f"add-replica: grow to {i + 1} replicas (learner first, as always; change {grow_change(change_id, i)})",
                change=grow_change(change_id, i),
                grow_to=grow_to,
            )
        )
    seconds = GCE_SECONDS["instance_delete"] + GCE_SECONDS["instance_insert"] + GCE_SECONDS["instance_update"] + 30
    seconds += (grow_to - 1) * (GCE_SECONDS["instance_insert"] + GCE_SECONDS["instance_update"] + 30)
    plan = Plan(
        action="restore-cluster",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=0,
        voting_after=grow_to,
        expected_seconds=seconds,
        reason=why,
        replica=name,
        zone=zone,
        new_replicas=((name, zone),),
    )
    return RestorePlan(
        cluster=state.cluster,
        snapshot_id=snapshot.snapshot_id,
        snapshot_revision=snapshot.revision,
        snapshot_time=snapshot.taken_at,
        last_revision_seen=last_revision_seen,
        lost_seconds=max(0.0, snapshot.age_s(now)),
        remove=remove,
        replica=name,
        zone=zone,
        grow_to=grow_to,
        token=token,
        keep_load_balancer=keep_lb,
        plan=plan,
        survivor=survivor,
        from_survivor=from_survivor,
        resuming=mine is not None,
        why=why,
    )
