"""The cluster's three firewall rules: what they admit (:func:`firewall_rules`), firewall, delete-firewall."""

from __future__ import annotations

import ipaddress
import socket

from prefect import get_run_logger

from haplane.cloud.gce import OpRef
from haplane.core.steps import PlanStep, StepKind
from haplane.core.topology import ClusterNames
from haplane.node.spec import APISERVER_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, HEALTH_PORT
from tasks.kinds import Args, Kind, Run, gce
from tasks.kinds._owned import described, ours_to_delete, refuse_look_alike
from tasks.operations import Step
from tasks.steps import Change, checkpoint

# Google's health-check probers (documented source ranges for legacy HTTP health checks).
HEALTH_CHECK_RANGES = ["35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22"]


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


def _firewall(run: Run, s: PlanStep, a: Args) -> Step:
    """A cluster firewall rule; with no operator range in the spec, etcd's client port admits this
    worker's own egress address toward the endpoint IP (reserved by the step before)."""
    operator = run.spec.operator_ranges
    if not operator:
        operator = default_operator_ranges(run.change.gce().get_address(run.spec.region, run.names.address).address)
        get_run_logger().info(
            "etcd's client port admits this worker's egress %s (operator_ranges not given; give "
            "them when workers reach the VMs through NAT or from other hosts)",
            operator[0],
        )
    rule = firewall_rules(run.change.cluster, run.spec.api_source_ranges, operator)[a["name"]]
    return Step(submit_firewall, s.id, s.text, (a["name"], rule))


KINDS = (
    Kind(StepKind.FIREWALL, submit=_firewall),
    Kind(StepKind.DELETE_FIREWALL, submit=gce(submit_delete_firewall, lambda run, a: (a["name"],))),
)
