"""health-check: find failed replicas and replace one when that is safe (scheduled per cluster).

Finds a VM gone or stopped, a replica that never joined etcd, a learner that
never caught up, an etcd member unhealthy or unreachable, an API server not
ready, a controller-manager or scheduler not running (the replica's componentstatuses); a component
with no leader past its lease duration is reported (event ``haplane.cluster.no-leader``), and the
``<cluster>-health`` artifact says who leads each; a cluster that lost etcd quorum is reported (event ``haplane.cluster.quorum-lost`` with the
newest snapshot's age), never restored. A zone whose API does not answer is handled first
(:mod:`flows.zone_outage`): after ``zone_grace_s`` its replicas move to the region's other zones,
one per check, quorum permitting; the VMs left there are deleted once it answers again.
Decides with the pure rules of :mod:`haplane.core.remediation` (one
replacement at a time, never when quorum would be lost, back-off after
repeated failures of the same replica) and says why in its log and in the
``<cluster>-health`` artifact. Acts by running replace-replica as a subflow.

Certificates: when nothing needs replacing, it lists every certificate and the
service-account key's age (artifact ``<cluster>-certificates``), warns (event
``haplane.certificates.expiring``) when one expires within ``warn_days``, and
within ``rotate_days`` runs rotate-certificates as a subflow itself (both can be
given in minutes instead, for leaves that last minutes), under the
same back-off rules as replacements (:mod:`haplane.core.rotation`).

Locks: the check holds ``health-<cluster>`` for its whole run, so two checks of
one cluster never overlap. Before acting it takes ``cluster-<cluster>``, observes
and decides again under it, and runs replace-replica under that same hold (the
lock is re-entrant within a run); it takes it before starting a rotation too. A
cluster whose lock another flow holds is *skipped* (event ``haplane.cluster.busy``),
never a failed remediation or rotation.
With nothing wrong, it changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.store import load_spec, update_spec
from flows.params import ClusterName, Connection, documented
from flows.replace_replica import replace_replica
from flows.rotate_certificates import rotate_certificates
from flows.zone_outage import add_owed_replacement, delete_stranded, move_out_of_zone
from flows.zone_outage import rebalance as zone_rebalance
from haplane.cloud.observe import now_utc
from haplane.core.remediation import Action, Policy, ZoneAction, decide, decide_zones, track_outages
from haplane.core.restore import QuorumView, quorum_view
from haplane.core.rotation import (
    ROTATE_DAYS,
    ROTATION_TARGET,
    WARN_DAYS,
    expiry_decision,
    may_rotate,
    rotation_fits,
    span_text,
    thresholds,
)
from haplane.core.topology import check_cluster_name
from haplane.watch import cluster_resource, replica_resource
from tasks.cluster import ClusterBusy, cluster_lock, observe_cluster, publish_report, zones_of
from tasks.health import (
    cluster_busy,
    emit,
    health_lock,
    health_lock_name,
    publish_verdict,
    remediation_history,
    remediation_tags,
)
from tasks.pki import certificate_inventory, load_certs
from tasks.snapshots import newest_snapshot_age, observe_quorum

ZONES_OUT_LOCK_WAIT_S = 2.0  # how long the check waits for the cluster lock to record a zone outage


@flow(name="health-check", log_prints=True)
@documented
def health_check(
    cluster: ClusterName,
    connection: Connection = None,
    dry_run: Annotated[bool, Field(description="Decide and explain, but replace nothing")] = False,
    max_failures: Annotated[
        int, Field(ge=1, le=10, description="Give up on a replica after this many failed replacements in a row")
    ] = 3,
    backoff_s: Annotated[
        float,
        Field(
            ge=0, le=86400, description="Wait after a failed replacement; doubles with each further failure (max 1 h)"
        ),
    ] = 300.0,
    zone_grace_s: Annotated[
        float,
        Field(
            ge=0,
            le=86400,
            description="A zone that does not answer for longer "
            "than this has its replicas moved to the "
            "region's other zones, one per check",
        ),
    ] = 600.0,
    rebalance: Annotated[
        bool,
        Field(
            description="Once all is healthy, move replicas back to one per zone of the cluster's zones, one per check"
        ),
    ] = False,
    warn_days: Annotated[
        float,
        Field(ge=0, le=3650, description="Warn (event + artifact) when a certificate expires within this many days"),
    ] = WARN_DAYS,
    rotate_days: Annotated[
        float, Field(ge=0, le=3650, description="Start rotate-certificates when a leaf expires within this many days")
    ] = ROTATE_DAYS,
    warn_minutes: Annotated[
        float | None,
        Field(
            ge=0,
            le=5256000,
            description="The warn threshold in minutes "
            "instead of warn_days (leaves that last minutes: create-cluster's "
            "leaf_lifetime_minutes); empty: warn_days",
        ),
    ] = None,
    rotate_minutes: Annotated[
        float | None,
        Field(
            ge=0, le=5256000, description="The rotate threshold in minutes instead of rotate_days; empty: rotate_days"
        ),
    ] = None,
) -> State:
    logger = get_run_logger()
    check_cluster_name(cluster)
    try:
        warn_days, rotate_days = thresholds(warn_days, rotate_days, warn_minutes, rotate_minutes)
    except ValueError as exc:
        raise ValueError(f"{exc}; nothing was checked") from None
    with health_lock(cluster) as held:
        if not held:
            msg = f"another health check of {cluster!r} is running (lock {health_lock_name(cluster)!r}); this one skips"
            logger.info(msg)
            return Completed(message=msg, data={"action": "skipped", "reason": msg})
        zone_state = _zones(cluster, connection, dry_run, zone_grace_s, rebalance)
        if zone_state is not None:
            return zone_state
        policy = Policy(max_failures=max_failures, backoff_base_s=backoff_s, backoff_max_s=max(3600.0, backoff_s))
        result = _check(cluster, connection, dry_run, policy)
        if (result.data or {}).get("action") == Action.NOTHING.value:
            return _certificates(cluster, connection, dry_run, policy, warn_days, rotate_days, result)
        return result


def _certificates(
    cluster: str,
    connection: str | None,
    dry_run: bool,
    policy: Policy,
    warn_days: float,
    rotate_days: float,
    healthy: State,
) -> State:
    """Warn about certificates close to expiry and rotate them within ``rotate_days``."""
    logger = get_run_logger()
    spec = load_spec(cluster)
    cas = load_certs(cluster)
    misfit = rotation_fits(rotate_days, cas.lifetimes.leaf) if cas else None
    if misfit:  # said, not refused: a threshold above the lifetime is also how to force a rotation now
        logger.warning("%s", misfit)
    rows = certificate_inventory(cluster, list(spec.zones), connection)
    now = now_utc()
    decision = expiry_decision(
        [(r["certificate"], dt.datetime.fromisoformat(r["not_after"])) for r in rows if r["not_after"]],
        now,
        warn_days=warn_days,
        rotate_days=rotate_days,
    )
    create_table_artifact(
        [{k: v for k, v in r.items() if k != "not_after"} for r in rows],
        key=f"{cluster}-certificates",
        description=f"Certificates of {cluster}: {len(decision.warn)} expire within {span_text(warn_days)}",
    )
    if not decision.warn:
        return healthy
    logger.warning("certificates of %s close to expiry:\n%s", cluster, decision.text)
    emit(
        "haplane.certificates.expiring",
        cluster_resource(cluster),
        {"certificates": {e.role: round(e.days_left, 2) for e in decision.warn}, "rotate": decision.rotate},
    )
    create_markdown_artifact(
        f"## Certificates of {cluster} close to expiry\n\n{decision.text}",
        key=f"{cluster}-certificates-expiring",
        description="certificates close to expiry",
    )
    if not decision.rotate or dry_run:
        return Completed(
            message=f"{len(decision.warn)} certificates expire within {span_text(warn_days)}",
            data={"action": "warn", "expiring": [e.role for e in decision.warn]},
        )
    go = may_rotate(remediation_history(cluster, policy.window_s, flow_name="rotate-certificates"), now, policy)
    if not go.allowed or cluster_busy(cluster):
        reason = go.reason if not go.allowed else f"cluster {cluster} is busy (its lock is held); rotating later"
        logger.warning("not rotating now: %s", reason)
        return Completed(message=reason, data={"action": "rotate-deferred", "reason": reason})
    try:
        # the lock first: a change that took it since the look above makes this check skip, not a failed
        # rotation counted towards giving up (rotate-certificates runs under this hold: re-entrant)
        with cluster_lock(cluster):
            logger.warning("rotating the certificates of %s: %s", cluster, go.reason)
            with tags(*remediation_tags(cluster, ROTATION_TARGET)):
                outcome = rotate_certificates(
                    cluster=cluster, connection=connection, change_id=go.change_id, return_state=True
                )
    except ClusterBusy as exc:
        msg = f"skipped: {exc}"
        logger.info(msg)
        emit("haplane.cluster.busy", cluster_resource(cluster), {"reason": str(exc)[:300], "would": "rotate"})
        return Completed(message=msg[:500], data={"action": "skipped", "reason": str(exc)})
    if outcome.is_completed():
        emit("haplane.certificates.rotated", cluster_resource(cluster), {"certificates": len(rows) - 1})
        return Completed(message="rotated the certificates", data={"action": "rotate"})
    msg = f"rotating the certificates failed ({outcome.name}: {outcome.message}); the next check backs off"
    emit("haplane.certificates.rotate-failed", cluster_resource(cluster), {"message": (outcome.message or "")[:300]})
    logger.error(msg)
    return Failed(message=msg, data={"action": "rotate-failed"})


def _zones(cluster: str, connection: str | None, dry_run: bool, grace_s: float, rebalance: bool) -> State | None:
    """The zone-outage rules (:func:`haplane.core.remediation.decide_zones`) first; None: nothing for them to do."""
    logger = get_run_logger()
    spec = load_spec(cluster)
    now = now_utc()
    state = observe_cluster(cluster, spec.region, connection, tolerate_zones=True)
    outages = track_outages(spec.zones_out, state.unavailable_zones, now)
    if outages != spec.zones_out:
        for zone in sorted(set(outages) - set(spec.zones_out)):
            emit("haplane.zone.unavailable", cluster_resource(cluster), {"zone": zone, "since": outages[zone]})
        try:  # recorded onto the spec as saved now, under the cluster lock (blocks/store.py)
            spec = update_spec(
                cluster,
                lambda saved: saved.model_copy(
                    update={"zones_out": track_outages(saved.zones_out, state.unavailable_zones, now)}
                ),
                wait_s=ZONES_OUT_LOCK_WAIT_S,
            )
            outages = spec.zones_out
        except ClusterBusy:  # a change holds the lock: the zone rules wait for it anyway; recorded next check
            logger.info("zone outage(s) %s not recorded now: a change holds the lock of %s", outages, cluster)
    verdict = decide_zones(
        state,
        outages,
        spec.stranded,
        now,
        grace_s=grace_s,
        zones=spec.zones,
        region_zones=zones_of(spec.region, connection),
        busy=cluster_busy(cluster),
        rebalance=rebalance,
    )
    if verdict.action is ZoneAction.NOTHING and not state.unavailable_zones:
        return None
    text = verdict.markdown()
    (logger.info if verdict.action is ZoneAction.NOTHING else logger.warning)("%s", text)
    create_markdown_artifact(text, key=f"{cluster}-zones", description=f"zone check of {cluster}: {verdict.action}")
    summary: dict[str, Any] = {
        "action": f"zone-{verdict.action.value}",
        "replica": verdict.replica,
        "reason": verdict.reason,
    }
    if verdict.action is ZoneAction.NOTHING:
        return None  # a zone is out, but none of this cluster's replicas is there: the usual check goes on
    if verdict.action is ZoneAction.UNKNOWN:  # never acted on: a person must look
        emit(
            "haplane.cluster.unknown",
            cluster_resource(cluster),
            {
                "reason": verdict.reason[:500],
                "unknown": [u.text for u in verdict.unknowns],
                "zones": sorted(state.unavailable_zones),
            },
        )
        return Completed(message=verdict.reason[:500], data={**summary, "action": "unknown"})
    if verdict.action is ZoneAction.CANNOT:
        emit(
            "haplane.cluster.cannot-remediate",
            cluster_resource(cluster),
            {"reason": verdict.reason, "zones": sorted(state.unavailable_zones)},
        )
        return Completed(message=verdict.reason[:500], data=summary)
    if verdict.action is ZoneAction.WAIT or dry_run:
        return Completed(message=verdict.reason[:500], data=summary)
    act = {
        ZoneAction.MOVE: move_out_of_zone,
        ZoneAction.ADD: add_owed_replacement,
        ZoneAction.DELETE_STALE: delete_stranded,
        ZoneAction.REBALANCE: zone_rebalance,
    }[verdict.action]
    result = act(cluster, connection, verdict)
    emit(
        f"haplane.zone.{verdict.action.value}",
        cluster_resource(cluster),
        {
            "replica": verdict.replica or "",
            "from": verdict.from_zone or "",
            "to": verdict.to_zone or "",
            "result": result if isinstance(result, str) else ", ".join(result or []),
        },
    )
    return Completed(message=f"{verdict.action.value}: {verdict.reason}"[:500], data={**summary, "result": result})


def _check(cluster: str, connection: str | None, dry_run: bool, policy: Policy) -> State:
    logger = get_run_logger()
    spec = load_spec(cluster)
    busy = cluster_busy(cluster)
    state = observe_cluster(cluster, spec.region, connection, tolerate_zones=True)
    view, why = (
        (QuorumView.HOLDS, "")
        if any(r.etcd_ok for r in state.replicas)
        else quorum_view(observe_quorum(spec, connection)[0])
    )
    if view is QuorumView.LOST:
        # no replacement can work without quorum, and none is tried; only restore-cluster can help
        age = newest_snapshot_age(cluster, spec)
        msg = (
            f"etcd of {cluster} has lost quorum: {why}. Membership changes "
            f"cannot fix that; restore-cluster can (newest snapshot: "
            f"{'none' if age is None else f'{age:.0f} s old'}). The health check never restores by itself."
        )
        logger.error("%s", msg)
        emit(
            "haplane.cluster.quorum-lost",
            cluster_resource(cluster),
            {"replicas": len(state.replicas), "newest_snapshot_age_s": age, "action": "run restore-cluster"},
        )
        publish_report(state, "health check: etcd quorum lost; run restore-cluster")
        return Completed(message=msg[:500], data={"action": "quorum-lost", "replica": None, "reason": msg})
    attempts = remediation_history(cluster, policy.window_s)
    verdict = decide(state, attempts, now_utc(), busy=busy, policy=policy)
    verdict = dataclasses.replace(verdict, leaders=tuple(lease.text for lease in state.leases))
    _leader_election(cluster, state)

    for f in verdict.findings:
        emit(
            "haplane.replica.unhealthy",
            replica_resource(cluster, f.replica),
            {"zone": f.zone, "problem": f.problem.value, "detail": f.detail},
        )
    publish_verdict(verdict)
    if verdict.action is Action.UNKNOWN:  # never acted on: a person must look
        logger.warning("%s", verdict.reason)
        emit(
            "haplane.cluster.unknown",
            cluster_resource(cluster),
            {"reason": verdict.reason[:500], "unknown": [u.text for u in verdict.unknowns]},
        )
    if verdict.unremediable:
        emit(
            "haplane.cluster.cannot-remediate",
            cluster_resource(cluster),
            {"reason": verdict.reason, "replicas": dict(verdict.unremediable)},
        )
    summary: dict[str, Any] = {"action": verdict.action.value, "replica": verdict.replica, "reason": verdict.reason}
    if verdict.findings:
        publish_report(state, f"health check: {verdict.action.value}: {verdict.reason}")
    if verdict.action not in (Action.REPLACE, Action.RESUME) or dry_run:
        return Completed(message=verdict.reason[:500], data=summary)
    return _act_under_lock(cluster, connection, spec.region, policy, summary)


def _leader_election(cluster: str, state: Any) -> None:
    """Event ``haplane.cluster.no-leader`` for each component with no leader past its lease duration
    (no Lease, or one not renewed within it); the Leases unread are said, never taken for "no leader"."""
    logger = get_run_logger()
    if state.leases_unknown is not None:
        logger.warning("%s", state.leases_unknown.text)
    for lease in state.leaderless():
        logger.warning("no leader: %s", lease.text)
        emit(
            "haplane.cluster.no-leader",
            cluster_resource(cluster),
            {
                "component": lease.component,
                "last_holder": lease.holder or "",
                "renewed": lease.renew_time or "",
                "lease_duration_s": lease.duration_s,
            },
        )


def _act_under_lock(
    cluster: str, connection: str | None, region: str, policy: Policy, summary: dict[str, Any]
) -> State:
    """Take the cluster lock, observe and decide again, and act only on that decision: a person's flow
    may have changed the cluster since the first look. A cluster whose lock is held is *skipped*
    (reported, event ``haplane.cluster.busy``), never a failed remediation."""
    logger = get_run_logger()
    try:
        with cluster_lock(cluster):  # re-entrant: the replace-replica subflow runs under this hold
            state = observe_cluster(cluster, region, connection)
            attempts = remediation_history(cluster, policy.window_s)
            verdict = decide(state, attempts, now_utc(), busy=False, policy=policy)
            if verdict.action not in (Action.REPLACE, Action.RESUME):
                msg = f"decided again under the lock: {verdict.action.value}: {verdict.reason}"
                logger.info(msg)
                return Completed(
                    message=msg[:500],
                    data={
                        "action": verdict.action.value,
                        "replica": verdict.replica,
                        "reason": verdict.reason,
                        "first_look": summary,
                    },
                )
            return _replace(
                cluster,
                connection,
                state,
                verdict,
                {"action": verdict.action.value, "replica": verdict.replica, "reason": verdict.reason},
            )
    except ClusterBusy as exc:
        msg = f"skipped: {exc}"
        logger.info(msg)
        emit(
            "haplane.cluster.busy",
            cluster_resource(cluster),
            {"reason": str(exc)[:300], "would": summary.get("action", "")},
        )
        return Completed(message=msg[:500], data={**summary, "action": "skipped", "reason": str(exc)})


def _replace(cluster: str, connection: str | None, state: Any, verdict: Any, summary: dict[str, Any]) -> State:
    logger = get_run_logger()
    logger.warning("replacing %s of %s: %s", verdict.replica, cluster, verdict.reason)
    with tags(*remediation_tags(cluster, verdict.replica)):
        outcome = replace_replica(
            cluster=cluster,
            replica_name=verdict.replica,
            connection=connection,
            change_id=verdict.change_id,
            return_state=True,
        )
    if outcome.is_completed():
        rows = outcome.result()
        before = {r.name for r in state.replicas}
        new = [r["replica"] for r in rows if r["replica"] not in before]
        emit(
            "haplane.replica.replaced",
            replica_resource(cluster, verdict.replica),
            {
                "zone": next((f.zone for f in verdict.findings if f.replica == verdict.replica), ""),
                "replacement": new[0] if new else "",
                "healthy": all(r["health"] == "healthy" for r in rows),
            },
        )
        logger.info("replaced %s of %s by %s", verdict.replica, cluster, new)
        return Completed(message=f"replaced {verdict.replica} by {', '.join(new)}", data={**summary, "new": new})
    msg = f"replacing {verdict.replica} failed ({outcome.name}: {outcome.message}); the next check backs off"
    emit(
        "haplane.replica.replace-failed",
        replica_resource(cluster, verdict.replica),
        {"state": outcome.name or "", "message": (outcome.message or "")[:300]},
    )
    logger.error(msg)
    return Failed(message=msg, data=summary)
