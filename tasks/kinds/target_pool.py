"""The load balancer's target pool and its members: target-pool, pool-add, pool-remove, delete-target-pool."""

from __future__ import annotations

from haplane.cloud.gce import OpRef
from haplane.core.steps import StepKind
from haplane.core.topology import ClusterNames
from tasks.kinds import Kind, Run, gce
from tasks.kinds._owned import described, ours_to_delete, refuse_look_alike
from tasks.steps import Change, checkpoint


@checkpoint
def submit_target_pool(change: Change, step: str, region: str, instances: list[str]) -> OpRef | None:
    """Create the pool with ``instances`` (self links), or add the missing ones to an existing pool."""
    gce, names = change.gce(), ClusterNames(change.cluster)
    refuse_look_alike(change, "target_pool", names.target_pool, region)
    pool = gce.get_target_pool(region, names.target_pool)
    if pool is None:
        return gce.insert_target_pool(
            region,
            names.target_pool,
            instances=instances,
            health_check=names.health_check,
            rid=change.rid(step),
            description=described(change, "load balancer pool"),
        )
    missing = [link for link in instances if link not in pool.instances]
    if not missing:
        return None
    return gce.add_pool_instances(region, names.target_pool, missing, rid=change.rid(step))


@checkpoint
def submit_pool_remove(change: Change, step: str, region: str, instance: str) -> OpRef | None:
    gce, names = change.gce(), ClusterNames(change.cluster)
    pool = gce.get_target_pool(region, names.target_pool)
    if pool is None or instance not in pool.instances:
        return None
    return gce.remove_pool_instances(region, names.target_pool, [instance], rid=change.rid(step))


@checkpoint
def submit_delete_target_pool(change: Change, step: str, region: str) -> OpRef | None:
    gce, names = change.gce(), ClusterNames(change.cluster)
    if not ours_to_delete(change, "target_pool", names.target_pool, region):
        return None
    return gce.delete_target_pool(region, names.target_pool, rid=change.rid(step))


def _link(run: Run, zone: str, name: str) -> str:
    return run.change.gce().instance_link(zone, name)


KINDS = (
    Kind(
        StepKind.TARGET_POOL,
        submit=gce(submit_target_pool, lambda run, a: (a["region"], [_link(run, z, n) for z, n in a["instances"]])),
    ),
    Kind(
        StepKind.POOL_ADD,
        submit=gce(submit_target_pool, lambda run, a: (a["region"], [_link(run, a["zone"], a["name"])])),
    ),
    Kind(
        StepKind.POOL_REMOVE,  # link: a VM gone, its zone unknown
        submit=gce(submit_pool_remove, lambda run, a: (a["region"], a.get("link") or _link(run, a["zone"], a["name"]))),
    ),
    Kind(StepKind.DELETE_TARGET_POOL, submit=gce(submit_delete_target_pool, lambda run, a: (a["region"],))),
)
