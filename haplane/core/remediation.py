"""What the scheduled health check does about a cluster: replace which replica, or why not. Pure.

Input: the observed :class:`~haplane.core.model.ClusterState`, whether a mutating
flow holds the cluster's lock right now, and the recent remediation attempts
(replace-replica runs the health check started, with their outcome). Output: a
:class:`Verdict`. The shape is Cluster API's control-plane remediation:

- **Find.** A replica is failed when its VM is gone or not RUNNING, it never
  joined etcd, it is a learner that never caught up, its etcd member is
  unreachable or unhealthy, or its API server is not ready. Learners and
  non-members are only failures while no change holds the lock (an add in
  progress looks exactly like that).
- **One at a time.** Nothing is done while a change holds the cluster's lock or
  while an earlier replacement is still running; at most one replica is chosen.
- **Never lose quorum.** The choice must pass :func:`haplane.core.quorum.can_replace`
  on the members' health (:func:`haplane.core.plans.member_health`).
- **Back off.** After the n-th failed replacement of the same replica in a row
  the next try waits ``base * 2**(n-1)`` (capped); after ``max_failures`` in a
  row the replica is given up on (a person must act) until those failures age
  out of the history window.
- **Finish what was started.** A replacement that removed its replica and then
  failed to add the new one leaves the cluster a replica short, with nothing
  unhealthy left to find: its change is run again (same change id, so it
  resumes at the add), under the same back-off.
- **Never act on unknown.** When the etcd membership, a member's health or an
  API server's readiness could not be observed, nothing is replaced: the
  verdict is ``unknown``, naming what could not be seen and what to check
  (a worker cut off from etcd must not read as "every replica failed").
- **Explain.** Every verdict carries a sentence per replica saying why it was,
  or was not, acted on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from haplane.core.model import MISSING, ZONE_OUT, ClusterState, ReplicaState, Unknown
from haplane.core.plans import member_health
from haplane.core.quorum import MemberHealth, Reason, can_replace


class Problem(StrEnum):
    VM_GONE = "VM gone"
    VM_STOPPED = "VM not running"
    NOT_A_MEMBER = "never joined etcd"
    LEARNER_STUCK = "etcd learner never caught up"
    ETCD_UNHEALTHY = "etcd member unhealthy or unreachable"
    API_NOT_READY = "API server not ready"
    COMPONENT_DOWN = "controller-manager or scheduler not running"


SEVERITY = list(Problem)  # most severe first: a dead VM before a slow API server


class Action(StrEnum):
    NOTHING = "nothing"  # healthy, or a change in progress: nothing to do now
    REPLACE = "replace"
    RESUME = "resume"  # finish a replacement that removed its replica but failed to add the new one
    WAIT = "wait"  # failures it will act on later (back-off, one at a time)
    CANNOT = "cannot-remediate"  # failures it will not act on without a person
    UNKNOWN = "unknown"  # part of the cluster could not be observed: nothing is done, a person must look


class Outcome(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class Attempt:
    """One replacement the health check started (a replace-replica run)."""

    replica: str
    started: dt.datetime
    outcome: Outcome
    run: str = ""  # flow run name or id, for the explanation
    change_id: str = ""  # the run's change id: running replace-replica again with it resumes that run


@dataclass(frozen=True)
class Policy:
    max_failures: int = 3
    backoff_base_s: float = 300.0
    backoff_max_s: float = 3600.0
    window_s: float = 24 * 3600.0  # attempts older than this are forgotten

    def backoff_s(self, failures: int) -> float:
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, failures - 1))


@dataclass(frozen=True)
class Finding:
    replica: str
    zone: str
    problem: Problem
    detail: str

    @property
    def text(self) -> str:
        return f"{self.replica} ({self.zone}): {self.problem.value}" + (f" — {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Verdict:
    cluster: str
    action: Action
    reason: str
    replica: str | None = None
    change_id: str | None = None  # with RESUME: the change to run again
    findings: tuple[Finding, ...] = ()
    notes: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (replica, why not acted on)
    unknowns: tuple[Unknown, ...] = ()  # what could not be observed
    leaders: tuple[str, ...] = ()  # who leads each component (LeaderLease.text), for the report

    @property
    def unremediable(self) -> tuple[tuple[str, str], ...]:
        """Failed replicas it will not replace without a person (given up on, or quorum forbids it)."""
        return tuple((r, why) for r, why in self.notes if not why.startswith(BACKING_OFF))

    def markdown(self) -> str:
        lines = [f"## Health check of `{self.cluster}`: {self.action.value}", "", self.reason, ""]
        if self.findings:
            lines += ["| replica | zone | problem | detail |", "| --- | --- | --- | --- |"]
            lines += [f"| {f.replica} | {f.zone} | {f.problem.value} | {f.detail or '-'} |" for f in self.findings]
            lines.append("")
        if self.unknowns:
            lines += ["Could not be observed:", ""] + [f"- {u.text}" for u in self.unknowns]
            lines.append("")
        if self.notes:
            lines += ["Not acted on:", ""] + [f"- **{r}**: {why}" for r, why in self.notes]
            lines.append("")
        if self.leaders:
            lines += ["Leader election:", ""] + [f"- {line}" for line in self.leaders]
        return "\n".join(lines).rstrip() + "\n"


GIVEN_UP = "given up"
BACKING_OFF = "backing off"


def find_problems(state: ClusterState, busy: bool = False) -> list[Finding]:
    """Failed replicas, most severe problem each, most severe first (then by name)."""
    out = []
    for r in state.replicas:
        problem = _problem(r, busy)
        if problem is not None:
            out.append(Finding(r.name, r.zone, problem, "; ".join(r.problems)))
    return sorted(out, key=lambda f: (SEVERITY.index(f.problem), f.replica))


def _problem(r: ReplicaState, busy: bool) -> Problem | None:
    if r.vm_status == MISSING:
        return Problem.VM_GONE
    if r.vm_status == ZONE_OUT:  # its zone does not answer: unknown, never "not running"
        return None
    if r.vm_status != "RUNNING":
        return Problem.VM_STOPPED
    if r.etcd_unknown is not None:  # unknown is not unhealthy (nor "never joined")
        return None if r.api_unknown is not None or r.api_ready else Problem.API_NOT_READY
    if r.member_id is None:
        return None if busy else Problem.NOT_A_MEMBER
    if r.learner:
        return None if busy else Problem.LEARNER_STUCK
    if not r.etcd_ok:
        return Problem.ETCD_UNHEALTHY
    if not r.api_ready and r.api_unknown is None:
        return Problem.API_NOT_READY
    if r.components_down:
        return Problem.COMPONENT_DOWN
    return None


def failures_in_a_row(attempts: Iterable[Attempt], replica: str) -> list[Attempt]:
    """The replica's failed attempts since its last success (newest last)."""
    run: list[Attempt] = []
    for a in sorted((a for a in attempts if a.replica == replica), key=lambda a: a.started):
        if a.outcome is Outcome.COMPLETED:
            run = []
        elif a.outcome is Outcome.FAILED:
            run.append(a)
    return run


