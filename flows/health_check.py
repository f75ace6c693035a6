"""health-check: find failed replicas and replace one when that is safe (scheduled per cluster).

Finds a VM gone or stopped, a replica that never joined etcd, a learner that
never caught up, an etcd member unhealthy or unreachable, an API server not
ready. Decides with the pure rules of :mod:`haplane.remediation` (one
replacement at a time, never when quorum would be lost, back-off after
repeated failures of the same replica) and says why in its log and in the
``<cluster>-health`` artifact. Acts by running replace-replica as a subflow.

Locks: the check holds ``health-<cluster>`` for its whole run, so two checks of
one cluster never overlap. Before acting it takes ``cluster-<cluster>``, observes
and decides again under it, and runs replace-replica under that same hold (the
lock is re-entrant within a run); a cluster whose lock another flow holds is
*skipped* (event ``haplane.cluster.busy``), never a failed remediation.
With nothing wrong, it changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger, tags
from prefect.states import Completed, Failed, State
from pydantic import Field

from flows.params import ClusterName, Connection, documented
from flows.replace_replica import replace_replica
from haplane.observe import now_utc
from haplane.remediation import Action, Policy, decide
from haplane.topology import check_cluster_name
from tasks.cluster import ClusterBusy, cluster_lock, load_spec, observe_cluster, publish_report
from tasks.health import (
    cluster_busy,
    cluster_resource,
    emit,
    health_lock,
    health_lock_name,
    publish_verdict,
    remediation_history,
    remediation_tags,
    replica_resource,
)


@flow(name="health-check", log_prints=True)
@documented
def health_check(
    cluster: ClusterName,
    connection: Connection = None,
    dry_run: Annotated[bool, Field(description="Decide and explain, but replace nothing")] = False,
    max_failures: Annotated[int, Field(ge=1, le=10, description="Give up on a replica after this many failed "
                                                                 "replacements in a row")] = 3,
    backoff_s: Annotated[float, Field(ge=0, le=86400, description="Wait after a failed replacement; doubles "
                                                                   "with each further failure (max 1 h)")] = 300.0,
) -> State:
    logger = get_run_logger()
    check_cluster_name(cluster)
    with health_lock(cluster) as held:
        if not held:
            msg = (f"another health check of {cluster!r} is running (lock {health_lock_name(cluster)!r}); "
                   f"this one skips")
            logger.info(msg)
            return Completed(message=msg, data={"action": "skipped", "reason": msg})
        return _check(cluster, connection, dry_run, Policy(max_failures=max_failures, backoff_base_s=backoff_s,
                                                            backoff_max_s=max(3600.0, backoff_s)))


def _check(cluster: str, connection: str | None, dry_run: bool, policy: Policy) -> State:
    logger = get_run_logger()
    spec = load_spec(cluster)
    busy = cluster_busy(cluster)
    state = observe_cluster(cluster, spec.region, connection)
    attempts = remediation_history(cluster, policy.window_s)
    verdict = decide(state, attempts, now_utc(), busy=busy, policy=policy)

    for f in verdict.findings:
        emit("haplane.replica.unhealthy", replica_resource(cluster, f.replica),
             {"zone": f.zone, "problem": f.problem.value, "detail": f.detail})
    publish_verdict(verdict)
    if verdict.action is Action.UNKNOWN:  # never acted on: a person must look
        logger.warning("%s", verdict.reason)
        emit("haplane.cluster.unknown", cluster_resource(cluster),
             {"reason": verdict.reason[:500], "unknown": [u.text for u in verdict.unknowns]})
    if verdict.unremediable:
        emit("haplane.cluster.cannot-remediate", cluster_resource(cluster),
             {"reason": verdict.reason, "replicas": dict(verdict.unremediable)})
    summary: dict[str, Any] = {"action": verdict.action.value, "replica": verdict.replica, "reason": verdict.reason}
    if verdict.findings:
        publish_report(state, f"health check: {verdict.action.value}: {verdict.reason}")
    if verdict.action not in (Action.REPLACE, Action.RESUME) or dry_run:
        return Completed(message=verdict.reason[:500], data=summary)
    return _act_under_lock(cluster, connection, spec.region, policy, summary)


def _act_under_lock(cluster: str, connection: str | None, region: str, policy: Policy,
                    summary: dict[str, Any]) -> State:
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
                return Completed(message=msg[:500], data={"action": verdict.action.value, "replica": verdict.replica,
                                                         "reason": verdict.reason, "first_look": summary})
            return _replace(cluster, connection, state, verdict,
                            {"action": verdict.action.value, "replica": verdict.replica, "reason": verdict.reason})
    except ClusterBusy as exc:
        msg = f"skipped: {exc}"
        logger.info(msg)
        emit("haplane.cluster.busy", cluster_resource(cluster), {"reason": str(exc)[:300],
                                                                 "would": summary.get("action", "")})
        return Completed(message=msg[:500], data={**summary, "action": "skipped", "reason": str(exc)})


def _replace(cluster: str, connection: str | None, state: Any, verdict: Any, summary: dict[str, Any]) -> State:
    logger = get_run_logger()
    logger.warning("replacing %s of %s: %s", verdict.replica, cluster, verdict.reason)
    with tags(*remediation_tags(cluster, verdict.replica)):
        outcome = replace_replica(cluster=cluster, replica_name=verdict.replica, connection=connection,
                                  change_id=verdict.change_id, return_state=True)
    if outcome.is_completed():
        rows = outcome.result()
        before = {r.name for r in state.replicas}
        new = [r["replica"] for r in rows if r["replica"] not in before]
        emit("haplane.replica.replaced", replica_resource(cluster, verdict.replica),
             {"zone": next((f.zone for f in verdict.findings if f.replica == verdict.replica), ""),
              "replacement": new[0] if new else "", "healthy": all(r["health"] == "healthy" for r in rows)})
        logger.info("replaced %s of %s by %s", verdict.replica, cluster, new)
        return Completed(message=f"replaced {verdict.replica} by {', '.join(new)}", data={**summary, "new": new})
    msg = f"replacing {verdict.replica} failed ({outcome.name}: {outcome.message}); the next check backs off"
    emit("haplane.replica.replace-failed", replica_resource(cluster, verdict.replica),
         {"state": outcome.name or "", "message": (outcome.message or "")[:300]})
    logger.error(msg)
    return Failed(message=msg, data=summary)
