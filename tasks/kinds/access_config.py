"""A replica VM's external IP (its access config): release-ip and ephemeral-ip (the endpoint IP moves
from the first replica to the load balancer, 1 -> 2), drop-ephemeral-ip and endpoint-ip (back, 2 -> 1).
Taking the endpoint IP off a replica starts the downtime clock; giving it to one stops it."""

from __future__ import annotations

from prefect import get_run_logger

from haplane.cloud.gce import OpRef
from haplane.core.steps import StepKind
from tasks.kinds import Kind, gce
from tasks.steps import Change, checkpoint


@checkpoint
def submit_drop_access_config(
    change: Change, step: str, zone: str, name: str, only_if_ip: str | None = None, unless_ip: str | None = None
) -> OpRef | None:
    """Remove a VM's external access config: only if it carries ``only_if_ip``, never if ``unless_ip``."""
    gce = change.gce()
    vm = gce.get_instance(zone, name)
    if (
        vm is None
        or vm.external_ip is None
        or (only_if_ip and vm.external_ip != only_if_ip)
        or (unless_ip and vm.external_ip == unless_ip)
    ):
        return None
    return gce.delete_access_config(zone, name, rid=change.rid(step))


@checkpoint
def submit_give_access_config(
    change: Change, step: str, zone: str, name: str, nat_ip: str | None = None
) -> OpRef | None:
    """Give a VM an external IP: ``nat_ip`` (a reserved address) or a new ephemeral one."""
    gce = change.gce()
    vm = gce.get_instance(zone, name)
    if vm is None:
        raise RuntimeError(f"VM {name} in {zone} is gone; cannot give it an external IP")
    if vm.external_ip is not None:
        if nat_ip and vm.external_ip != nat_ip:
            raise RuntimeError(f"VM {name} already has external IP {vm.external_ip}; drop it before giving {nat_ip}")
        return None
    return gce.add_access_config(zone, name, nat_ip=nat_ip, rid=change.rid(step))


def _zone_name(run, a) -> tuple:
    return (a["zone"], a["name"])


KINDS = (
    Kind(
        StepKind.RELEASE_IP,
        submit=gce(submit_drop_access_config, _zone_name, lambda run, a: {"only_if_ip": a["only_if_ip"]}),
        before=lambda run, s, a: run.endpoint_down(),
        after=lambda run, s, a: get_run_logger().warning(
            "endpoint %s is down until the load balancer answers", a["only_if_ip"]
        ),
    ),
    Kind(StepKind.EPHEMERAL_IP, submit=gce(submit_give_access_config, _zone_name)),
    Kind(
        StepKind.DROP_EPHEMERAL_IP,
        submit=gce(submit_drop_access_config, _zone_name, lambda run, a: {"unless_ip": a["unless_ip"]}),
    ),
    Kind(
        StepKind.ENDPOINT_IP,
        submit=gce(submit_give_access_config, _zone_name, lambda run, a: {"nat_ip": a["ip"]}),
        after=lambda run, s, a: run.endpoint_back(a["ip"]),
    ),
)