def unfinished_replacement(state: ClusterState, attempts: Iterable[Attempt]) -> Attempt | None:
    """The newest failed replacement whose replica is already gone from the cluster, if any."""
    present = {r.name for r in state.replicas}
    for replica in sorted({a.replica for a in attempts} - present):
        failed = failures_in_a_row(attempts, replica)
        if failed and failed[-1].change_id:
            return failed[-1]
    return None


def _quorum_check(state: ClusterState, replica: ReplicaState) -> str | None:
    """None when replacing ``replica`` keeps quorum at every step; the refusal otherwise."""
    if replica.member_id is None or replica.learner:
        return None  # not a voter: removing it cannot cost quorum
    health: list[MemberHealth] = member_health(state)
    # an unhealthy API server over a healthy etcd member: that member is the one being replaced
    health = [
        MemberHealth(m.id, m.name, m.voting, m.reasons or (Reason.UNREACHABLE,)) if m.id == replica.member_id else m
        for m in health
    ]
    decision = can_replace(health, [replica.member_id])
    return None if decision.allowed else decision.reason


def decide(
    state: ClusterState, attempts: Sequence[Attempt], now: dt.datetime, *, busy: bool = False, policy: Policy = Policy()
) -> Verdict:
    """The health check's decision for one cluster; see the module docstring for the rules."""
    cluster = state.cluster
    recent = [a for a in attempts if (now - a.started).total_seconds() <= policy.window_s]
    if not state.replicas:
        return Verdict(cluster, Action.NOTHING, f"cluster {cluster!r} has no replicas: nothing to check")
    findings = tuple(find_problems(state, busy))
    running = [a for a in recent if a.outcome is Outcome.RUNNING]
    if busy:
        return Verdict(
            cluster,
            Action.NOTHING if not findings else Action.WAIT,
            f"a change is in progress on {cluster!r} (its lock cluster-{cluster} is held): "
            f"one change at a time, nothing is done now",
            findings=findings,
        )
    unknowns = state.unknowns
    if unknowns:
        return Verdict(
            cluster,
            Action.UNKNOWN,
            f"part of {cluster!r} could not be observed, so no replica is judged failed or replaced: "
            + "; ".join(u.text for u in unknowns),
            findings=findings,
            unknowns=unknowns,
        )
    if running:
        return Verdict(
            cluster,
            Action.WAIT,
            f"the replacement of {running[0].replica} ({running[0].run}) is still running: one replacement at a time",
            findings=findings,
        )
    notes: list[tuple[str, str]] = []
    waiting = False
    pending = unfinished_replacement(state, recent)
    if pending is not None:
        failed = failures_in_a_row(recent, pending.replica)
        ready_at = failed[-1].started + dt.timedelta(seconds=policy.backoff_s(len(failed)))
        if len(failed) >= policy.max_failures:
            notes.append(
                (
                    pending.replica,
                    f"{GIVEN_UP} after {len(failed)} failed replacements in a row; its "
                    f"replacement was never added (run replace-replica with "
                    f"change_id={pending.change_id!r}, or add-replica, by hand)",
                )
            )
        elif now < ready_at:
            notes.append(
                (
                    pending.replica,
                    f"{BACKING_OFF}: its replacement ({pending.run}) removed it but failed "
                    f"to add the new replica; trying again after "
                    f"{ready_at.isoformat(timespec='seconds')}",
                )
            )
            waiting = True
        else:
            return Verdict(
                cluster,
                Action.RESUME,
                f"finish replacing {pending.replica}: run {pending.run} removed it but failed before "
                f"its replacement was added; running change {pending.change_id} again",
                replica=pending.replica,
                change_id=pending.change_id,
                findings=findings,
            )
    if not findings and not notes:
        return Verdict(cluster, Action.NOTHING, f"all {len(state.replicas)} replica(s) of {cluster!r} are healthy")

    for f in findings:
        replica = state.replica(f.replica)
        failed = failures_in_a_row(recent, f.replica)
        if len(failed) >= policy.max_failures:
            notes.append(
                (
                    f.replica,
                    f"{GIVEN_UP} after {len(failed)} failed replacements in a row "
                    f"(last: {failed[-1].run or failed[-1].started.isoformat()}); a person must "
                    f"look at it (run replace-replica or remove-replica by hand)",
                )
            )
            continue
        if failed:
            wait = policy.backoff_s(len(failed))
            ready_at = failed[-1].started + dt.timedelta(seconds=wait)
            if now < ready_at:
                left = (ready_at - now).total_seconds()
                notes.append(
                    (
                        f.replica,
                        f"{BACKING_OFF}: {len(failed)} failed replacement(s) in a row; next try "
                        f"in {left:.0f} s (after {ready_at.isoformat(timespec='seconds')})",
                    )
                )
                waiting = True
                continue
        refusal = _quorum_check(state, replica)
        if refusal is not None:
            notes.append((f.replica, f"replacing it would lose quorum: {refusal}"))
            continue
        others = [n for n in findings if n.replica != f.replica]
        reason = f"replace {f.text}"
        if failed:
            reason += f" (try {len(failed) + 1}; {len(failed)} failed before)"
        if others:
            reason += "; one replacement at a time: " + ", ".join(o.replica for o in others) + " next"
        return Verdict(cluster, Action.REPLACE, reason, replica=f.replica, findings=findings, notes=tuple(notes))
    action = Action.WAIT if waiting else Action.CANNOT
    summary = (
        "no failed replica can be replaced now" if waiting else "no failed replica can be replaced without a person"
    )
    return Verdict(
        cluster,
        action,
        f"{summary}: " + "; ".join(f"{r}: {why}" for r, why in notes),
        findings=findings,
        notes=tuple(notes),
    )


