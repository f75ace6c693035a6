"""When and in what order keys and certificates are renewed. Pure: functions of observed state.

- :func:`rotation_order`: which replica's leaves go first (followers, the leader last), and
  refusing when the cluster cannot lose one member for a moment.
- :func:`expiry_decision`: what the health check does about certificates close to expiry:
  warn within ``warn_days``, rotate within ``rotate_days`` (a lower threshold);
  :func:`thresholds` lets them be given in minutes instead, for leaves that last minutes.
- :func:`check_rotation`: a rotation refused while a CA rotation of another change is under way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from haplane.core.model import ClusterState, ReplicaState
from haplane.core.remediation import Attempt, Outcome, Policy

WARN_DAYS = 30  # the health check warns (event + artifact) within this many days of an expiry
ROTATE_DAYS = 14  # ... and starts rotate-certificates itself within this many
CA_ROLES = frozenset({"cluster-ca", "etcd-ca"})


def rotation_order(state: ClusterState) -> list[ReplicaState]:
    """Replicas in the order their leaves are re-issued: followers first, the leader last (one
    leadership change at most). Refuses, before anything is changed, when the cluster is not
    healthy enough to lose one member for a moment (each replica's etcd restarts in turn)."""
    if state.etcd_unknowns:
        raise RuntimeError("; ".join(u.text for u in state.etcd_unknowns) + ": nothing was rotated")
    sick = [r.name for r in state.replicas if not r.healthy]
    if sick:
        raise RuntimeError(
            f"replicas {sick} are not healthy: replace them first (replace-replica or the health "
            f"check); a rotation restarts etcd on each replica in turn and needs every other one "
            f"healthy. Nothing was rotated."
        )
    return sorted(state.replicas, key=lambda r: (r.leader, r.name))


def thresholds(
    warn_days: float = WARN_DAYS,
    rotate_days: float = ROTATE_DAYS,
    warn_minutes: float | None = None,
    rotate_minutes: float | None = None,
) -> tuple[float, float]:
    """The health check's (warn, rotate) thresholds in days, from days or, when given, minutes
    (one unit per threshold: days left at their defaults when minutes are given)."""

    def one(name: str, days: float, default: float, minutes: float | None) -> float:
        if minutes is None:
            return days
        if days != default:
            raise ValueError(
                f"give the {name} threshold once: {name}_days={days:g} or {name}_minutes={minutes:g}, not both"
            )
        if minutes < 0:
            raise ValueError(f"{name}_minutes must be >= 0, got {minutes:g}")
        return minutes / 1440

    warn = one("warn", warn_days, WARN_DAYS, warn_minutes)
    rotate = one("rotate", rotate_days, ROTATE_DAYS, rotate_minutes)
    if rotate > warn:
        raise ValueError(
            f"the rotate threshold ({span_text(rotate)}) must not exceed the warn threshold ({span_text(warn)}): "
            f"the health check warns before it rotates (give rotate_minutes with warn_minutes)"
        )
    return warn, rotate


def rotation_fits(rotate_days: float, leaf: dt.timedelta) -> str | None:
    """Why the rotate threshold does not fit the cluster's leaf lifetime (None: it fits). A leaf
    re-issued with less than ``rotate_days`` of life would be rotated again by every check."""
    if rotate_days * 86400 < leaf.total_seconds():
        return None
    return (
        f"rotate threshold {span_text(rotate_days)} is not shorter than the leaves' lifetime "
        f"{span_text(leaf.total_seconds() / 86400)}: every check would rotate again; give a rotate threshold well "
        f"under the lifetime (e.g. two thirds of it) unless a rotation now is what you want"
    )


def span_text(days: float) -> str:
    return f"{days:.1f} days" if abs(days) >= 1 else f"{days * 1440:.1f} minutes"


def check_rotation(ca_rotation: str | None, change_id: str, rotate_ca: bool) -> None:
    """A CA rotation under way (the change id in the cluster's PKI block) is finished by its own
    change: any other rotation is refused before anything is changed."""
    if ca_rotation is None or (rotate_ca and ca_rotation == change_id):
        return
    raise RuntimeError(
        f"a CA rotation of this cluster is under way (change {ca_rotation!r}): finish it first with "
        f"rotate-certificates rotate_ca=true change_id={ca_rotation!r}. Nothing was rotated."
    )


@dataclass(frozen=True)
class Expiring:
    role: str  # "cluster-ca", "operator-etcd-client", "<replica>/etcd-peer", ...
    not_after: dt.datetime
    days_left: float


@dataclass(frozen=True)
class ExpiryDecision:
    warn: tuple[Expiring, ...]  # within warn_days (every certificate, CAs included)
    rotate: bool  # a leaf is within rotate_days: start rotate-certificates
    ca_attention: tuple[Expiring, ...]  # CAs within warn_days: rotate-certificates does not renew CAs

    @property
    def text(self) -> str:
        if not self.warn:
            return "no certificate is close to expiry"
        lines = [
            f"- {e.role}: expires {e.not_after:%Y-%m-%d %H:%M:%S} UTC ({span_text(e.days_left)})" for e in self.warn
        ]
        if self.ca_attention:
            lines.append(
                "- a CA is close to expiry: the health check renews leaves only; run rotate-certificates "
                "with rotate_ca=true (a CA rotation, one replica at a time)"
            )
        return "\n".join(lines)


def expiry_decision(
    certs: Iterable[tuple[str, dt.datetime]],
    now: dt.datetime,
    *,
    warn_days: float = WARN_DAYS,
    rotate_days: float = ROTATE_DAYS,
) -> ExpiryDecision:
    """``certs``: (role, not_after) of every certificate of the cluster."""
    if rotate_days > warn_days:
        raise ValueError(
            f"rotate_days ({rotate_days}) must not exceed warn_days ({warn_days}): the health check "
            f"warns before it rotates"
        )
    if rotate_days < 0:
        raise ValueError("rotate_days must be >= 0")
    found = sorted(
        (Expiring(role, na, (na - now).total_seconds() / 86400) for role, na in certs), key=lambda e: e.not_after
    )
    warn = tuple(e for e in found if e.days_left <= warn_days)
    rotate = any(e.days_left <= rotate_days for e in warn if e.role.split("/")[-1] not in CA_ROLES)
    return ExpiryDecision(warn=warn, rotate=rotate, ca_attention=tuple(e for e in warn if e.role in CA_ROLES))


ROTATION_TARGET = "certificates"  # the "replica" an automatic rotation is recorded under


@dataclass(frozen=True)
class RotationGo:
    allowed: bool
    reason: str
    change_id: str | None = None  # set: resume that failed rotation instead of starting afresh


def may_rotate(attempts: Iterable[Attempt], now: dt.datetime, policy: Policy = Policy()) -> RotationGo:
    """The replacements' back-off rules applied to automatic rotations: after a failed one, wait
    ``policy.backoff_s(failures)`` and then resume it (same change id); give up after
    ``policy.max_failures`` failures in a row, for a person to look."""
    mine = sorted((a for a in attempts if a.replica == ROTATION_TARGET), key=lambda a: a.started)
    failures = 0
    for a in reversed(mine):
        if a.outcome is not Outcome.FAILED:
            break
        failures += 1
    if mine and mine[-1].outcome is Outcome.RUNNING:
        return RotationGo(False, f"rotation {mine[-1].run} is still running")
    if failures >= policy.max_failures:
        return RotationGo(
            False,
            f"{failures} automatic rotations failed in a row (last: {mine[-1].run}); "
            f"not trying again: run rotate-certificates by hand after looking at why",
        )
    if failures:
        wait = policy.backoff_s(failures)
        since = (now - mine[-1].started).total_seconds()
        if since < wait:
            return RotationGo(
                False,
                f"the last rotation ({mine[-1].run}) failed {since:.0f} s ago; backing off "
                f"for {wait - since:.0f} s more",
            )
        return RotationGo(True, f"resuming the failed rotation {mine[-1].run}", mine[-1].change_id or None)
    return RotationGo(True, "certificates are within the rotation threshold")
