"""The load balancer's legacy HTTP health check (the API server's health port): health-check,
delete-health-check."""

from __future__ import annotations

from haplane.cloud.gce import OpRef
from haplane.core.steps import StepKind
from haplane.core.topology import ClusterNames
from haplane.node.spec import HEALTH_PORT
from tasks.kinds import Kind, gce
from tasks.kinds._owned import described, ours_to_delete, refuse_look_alike
from tasks.steps import Change, checkpoint


@checkpoint
def submit_health_check(change: Change, step: str) -> OpRef | None:
    gce, names = change.gce(), ClusterNames(change.cluster)
    if refuse_look_alike(change, "health_check", names.health_check):
        return None
    return gce.insert_health_check(
        names.health_check,
        port=HEALTH_PORT,
        path="/healthz",
        rid=change.rid(step),
        description=described(change, "load balancer health check"),
    )


@checkpoint
def submit_delete_health_check(change: Change, step: str) -> OpRef | None:
    gce, names = change.gce(), ClusterNames(change.cluster)
    if not ours_to_delete(change, "health_check", names.health_check):
        return None
    return gce.delete_health_check(names.health_check, rid=change.rid(step))


KINDS = (
    Kind(StepKind.HEALTH_CHECK, submit=gce(submit_health_check)),
    Kind(StepKind.DELETE_HEALTH_CHECK, submit=gce(submit_delete_health_check)),
)
