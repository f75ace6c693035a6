"""Quorum arithmetic and membership-change rules for etcd. Pure: no I/O, no Prefect.

The rule (Cluster API's, from its KubeadmControlPlane remediation): a change
is allowed only if quorum holds *throughout*, i.e. before it and after it::

    voting - unhealthy >= voting // 2 + 1

counting the change itself (the member removed no longer votes; a member
being added counts as unhealthy until it is promoted). On top of it:

- never remove the last member;
- one change at a time: a learner still being added blocks other changes
  (except removing that learner, which is how a stuck join is swept);
- a learner may be promoted only when it has caught up;
- two voting members are worse than one (the seed): a cluster may pass
  through 2 on its way 1 -> 3 or while replacing a member of 3, but 2 is
  never a target size, and a step that leaves 2 says so.

Every answer is a :class:`Decision` whose ``reason`` is a sentence for a human.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

VALID_SIZES = (1, 3, 5, 7)
TWO_IS_WORSE = (
    "two members are worse than one: with 2 voting members losing either one loses quorum, "
    "so 2 tolerates no failure, like 1, and is twice as likely to fail"
)


def quorum(voting: int) -> int:
    """Votes needed to commit: a majority of the voting members."""
    if voting < 0:
        raise ValueError("voting members cannot be negative")
    return voting // 2 + 1


def fault_tolerance(voting: int) -> int:
    """How many voting members may fail with quorum kept."""
    return max(0, (voting - 1) // 2)


def has_quorum(voting: int, unhealthy: int) -> bool:
    return voting > 0 and voting - unhealthy >= quorum(voting)


class Reason(StrEnum):
    UNREACHABLE = "unreachable"
    NEVER_STARTED = "never started"
    LEARNER_NOT_CAUGHT_UP = "learner not caught up"
    ALARM = "alarm raised"
    NO_LEADER = "no leader"


@dataclass(frozen=True)
class MemberHealth:
    id: int
    name: str
    voting: bool  # False: a learner (being added)
    reasons: tuple[Reason, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.reasons

    @property
    def is_learner(self) -> bool:
        return not self.voting

    @property
    def reason(self) -> str:
        return ", ".join(r.value for r in self.reasons) if self.reasons else "healthy"

    @property
    def label(self) -> str:
        return f"{self.name or 'unstarted'} ({self.id:x})"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def unhealthy_reasons(
    *,
    started: bool,
    reachable: bool,
    is_learner: bool = False,
    learner_caught_up: bool = True,
    alarms: Iterable[str] = (),
    knows_leader: bool = True,
) -> tuple[Reason, ...]:
    """Classify one member from observed facts (empty tuple: healthy)."""
    if not started:
        return (Reason.NEVER_STARTED,)
    out: list[Reason] = []
    if not reachable:
        out.append(Reason.UNREACHABLE)
    else:
        if not knows_leader:
            out.append(Reason.NO_LEADER)
        if is_learner and not learner_caught_up:
            out.append(Reason.LEARNER_NOT_CAUGHT_UP)
    if any(a and a != "NONE" for a in alarms):
        out.append(Reason.ALARM)
    return tuple(out)


def assess(
    members: Iterable[Any], statuses: Iterable[Any], alarms: Iterable[Any] = (), max_learner_lag: int = 100
) -> list[MemberHealth]:
    """Member health from what :mod:`haplane.cloud.etcd` returns (duck-typed, so this stays pure).

    ``members``: objects with ``id, name, client_urls, is_learner``;
    ``statuses``: ``EndpointStatus`` (``endpoint, member_id, leader_id, raft_index, raft_applied_index``)
    or ``EndpointUnreachable`` (no ``member_id``); ``alarms``: objects with ``member_id, alarm``.
    A learner has caught up when its applied index is within ``max_learner_lag`` of the leader's raft index.
    """
    by_id = {s.member_id: s for s in statuses if getattr(s, "member_id", None)}
    leader_index = max((s.raft_index for s in by_id.values() if s.member_id == s.leader_id), default=None)
    alarmed: dict[int, list[str]] = {}
    for a in alarms:
        alarmed.setdefault(a.member_id, []).append(a.alarm)
    out = []
    for m in members:
        s = by_id.get(m.id)
        started = bool(m.name) and bool(m.client_urls)
        caught_up = True
        if m.is_learner:
            caught_up = (
                s is not None and leader_index is not None and leader_index - s.raft_applied_index <= max_learner_lag
            )
        reasons = unhealthy_reasons(
            started=started,
            reachable=s is not None,
            is_learner=m.is_learner,
            learner_caught_up=caught_up,
            alarms=alarmed.get(m.id, ()),
            knows_leader=s is None or bool(s.leader_id),
        )
        out.append(MemberHealth(id=m.id, name=m.name, voting=not m.is_learner, reasons=reasons))
    return out


# ---------------------------------------------------------------- counting


def _voting(members: Sequence[MemberHealth]) -> list[MemberHealth]:
    return [m for m in members if m.voting]


def _unhealthy_voting(members: Sequence[MemberHealth]) -> list[MemberHealth]:
    return [m for m in members if m.voting and not m.healthy]


def _learners(members: Sequence[MemberHealth]) -> list[MemberHealth]:
    return [m for m in members if not m.voting]


def _find(members: Sequence[MemberHealth], member_id: int) -> MemberHealth | None:
    return next((m for m in members if m.id == member_id), None)


def _names(ms: Iterable[MemberHealth]) -> str:
    return ", ".join(f"{m.label}: {m.reason}" for m in ms)


def _quorum_now(members: Sequence[MemberHealth]) -> Decision | None:
    """None when the cluster has quorum now; a refusal otherwise."""
    voting = len(_voting(members))
    bad = _unhealthy_voting(members)
    if has_quorum(voting, len(bad)):
        return None
    return Decision(
        False,
        f"quorum is already lost: {voting - len(bad)} of {voting} voting members are healthy "
        f"and {quorum(voting)} are needed ({_names(bad)}); etcd cannot change its membership "
        f"now: restore from a snapshot instead",
    )


def _two_note(voting_after: int) -> str:
    return f"; note: {TWO_IS_WORSE} — add a third member next" if voting_after == 2 else ""


# ---------------------------------------------------------------- rules


def check_target_size(size: int) -> Decision:
    """Whether ``size`` may be a cluster's intended replica count (1, 3, 5 or 7)."""
    if size == 2:
        return Decision(False, f"2 replicas is not a valid size: {TWO_IS_WORSE}; use 1 or 3")
    if size in VALID_SIZES:
        return Decision(True, f"{size} replica(s) tolerate {fault_tolerance(size)} failure(s)")
    if size < 1:
        return Decision(False, f"a cluster needs at least 1 replica, not {size}")
    if size % 2 == 0:
        return Decision(
            False,
            f"{size} replicas is an even count: it tolerates no more failures than "
            f"{size - 1} and needs a bigger quorum; use {size - 1} or {size + 1}",
        )
    return Decision(False, f"{size} replicas is more than the supported maximum of {VALID_SIZES[-1]}")


