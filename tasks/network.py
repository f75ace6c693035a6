"""Network tasks: the endpoint IP, firewall rules, and the load balancer (health check, pool, rule).

Each submit looks at GCE first and returns ``None`` when its effect is already there.
"""

from __future__ import annotations

import ipaddress
import socket

from prefect import get_run_logger

from haplane.gce import OpRef
from haplane.node import APISERVER_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, HEALTH_PORT
from haplane.ownership import LookAlike, owned, stamp, uid_in
from haplane.topology import ClusterNames
from tasks.steps import Change, checkpoint, cluster_uid

# Google's health-check probers (documented source ranges for legacy HTTP health checks).
HEALTH_CHECK_RANGES = ["35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22"]


def presence(change: Change, kind: str, name: str, region: str | None = None) -> str:
    """``absent``, ``ours`` (carries the cluster's uid) or ``foreign`` (a look-alike under its name)."""
    description = change.gce().description_of(kind, name, region)
    if description is None:
        return "absent"
    return "ours" if owned(uid_in(description), cluster_uid(change.cluster)) else "foreign"


def refuse_look_alike(change: Change, kind: str, name: str, region: str | None = None) -> bool:
    """Before creating: True if the cluster's own resource is there already; a look-alike is refused."""
    found = presence(change, kind, name, region)
    if found == "foreign":
        uid = cluster_uid(change.cluster) or ""
        raise LookAlike(
            f"{kind.replace('_', ' ')} {name}",
            change.cluster,
            uid_in(change.gce().description_of(kind, name, region)),
            uid,
        )
    return found == "ours"


def ours_to_delete(change: Change, kind: str, name: str, region: str | None = None) -> bool:
    """Before deleting: True if the cluster's own resource is there; a look-alike is reported and kept."""
    found = presence(change, kind, name, region)
    if found == "foreign":
        get_run_logger().warning(
            "%s %s has cluster %s's name but not its uid: a look-alike, not deleted",
            kind.replace("_", " "),
            name,
            change.cluster,
        )
    return found == "ours"


def described(change: Change, what: str) -> str:
    return stamp(f"haplane cluster {change.cluster}: {what}", cluster_uid(change.cluster))


@checkpoint
def submit_reserve_address(change: Change, step: str, region: str, address: str | None = None) -> OpRef | None:
    """Reserve the cluster's static endpoint IP (``address`` promotes an ephemeral IP in use)."""
    gce, names = change.gce(), ClusterNames(change.cluster)
    if refuse_look_alike(change, "address", names.address, region):
        found = gce.get_address(region, names.address)
        if address and found.address != address:
            raise RuntimeError(f"address {names.address} already holds {found.address}, not {address}")
        return None
    return gce.insert_address(
        region, names.address, address=address, rid=change.rid(step), description=described(change, "endpoint IP")
    )


@checkpoint
def submit_release_address(change: Change, step: str, region: str) -> OpRef | None:
    gce, names = change.gce(), ClusterNames(change.cluster)
    if not ours_to_delete(change, "address", names.address, region):
        return None
    return gce.delete_address(region, names.address, rid=change.rid(step))


def check_source_ranges(ranges: list[str], parameter: str) -> list[str]:
    """Refuse what a GCE firewall would refuse (not an IPv4 CIDR), naming the value and the fix."""
    for value in ranges:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            net = None
        if net is None or net.version != 4:
            raise ValueError(
                f"{parameter}: {value!r} is not an IPv4 range; give CIDRs such as "
                "'203.0.113.7/32' (one address) or '10.128.0.0/20'"
            )
    return list(ranges)


def worker_egress(target_ip: str) -> str:
    """The source address this worker's packets to ``target_ip`` leave with (the kernel's route choice).

    A worker inside the VPC (or over VPN) is seen by the VMs from this address; behind NAT it is
    not, and the operator range must be given explicitly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((target_ip, ETCD_CLIENT_PORT))  # UDP: chooses a route, sends nothing
        return probe.getsockname()[0]


def default_operator_ranges(endpoint_ip: str) -> list[str]:
    """The operator range when none is given: this worker's own egress address toward the cluster."""
    return [f"{worker_egress(endpoint_ip)}/32"]


def firewall_rules(cluster: str, api_source_ranges: list[str], operator_ranges: list[str]) -> dict[str, dict]:
    """The three rules of a cluster: etcd peers among replicas; etcd clients from replicas and the
    operator; the API server (and its health port) from the configured range and GCE's probers."""
    names = ClusterNames(cluster)
    tag = [names.tag]
    return {
        names.firewall_etcd_peer: dict(
            ports=[str(ETCD_PEER_PORT)],
            source_ranges=[],
            source_tags=tag,
            target_tags=tag,
            description="etcd peer traffic between replicas",
        ),
        names.firewall_etcd_client: dict(
            ports=[str(ETCD_CLIENT_PORT)],
            source_ranges=list(operator_ranges),
            source_tags=tag,
            target_tags=tag,
            description="etcd clients: API servers and the operator",
        ),
        names.firewall_apiserver: dict(
            ports=[str(APISERVER_PORT), str(HEALTH_PORT)],
            source_ranges=sorted(set(api_source_ranges) | set(HEALTH_CHECK_RANGES)),
            source_tags=[],
            target_tags=tag,
            description="Kubernetes API server",
        ),
    }


@checkpoint
def submit_firewall(change: Change, step: str, name: str, rule: dict) -> OpRef | None:
    gce = change.gce()
    if refuse_look_alike(change, "firewall", name):
        return None
    rule = {**rule, "description": described(change, rule.get("description", ""))}
    return gce.insert_firewall(name, rid=change.rid(step), **rule)


@checkpoint
def submit_delete_firewall(change: Change, step: str, name: str) -> OpRef | None:
    gce = change.gce()
    if not ours_to_delete(change, "firewall", name):
        return None
    return gce.delete_firewall(name, rid=change.rid(step))


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
