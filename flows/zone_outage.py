"""What the health check does about a zone outage (decided by :func:`haplane.core.remediation.decide_zones`).

Not a flow of its own: the health-check flow calls these. Each runs a plan of
:mod:`haplane.core.plans` through the one change skeleton (:func:`flows.change.run_change`:
lock, observe, plan, publish, execute, report), observing the cluster with the
zones that do not answer recorded as such rather than failing the run.

- :func:`move_out_of_zone` (``plan_zone_move``): the stranded VM is recorded in the spec
  first, its etcd member is removed (its peers refuse it from then on: a VM that comes
  back cannot rejoin as a voter), it leaves the target pool, then the replacement is added
  in another zone (learner first) unless another dead voter must go first.
- :func:`add_owed_replacement` (``plan_replacement_of``): the replacement a move had to leave.
- :func:`delete_stranded` (``plan_delete_stranded``): once the zone answers, its stranded VMs go.
- :func:`rebalance` (``plan_replace`` into another zone): remove one replica of a crowded
  zone, add one in an empty zone.
"""

from __future__ import annotations

from prefect.runtime import flow_run

from blocks.store import load_spec
from flows.change import run_change
from haplane.core.plans import plan_delete_stranded, plan_replace, plan_replacement_of, plan_zone_move
from haplane.core.remediation import ZoneVerdict
from tasks.cluster import zones_of
from tasks.steps import Change


def _change(cluster: str, connection: str | None, what: str) -> Change:
    return Change(cluster, f"{what}-{flow_run.get_id()}", connection)


def move_out_of_zone(cluster: str, connection: str | None, verdict: ZoneVerdict) -> str:
    spec = load_spec(cluster)
    change = _change(cluster, connection, "zone-move")
    known = zones_of(spec.region, connection)
    plan = run_change(
        change,
        spec,
        lambda state, _: plan_zone_move(
            state, verdict.replica, verdict.to_zone, change.change_id, known, spec.zones, verdict.add_now
        ),
        report=False,
        tolerate_zones=True,
    )
    return plan.new_replicas[0][0] if plan.new_replicas else ""


def add_owed_replacement(cluster: str, connection: str | None, verdict: ZoneVerdict) -> str:
    spec = load_spec(cluster)
    change = _change(cluster, connection, "zone-add")
    known = zones_of(spec.region, connection)
    plan = run_change(
        change,
        spec,
        lambda state, _: plan_replacement_of(
            state, verdict.replica, verdict.to_zone, change.change_id, known, spec.zones
        ),
        report=False,
        tolerate_zones=True,
    )
    return plan.replica or ""


def delete_stranded(cluster: str, connection: str | None, verdict: ZoneVerdict) -> str:
    spec = load_spec(cluster)
    change = _change(cluster, connection, "zone-clean")
    stale = [(s.name, s.zone) for s in verdict.stale]
    run_change(change, spec, lambda state, _: plan_delete_stranded(state, stale), report=False, tolerate_zones=True)
    return ", ".join(n for n, _ in stale)


def rebalance(cluster: str, connection: str | None, verdict: ZoneVerdict) -> str:
    spec = load_spec(cluster)
    change = _change(cluster, connection, "rebalance")
    known = zones_of(spec.region, connection)

    def plan_for(state, _):
        removal, addition = plan_replace(
            state, verdict.replica, change.change_id, known, spec.zones, spec.load_balancer, to_zone=verdict.to_zone
        )
        return removal.then(addition, "rebalance")

    plan = run_change(change, spec, plan_for, report=False)
    return plan.replica or ""