def can_add(members: Sequence[MemberHealth]) -> Decision:
    """May a new member be added (as a learner)?"""
    if not members:
        return Decision(False, "there is no cluster to add to: create it first")
    learners = _learners(members)
    if learners:
        return Decision(
            False,
            f"a member is already being added ({_names(learners)}): promote it or remove it "
            f"before another change, one change at a time",
        )
    lost = _quorum_now(members)
    if lost is not None:
        return lost
    voting = len(_voting(members))
    bad = _unhealthy_voting(members)
    after = voting + 1
    # The new member joins as a learner: it does not vote, so quorum over the current voters is
    # unchanged during the join, and it counts as unhealthy (blocking other changes) until it is
    # promoted. It is promoted only once caught up (can_promote); then quorum must hold over
    # voting + 1 members with the current unhealthy ones still unhealthy.
    if not has_quorum(after, len(bad)):
        return Decision(
            False,
            f"after the new member is promoted there would be {after - len(bad)} healthy of "
            f"{after} voting members, below the quorum of {quorum(after)}: replace an "
            f"unhealthy member first",
        )
    if bad:
        return Decision(
            False,
            f"{len(bad)} voting member(s) are unhealthy ({_names(bad)}): remove them first; "
            f"etcd refuses to add a member unless every voting member is connected "
            f"(its strict reconfiguration check), and it advises removing a failed member "
            f"before adding its replacement",
        )
    return Decision(
        True,
        f"adding a learner keeps quorum ({voting} voting, quorum {quorum(voting)}); once "
        f"promoted the cluster has {after} voting members, quorum {quorum(after)}" + _two_note(after),
    )