# --- zone outage ------------------------------------------------------------------------------------
#
# A zone whose API does not answer hides its VMs: unknown is not absent, so nothing there is deleted
# while it is out. Once it has been out longer than a grace period, its replicas are moved to the
# other zones of the region, one per check and only when quorum allows: the etcd member is removed
# first (a removed member is refused by its peers if its VM ever restarts etcd: it cannot come back
# as a voter), the VM is recorded as stranded, then a new replica is added in the least used zone
# that answers. When the zone answers again, the next check deletes the stranded VMs. With quorum
# lost nothing is done: etcd cannot remove a member then, and a person must act.


@dataclass(frozen=True)
class StrandedVm:
    """A VM left in a dead zone after its etcd member was removed: delete it when its zone answers."""

    name: str
    zone: str
    since: str  # ISO time its member was removed
    replacement: str = ""  # the replica added for it ("" until added)
    deleted: bool = False  # its VM was deleted once the zone answered

    @property
    def done(self) -> bool:
        return self.deleted and bool(self.replacement)


class ZoneAction(StrEnum):
    NOTHING = "nothing"  # no zone out, nothing stranded, placement as asked
    WAIT = "wait"  # a zone is out, but not for longer than the grace period (or a change holds the lock)
    MOVE = "move"  # remove a dead zone's member, add its replacement in another zone
    ADD = "add"  # add the replacement of a stranded VM whose add had to wait (other dead voters first)
    DELETE_STALE = "delete-stale"  # delete stranded VMs whose zone answers again
    REBALANCE = "rebalance"  # move one replica back to an empty zone of the cluster's zones
    CANNOT = "cannot-remediate"  # quorum lost, or no zone left to move to: a person must act
    UNKNOWN = "unknown"  # members unseen in several zones that do not answer: nothing is done, a person must look


