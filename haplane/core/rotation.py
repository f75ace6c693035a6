"""When and in what order keys and certificates are renewed. Pure: functions of observed state.

- :func:`rotation_order`: which replica's leaves go first (followers, the leader last), and
  refusing when the cluster cannot lose one member for a moment.
- :func:`expiry_decision`: what the health check does about certificates close to expiry:
  warn within ``warn_days``, rotate within ``rotate_days`` (a lower threshold);
  :func:`thresholds` lets them be given in minutes instead, for leaves that last minutes.
- :func:`check_rotation`: a rotation refused while a CA rotation of another change is under way.
- :func:`plan_rotation`: rotate-certificates' plan, every action it takes a step (the CA phases, each
  replica's deliveries and the waits after them), from the observed cluster and the options.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from haplane.core.gce_timings import GCE_SECONDS
from haplane.core.model import ClusterState, ReplicaState
from haplane.core.plans import Plan
from haplane.core.remediation import Attempt, Outcome, Policy
from haplane.core.steps import PlanStep, StepKind, step

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
class RotationOptions:
    """What rotate-certificates renews (its form's choices)."""

    leaves: bool = True
    operator: bool = True
    service_account_key: bool = True
    rotate_ca: bool = False

    def check(self) -> None:
        if self.rotate_ca and not (self.leaves and self.operator):
            raise ValueError(
                "rotate_ca re-issues every certificate from the new CAs: leave leaves and operator true "
                "(nothing was rotated)"
            )


def plan_rotation(state: ClusterState, options: RotationOptions, ca_rotation: str | None, change_id: str) -> Plan:
    """rotate-certificates' plan for the observed cluster (``ca_rotation``: the change id of a CA rotation
    under way, from the PKI block). Refused, before anything is changed, when a CA rotation of another
    change is under way or the cluster cannot lose one member for a moment (:func:`rotation_order`).

    One replica at a time, followers first and the leader last: each delivery to a replica is followed
    by the waits that prove it took (its etcd on the new trust bundle, its new certificates served, its
    API server ready) and by etcd's full quorum, before the next replica. Step ids are checkpoint keys:
    ``ca/start``, ``ca/trust/<name>``, ``ca/switch``, ``ca/operator``, ``leaves/<name>``,
    ``ca/drop/<name>``, ``ca/finish``, ``operator``, ``service-account/rotate``,
    ``service-account/deliver/<name>`` are the checkpoints of rotations started before there was a plan."""
    options.check()
    check_rotation(ca_rotation, change_id, options.rotate_ca)
    order = rotation_order(state)
    ips = tuple(r.internal_ip for r in order)
    steps: list[PlanStep] = []

    def quorum(sid: str, after: str) -> PlanStep:
        return step(
            StepKind.WAIT_QUORUM,
            sid,
            f"wait until etcd has its {len(order)} voting members and a leader again ({after})",
            ips=ips,
            voting=len(order),
        )

    def trust(r: ReplicaState, drop: bool) -> list[PlanStep]:
        phase = "drop" if drop else "trust"
        what = "trusts the new CAs alone" if drop else "trusts the new CAs beside the old ones"
        proof = (
            "accepts a client of the new etcd CA and refuses one of the old"
            if drop
            else "accepts a client of the new etcd CA"
        )
        return [
            step(
                StepKind.DELIVER_TRUST,
                f"ca/{phase}/{r.name}",
                f"{r.name} {what}",
                zone=r.zone,
                name=r.name,
                drop_previous=drop,
            ),
            step(
                StepKind.WAIT_TRUST,
                f"ca/{phase}/etcd/{r.name}",
                f"wait until {r.name}'s etcd {proof}",
                zone=r.zone,
                name=r.name,
                dropped=drop,
            ),
            step(
                StepKind.WAIT_API,
                f"ca/{phase}/api-ready/{r.name}",
                f"wait until {r.name}'s API server is ready",
                name=r.name,
                ip=r.internal_ip,
                timeout=120.0,
            ),
            quorum(f"ca/{phase}/quorum/{r.name}", f"{r.name} {what}"),
        ]

    if options.rotate_ca:
        steps.append(
            step(
                StepKind.START_CA_ROTATION,
                "ca/start",
                "new cluster and etcd CAs in the PKI block, beside the current ones (they sign nothing yet)",
            )
        )
        for r in order:
            steps += trust(r, drop=False)
        steps.append(step(StepKind.SWITCH_CAS, "ca/switch", "the new CAs sign from now on (the old ones stay trusted)"))
        steps.append(
            step(
                StepKind.RENEW_OPERATOR,
                "ca/operator",
                "a new operator etcd client certificate, signed by the new etcd CA",
            )
        )
    if options.leaves:
        for i, r in enumerate(order, 1):
            steps += [
                step(
                    StepKind.REISSUE_LEAVES,
                    f"leaves/{r.name}",
                    f"new keys and certificates for {r.name} ({i} of {len(order)})",
                    zone=r.zone,
                    name=r.name,
                    endpoint_ip=state.endpoint_ip,
                ),
                step(
                    StepKind.WAIT_SERVING,
                    f"leaves/served/{r.name}",
                    f"wait until {r.name}'s etcd and API server serve their new certificates",
                    zone=r.zone,
                    name=r.name,
                ),
                quorum(f"leaves/quorum/{r.name}", f"{r.name} has its new certificates"),
            ]
    if options.rotate_ca:
        for r in order:
            steps += trust(r, drop=True)
        steps.append(
            step(
                StepKind.FINISH_CA_ROTATION,
                "ca/finish",
                "delete the old CAs' certificates and private keys: the CA rotation is complete",
            )
        )
    elif options.operator:
        steps.append(step(StepKind.RENEW_OPERATOR, "operator", "a new operator etcd client certificate"))
    if options.service_account_key:
        steps.append(
            step(
                StepKind.ROTATE_SERVICE_ACCOUNT,
                "service-account/rotate",
                "a new service-account signing key (the previous public key stays accepted)",
            )
        )
        for r in order:  # kube-apiserver restarts on new key files: never all replicas at once
            steps += [
                step(
                    StepKind.DELIVER_SERVICE_ACCOUNT,
                    f"service-account/deliver/{r.name}",
                    f"the service-account keys to {r.name}",
                    zone=r.zone,
                    name=r.name,
                ),
                step(
                    StepKind.WAIT_API,
                    f"service-account/api-ready/{r.name}",
                    f"wait until {r.name}'s API server is ready on them",
                    name=r.name,
                    ip=r.internal_ip,
                    timeout=120.0,
                ),
            ]
    voting = len(state.voting)
    deliveries = sum(
        s.kind in (StepKind.DELIVER_TRUST, StepKind.REISSUE_LEAVES, StepKind.DELIVER_SERVICE_ACCOUNT) for s in steps
    )
    return Plan(
        action="rotate-certificates",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=voting,
        voting_after=voting,
        expected_seconds=deliveries * GCE_SECONDS["instance_update"],
        reason=f"one replica's etcd restarts at a time ({', '.join(r.name for r in order)}, the leader last), "
        f"every other member healthy: quorum holds throughout",
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