def can_promote(members: Sequence[MemberHealth], member_id: int) -> Decision:
    """May this learner become a voting member?"""
    m = _find(members, member_id)
    if m is None:
        return Decision(False, f"there is no member {member_id:x}")
    if m.voting:
        return Decision(True, f"{m.label} is already a voting member: nothing to do")
    if not m.healthy:
        return Decision(False, f"{m.label} cannot be promoted yet: {m.reason}; wait for it to catch up")
    lost = _quorum_now(members)
    if lost is not None:
        return lost
    voting = len(_voting(members)) + 1
    bad = len(_unhealthy_voting(members))
    if not has_quorum(voting, bad):
        return Decision(
            False,
            f"promoting {m.label} would leave {voting - bad} healthy of {voting} voting "
            f"members, below the quorum of {quorum(voting)}",
        )
    return Decision(
        True,
        f"promoting {m.label} gives {voting} voting members, quorum {quorum(voting)}, "
        f"{voting - bad} healthy" + _two_note(voting),
    )


def can_remove(members: Sequence[MemberHealth], member_id: int) -> Decision:
    """May this member be removed? (Cluster API: target voting − target unhealthy ≥ target quorum.)"""
    victim = _find(members, member_id)
    if victim is None:
        return Decision(False, f"there is no member {member_id:x} (already removed?)")
    if len(members) == 1:
        return Decision(False, f"{victim.label} is the last member: never remove the last member of a cluster")
    if not victim.voting:
        return Decision(
            True, f"{victim.label} is a learner ({victim.reason}): it does not vote, removing it does not change quorum"
        )
    others = [m for m in _learners(members) if m.id != member_id]
    if others:
        return Decision(
            False,
            f"a member is being added ({_names(others)}): promote it or remove it before "
            f"removing another, one change at a time",
        )
    if len(_voting(members)) == 1:
        return Decision(False, f"{victim.label} is the only voting member: never remove the last voting member")
    lost = _quorum_now(members)
    if lost is not None:
        return lost
    after = len(_voting(members)) - 1
    bad_after = [m for m in _unhealthy_voting(members) if m.id != member_id]
    if not has_quorum(after, len(bad_after)):
        return Decision(
            False,
            f"removing {victim.label} would leave {after - len(bad_after)} healthy of {after} "
            f"voting members, below the quorum of {quorum(after)} (unhealthy: "
            f"{_names(bad_after)}); replace the unhealthy member(s) first",
        )
    return Decision(
        True,
        f"removing {victim.label} ({victim.reason}) leaves {after} voting members, "
        f"{after - len(bad_after)} healthy, quorum {quorum(after)}" + _two_note(after),
    )


def can_replace(members: Sequence[MemberHealth], member_ids: Sequence[int]) -> Decision:
    """Is it safe to replace these unhealthy members, one change at a time?

    The order etcd allows: remove the failed members one by one (each removal
    must keep quorum), then add and promote a replacement for each, one by one
    (etcd refuses to add while a voting member is unreachable). Simulated step
    by step; a replacement is assumed healthy once promoted (it is promoted
    only after catching up).
    """
    if not member_ids:
        return Decision(True, "nothing to replace")
    if len(set(member_ids)) != len(member_ids):
        return Decision(False, "a member is listed twice")
    state = list(members)
    steps = []
    voting_victims = 0
    for mid in member_ids:
        victim = _find(state, mid)
        if victim is None:
            return Decision(False, f"there is no member {mid:x}")
        if victim.healthy and victim.voting:
            return Decision(False, f"{victim.label} is healthy: replace only unhealthy members")
        d = can_remove(state, mid)
        if not d.allowed:
            return Decision(False, f"step {len(steps) + 1}: cannot remove {victim.label}: {d.reason}")
        state = [m for m in state if m.id != mid]
        steps.append(f"remove {'learner ' if not victim.voting else ''}{victim.label}")
        voting_victims += victim.voting
    lowest = len(_voting(state))
    for n in range(1, voting_victims + 1):
        d = can_add(state)
        if not d.allowed:
            return Decision(False, f"step {len(steps) + 1}: cannot add replacement {n}: {d.reason}")
        new = MemberHealth(id=-n, name=f"replacement-{n}", voting=False)
        state = [*state, new]
        d = can_promote(state, new.id)
        if not d.allowed:
            return Decision(False, f"step {len(steps) + 1}: cannot promote replacement {n}: {d.reason}")
        state = [replace(m, voting=True) if m.id == new.id else m for m in state]
        steps.append(f"add and promote replacement {n}")
    note = ""
    if voting_victims:
        note = f" (the cluster goes down to {lowest} voting member(s) before it grows back"
        note += f"; {TWO_IS_WORSE})" if lowest == 2 else ")"
    return Decision(True, "quorum holds at every step, one change at a time: " + "; then ".join(steps) + note)