@dataclass(frozen=True)
class ZoneVerdict:
    cluster: str
    action: ZoneAction
    reason: str
    replica: str | None = None
    from_zone: str | None = None
    to_zone: str | None = None
    stale: tuple[StrandedVm, ...] = ()
    add_now: bool = True  # MOVE: add the replacement right after the removal (no other dead voter left)
    unknowns: tuple[Unknown, ...] = ()  # UNKNOWN: what could not be observed

    def markdown(self) -> str:
        lines = [f"## Zone check of `{self.cluster}`: {self.action.value}", "", self.reason]
        if self.unknowns:
            lines += ["", "Could not be observed:", ""] + [f"- {u.text}" for u in self.unknowns]
        if self.stale:
            lines += ["", "| stranded VM | zone | member removed at |", "| --- | --- | --- |"]
            lines += [f"| {s.name} | {s.zone} | {s.since} |" for s in self.stale]
        return "\n".join(lines) + "\n"


def track_outages(recorded: dict[str, str], unavailable: Iterable[str], now: dt.datetime) -> dict[str, str]:
    """When each unavailable zone was first seen out (ISO time); zones that answer again are dropped."""
    return {z: recorded.get(z) or now.isoformat(timespec="seconds") for z in sorted(set(unavailable))}


def _quorum(voters: int) -> int:
    return voters // 2 + 1


