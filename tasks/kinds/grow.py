"""grow: one replica more after a restore, through add-replica's path, as a change of its own
(``<restore change id>-grow-N``) whose plan, made on the cluster as observed when its turn comes, this
executor runs next (:class:`tasks.kinds.SubPlan`)."""

from __future__ import annotations

import time

from prefect import get_run_logger

from haplane.core.plans import plan_add
from haplane.core.steps import PlanStep, StepKind
from tasks.cluster import observe_cluster, publish_plan, zones_of
from tasks.kinds import Args, Kind, Run, SubPlan
from tasks.steps import Change


def _grow(run: Run, s: PlanStep, a: Args) -> SubPlan | None:
    cluster, connection = run.change.cluster, run.change.connection
    sub = Change(cluster, a["change"], connection)
    current = observe_cluster(cluster, run.spec.region, connection)
    if len(current.voting) >= a["grow_to"]:
        get_run_logger().info("%s has %d voting members already: no replica added", cluster, len(current.voting))
        return None
    addition = plan_add(current, None, sub.change_id, zones_of(run.spec.region, connection), run.spec.zones)
    publish_plan(addition, sub)
    return SubPlan(Run(sub, run.spec), addition)


def _etcd_back(run: Run, s: PlanStep, a: Args) -> None:
    """The restored etcd answered (the steps before the first grow waited for its quorum): measured once."""
    run.figures.setdefault("etcd_back_s", time.monotonic() - run.started)


KINDS = (Kind(StepKind.GROW, act=_grow, before=_etcd_back),)
