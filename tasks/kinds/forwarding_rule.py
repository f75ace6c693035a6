"""The load balancer's front, a forwarding rule on the endpoint IP (about 20 minutes on GCE):
forwarding-rule, delete-forwarding-rule. Deleting it starts the endpoint's downtime clock; creating it
(while the clock runs: the IP moved off a replica) stops it."""

from __future__ import annotations

from prefect import get_run_logger

from haplane.cloud.gce import OpRef
from haplane.core.steps import PlanStep, StepKind
from haplane.core.topology import ClusterNames
from haplane.node.spec import APISERVER_PORT
from tasks.kinds import Args, Kind, Run, gce
from tasks.kinds._owned import described, ours_to_delete, refuse_look_alike
from tasks.steps import Change, checkpoint


@checkpoint
def submit_forwarding_rule(change: Change, step: str, region: str, ip: str) -> OpRef | None:
    """The load balancer's front: a rule on the static endpoint IP to the pool (the seed's ~20 minutes)."""
    gce, names = change.gce(), ClusterNames(change.cluster)
    if refuse_look_alike(change, "forwarding_rule", names.forwarding_rule, region):
        return None
    get_run_logger().info("creating the load balancer on %s; on GCE this takes about 20 minutes to propagate", ip)
    return gce.insert_forwarding_rule(
        region,
        names.forwarding_rule,
        ip=ip,
        pool=names.target_pool,
        port=APISERVER_PORT,
        rid=change.rid(step),
        description=described(change, "load balancer"),
    )


@checkpoint
def submit_delete_forwarding_rule(change: Change, step: str, region: str) -> OpRef | None:
    gce, names = change.gce(), ClusterNames(change.cluster)
    if not ours_to_delete(change, "forwarding_rule", names.forwarding_rule, region):
        return None
    return gce.delete_forwarding_rule(region, names.forwarding_rule, rid=change.rid(step))


def _deleted(run: Run, s: PlanStep, a: Args) -> None:
    if run.down_since is not None:
        get_run_logger().warning("the load balancer is gone: the endpoint is down until a replica carries its IP")


KINDS = (
    Kind(
        StepKind.FORWARDING_RULE,
        submit=gce(submit_forwarding_rule, lambda run, a: (a["region"], a["ip"]), load_balancer=True),
        after=lambda run, s, a: run.endpoint_back(a["ip"]),
    ),
    Kind(
        StepKind.DELETE_FORWARDING_RULE,
        submit=gce(submit_delete_forwarding_rule, lambda run, a: (a["region"],), load_balancer=True),
        before=lambda run, s, a: run.endpoint_down(),
        after=_deleted,
    ),
)