def decide_zones(
    state: ClusterState,
    outages: dict[str, str],
    stranded: Sequence[StrandedVm],
    now: dt.datetime,
    *,
    grace_s: float,
    zones: Sequence[str],
    region_zones: Sequence[str],
    busy: bool = False,
    rebalance: bool = False,
) -> ZoneVerdict:
    """The zone-outage decision for one cluster (see the section comment above).

    ``state`` was observed tolerating unavailable zones (``state.unavailable_zones``; the members there
    are ``UNKNOWN``, never ``MISSING``); ``outages`` says since when each zone is out (:func:`track_outages`);
    ``zones`` are the cluster's zones (its spec), ``region_zones`` every zone of its region.
    """
    cluster, down = state.cluster, set(state.unavailable_zones)
    # 0. Members unseen while several zones are out: in which zone each is, and whether its VM runs, is
    # unknown (not "not running", not "lost"): nothing is moved, replaced or deleted on that view.
    if down and state.membership_unknown is not None:  # which members the dead zones hold cannot be told
        return ZoneVerdict(
            cluster,
            ZoneAction.UNKNOWN,
            f"zone(s) {', '.join(sorted(down))} do not answer and the etcd membership could not be "
            f"read, so which replicas are there is unknown: nothing is moved, replaced or deleted",
            unknowns=(state.membership_unknown,),
        )
    unplaced = [r for r in state.replicas if r.vm_status == ZONE_OUT and r.zone not in down]
    if unplaced:
        unknowns = tuple(r.vm_unknown for r in unplaced if r.vm_unknown is not None)
        return ZoneVerdict(
            cluster,
            ZoneAction.UNKNOWN,
            f"zones {', '.join(sorted(down))} do not answer, and etcd member(s) "
            f"{', '.join(r.name for r in unplaced)} are in none of the zones that answer: which of "
            f"those zones each is in, and whether its VM still runs, cannot be known. They are "
            f"unknown, not failed: nothing is moved, replaced or deleted until at most one of those "
            f"zones is out; a person must look (the zones' status)",
            unknowns=unknowns,
        )
    # 1. Stranded VMs whose zone answers again: delete them (never while it is still out: unseen).
    back = tuple(s for s in stranded if not s.deleted and s.zone not in down)
    if back:
        members = [s.name for s in back if (r := state.replica(s.name)) is not None and r.member_id is not None]
        if members:
            return ZoneVerdict(
                cluster,
                ZoneAction.CANNOT,
                f"stranded VM(s) {', '.join(members)} are etcd members again: they were removed "
                f"from etcd when their zone was out and must not have rejoined; a person must look "
                f"(remove-replica by name)",
                stale=back,
            )
        return ZoneVerdict(
            cluster,
            ZoneAction.DELETE_STALE,
            f"zone(s) {', '.join(sorted({s.zone for s in back}))} answer again: delete the VM(s) left "
            f"there when their replicas were moved ({', '.join(s.name for s in back)}); they are no "
            f"longer etcd members and never start etcd again",
            stale=back,
        )
    if busy:
        return ZoneVerdict(
            cluster,
            ZoneAction.WAIT if down else ZoneAction.NOTHING,
            f"a change holds cluster-{cluster}: one change at a time, nothing is done now",
        )
    dead = sorted(
        (r for r in state.replicas if r.zone in down and r.member_id is not None), key=lambda r: (not r.learner, r.name)
    )  # a learner costs no vote: it goes first
    if down and not dead and all(s.replacement for s in stranded):
        return ZoneVerdict(
            cluster,
            ZoneAction.NOTHING,
            f"zone(s) {', '.join(sorted(down))} do not answer, but no replica of {cluster!r} is there",
        )
    if dead:
        victim = dead[0]
        since = dt.datetime.fromisoformat(outages.get(victim.zone) or now.isoformat())
        out_s = (now - since).total_seconds()
        voters = [r for r in state.replicas if r.member_id is not None and not r.learner]
        answering = [r for r in voters if r.etcd_ok]
        if len(answering) < _quorum(len(voters)):
            return ZoneVerdict(
                cluster,
                ZoneAction.CANNOT,
                f"quorum lost: {len(answering)} of {len(voters)} etcd voting members answer (quorum "
                f"{_quorum(len(voters))}) with zone(s) {', '.join(sorted(down))} out; etcd refuses "
                f"membership changes now, so nothing is done. A person must either bring the zone "
                f"back, or restore etcd from a snapshot on a surviving replica (etcdutl snapshot "
                f"restore, then --force-new-cluster) and add replicas again",
            )
        if out_s < grace_s:
            return ZoneVerdict(
                cluster,
                ZoneAction.WAIT,
                f"zone {victim.zone} has been out {out_s:.0f} s (since {since.isoformat()}); its "
                f"replica(s) {', '.join(r.name for r in dead)} are moved after the grace period of "
                f"{grace_s:.0f} s",
                replica=victim.name,
                from_zone=victim.zone,
            )
        # every dead member is removed before any replacement is added: etcd refuses to add a member
        # while a voter is unreachable (its strict reconfiguration check)
        dead_voters = [r.member_id for r in dead if not r.learner]
        if not dead_voters:
            decision_ok, why = True, "a learner does not vote"
        else:
            health = [
                MemberHealth(m.id, m.name, m.voting, m.reasons or (Reason.UNREACHABLE,)) if m.id in dead_voters else m
                for m in member_health(state)
            ]
            decision = can_replace(health, dead_voters)
            decision_ok, why = decision.allowed, decision.reason
        if not decision_ok:
            return ZoneVerdict(
                cluster,
                ZoneAction.CANNOT,
                f"moving {victim.name} out of zone {victim.zone} would lose quorum: {why}; a person "
                f"must act (bring the zone back)",
                replica=victim.name,
                from_zone=victim.zone,
            )
        target = _target_zone(state, zones, region_zones, down)
        if target is None:
            return ZoneVerdict(
                cluster,
                ZoneAction.CANNOT,
                f"no zone of region {state.region} answers besides {', '.join(sorted(down))}: "
                f"nowhere to move {victim.name}",
                replica=victim.name,
                from_zone=victim.zone,
            )
        others = [r.name for r in dead[1:]]
        add_now = not others
        return ZoneVerdict(
            cluster,
            ZoneAction.MOVE,
            f"zone {victim.zone} has been out {out_s:.0f} s (grace {grace_s:.0f} s): remove "
            f"{victim.name} from etcd, leave its VM stranded until the zone answers, "
            + (
                f"add a replica in {target}"
                if add_now
                else f"then remove {', '.join(others)} (one per check) before adding replacements"
            )
            + (f"; quorum: {why}" if why else ""),
            replica=victim.name,
            from_zone=victim.zone,
            to_zone=target,
            add_now=add_now,
        )
    owed = [s for s in stranded if not s.replacement]
    if owed:
        target = _target_zone(state, zones, region_zones, down)
        if target is None:
            return ZoneVerdict(cluster, ZoneAction.CANNOT, f"no zone answers to add the replacement of {owed[0].name}")
        return ZoneVerdict(
            cluster,
            ZoneAction.ADD,
            f"add the replacement of {owed[0].name} (removed from etcd when zone {owed[0].zone} was out) in {target}",
            replica=owed[0].name,
            from_zone=owed[0].zone,
            to_zone=target,
        )
    if rebalance:
        return _rebalance(state, zones, region_zones)
    return ZoneVerdict(cluster, ZoneAction.NOTHING, "every zone answers; nothing stranded")


