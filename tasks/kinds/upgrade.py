"""upgrade-replica: one replica of an upgrade replaced by one at the target versions, as a change of its own
whose plan (a replacement) this executor runs next (:class:`tasks.kinds.SubPlan`)."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger

from haplane.core.steps import PlanStep, StepKind
from haplane.core.topology import label_value
from haplane.core.versions import VersionRefused, check_whole
from tasks.cluster import observe_cluster, publish_plan, zones_of
from tasks.kinds import Args, Kind, Run, SubPlan
from tasks.replace import plan_replacement
from tasks.steps import Change


def _upgrade_replica(run: Run, s: PlanStep, a: Args) -> SubPlan | None:
    """One replica of an upgrade replaced by one at the target versions (``run.spec``'s): a change of its
    own (``a["change"]``), planned on the cluster as observed now and run through this executor. Done
    already (the replica gone, its replacement a healthy voter): skipped. Not started yet: it waits
    for the cluster to be whole first (every replica healthy, no learner), as the upgrade's rules ask."""
    cluster, connection = run.change.cluster, run.change.connection
    sub = Change(cluster, a["change"], connection)
    state = observe_cluster(cluster, run.spec.region, connection)
    victim, new = state.replica(a["name"]), [r for r in state.vms if r.change == label_value(sub.change_id)]
    if victim is None and new and new[0].healthy and new[0].etcd_version == a["etcd_to"]:
        get_run_logger().info(
            "%s was replaced by %s (etcd %s) already: not again", a["name"], new[0].name, new[0].etcd_version
        )
        return None
    if victim is not None and not new:
        state = _wait_whole(run, a["name"], state)
    plan = plan_replacement(
        sub, run.spec, zones_of(run.spec.region, connection), a["name"], state, True, action="upgrade-replica"
    )
    publish_plan(plan, sub)
    return SubPlan(Run(sub, run.spec), plan)


def _wait_whole(run: Run, name: str, state: Any, timeout: float = 180.0) -> Any:
    """The cluster, once every replica is healthy and no learner is pending (between two replacements)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_whole(state)
            return state
        except VersionRefused as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not replacing {name}: the cluster did not become whole in {timeout:.0f} s "
                    f"({exc}); nothing more was changed: look at the replica table, then resume "
                    f"with the same change_id"
                ) from None
        time.sleep(1.0)
        state = observe_cluster(run.change.cluster, run.spec.region, run.change.connection)


KINDS = (Kind(StepKind.UPGRADE_REPLICA, act=_upgrade_replica),)
