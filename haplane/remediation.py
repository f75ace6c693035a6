"""What the scheduled health check does about a cluster: replace which replica, or why not. Pure.

Input: the observed :class:`~haplane.model.ClusterState`, whether a mutating
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
- **Never lose quorum.** The choice must pass :func:`haplane.quorum.can_replace`
  on the members' health (:func:`haplane.plans.member_health`).
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

from haplane.model import MISSING, ClusterState, ReplicaState, Unknown
from haplane.plans import member_health
from haplane.quorum import MemberHealth, Reason, can_replace


class Problem(StrEnum):
    VM_GONE = "VM gone"
    VM_STOPPED = "VM not running"
    NOT_A_MEMBER = "never joined etcd"
    LEARNER_STUCK = "etcd learner never caught up"
    ETCD_UNHEALTHY = "etcd member unhealthy or unreachable"
    API_NOT_READY = "API server not ready"


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
    health = [MemberHealth(m.id, m.name, m.voting, m.reasons or (Reason.UNREACHABLE,)) if m.id == replica.member_id
              else m for m in health]
    decision = can_replace(health, [replica.member_id])
    return None if decision.allowed else decision.reason


def decide(state: ClusterState, attempts: Sequence[Attempt], now: dt.datetime, *, busy: bool = False,
           policy: Policy = Policy()) -> Verdict:
    """The health check's decision for one cluster; see the module docstring for the rules."""
    cluster = state.cluster
    recent = [a for a in attempts if (now - a.started).total_seconds() <= policy.window_s]
    if not state.replicas:
        return Verdict(cluster, Action.NOTHING, f"cluster {cluster!r} has no replicas: nothing to check")
    findings = tuple(find_problems(state, busy))
    running = [a for a in recent if a.outcome is Outcome.RUNNING]
    if busy:
        return Verdict(cluster, Action.NOTHING if not findings else Action.WAIT,
                       f"a change is in progress on {cluster!r} (its lock cluster-{cluster} is held): "
                       f"one change at a time, nothing is done now", findings=findings)
    unknowns = state.unknowns
    if unknowns:
        return Verdict(cluster, Action.UNKNOWN,
                       f"part of {cluster!r} could not be observed, so no replica is judged failed or replaced: "
                       + "; ".join(u.text for u in unknowns), findings=findings, unknowns=unknowns)
    if running:
        return Verdict(cluster, Action.WAIT, f"the replacement of {running[0].replica} ({running[0].run}) is still "
                                             f"running: one replacement at a time", findings=findings)
    notes: list[tuple[str, str]] = []
    waiting = False
    pending = unfinished_replacement(state, recent)
    if pending is not None:
        failed = failures_in_a_row(recent, pending.replica)
        ready_at = failed[-1].started + dt.timedelta(seconds=policy.backoff_s(len(failed)))
        if len(failed) >= policy.max_failures:
            notes.append((pending.replica, f"{GIVEN_UP} after {len(failed)} failed replacements in a row; its "
                                           f"replacement was never added (run replace-replica with "
                                           f"change_id={pending.change_id!r}, or add-replica, by hand)"))
        elif now < ready_at:
            notes.append((pending.replica, f"{BACKING_OFF}: its replacement ({pending.run}) removed it but failed "
                                           f"to add the new replica; trying again after "
                                           f"{ready_at.isoformat(timespec='seconds')}"))
            waiting = True
        else:
            return Verdict(cluster, Action.RESUME,
                           f"finish replacing {pending.replica}: run {pending.run} removed it but failed before "
                           f"its replacement was added; running change {pending.change_id} again",
                           replica=pending.replica, change_id=pending.change_id, findings=findings)
    if not findings and not notes:
        return Verdict(cluster, Action.NOTHING, f"all {len(state.replicas)} replica(s) of {cluster!r} are healthy")

    for f in findings:
        replica = state.replica(f.replica)
        failed = failures_in_a_row(recent, f.replica)
        if len(failed) >= policy.max_failures:
            notes.append((f.replica, f"{GIVEN_UP} after {len(failed)} failed replacements in a row "
                                     f"(last: {failed[-1].run or failed[-1].started.isoformat()}); a person must "
                                     f"look at it (run replace-replica or remove-replica by hand)"))
            continue
        if failed:
            wait = policy.backoff_s(len(failed))
            ready_at = failed[-1].started + dt.timedelta(seconds=wait)
            if now < ready_at:
                left = (ready_at - now).total_seconds()
                notes.append((f.replica, f"{BACKING_OFF}: {len(failed)} failed replacement(s) in a row; next try "
                                         f"in {left:.0f} s (after {ready_at.isoformat(timespec='seconds')})"))
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
    summary = ("no failed replica can be replaced now" if waiting else
               "no failed replica can be replaced without a person")
    return Verdict(cluster, action, f"{summary}: " + "; ".join(f"{r}: {why}" for r, why in notes),
                   findings=findings, notes=tuple(notes))