def _target_zone(state: ClusterState, zones: Sequence[str], region_zones: Sequence[str], down: set[str]) -> str | None:
    """The least used zone that answers: among the cluster's zones, else among the region's."""
    return _least_used(
        state, [z for z in zones if z in region_zones and z not in down] or [z for z in region_zones if z not in down]
    )


def _least_used(state: ClusterState, candidates: Sequence[str]) -> str | None:
    if not candidates:
        return None
    used = [r.zone for r in state.replicas if r.member_id is not None]
    return min(candidates, key=lambda z: (used.count(z), list(candidates).index(z)))


def _rebalance(state: ClusterState, zones: Sequence[str], region_zones: Sequence[str]) -> ZoneVerdict:
    """One replica back from the most used zone to an empty one of the cluster's zones, when all is healthy."""
    cluster = state.cluster
    if not all(r.healthy for r in state.replicas):
        return ZoneVerdict(cluster, ZoneAction.NOTHING, "not rebalancing: a replica is not healthy")
    mine = [z for z in zones if z in region_zones]
    counts = {z: sum(1 for r in state.replicas if r.zone == z) for z in mine}
    crowded = max(
        (r.zone for r in state.replicas), key=lambda z: (sum(1 for r in state.replicas if r.zone == z), z), default=None
    )
    empty = [z for z in mine if counts[z] == 0]
    if crowded is None or not empty or sum(1 for r in state.replicas if r.zone == crowded) < 2:
        return ZoneVerdict(cluster, ZoneAction.NOTHING, "placement is one replica per zone where it can be")
    victim = sorted((r for r in state.replicas if r.zone == crowded), key=lambda r: (r.leader, r.name))[0]
    return ZoneVerdict(
        cluster,
        ZoneAction.REBALANCE,
        f"zone {empty[0]} has no replica and {crowded} has "
        f"{sum(1 for r in state.replicas if r.zone == crowded)}: move {victim.name} to {empty[0]} "
        f"(remove it, then add the new replica)",
        replica=victim.name,
        from_zone=crowded,
        to_zone=empty[0],
    )
