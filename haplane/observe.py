"""Observe a cluster: rebuild its picture from GCE (labelled instances, address, LB) and etcd.

Nothing is remembered between runs; every flow starts from :func:`observe`.
The result is plain data (:class:`ClusterState`) that the pure rules in
:mod:`haplane.quorum` and :mod:`haplane.plans` decide on.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass, field, replace

import httpx
from cryptography import x509

from haplane.etcd import EndpointStatus, EtcdClient, EtcdError, EtcdTLS, Member
from haplane.gce import Gce, GceZoneUnavailable, Instance
from haplane.node import APISERVER_PORT, client_url, peer_url
from haplane.topology import LABEL_CHANGE, LABEL_CLUSTER, LABEL_MULTIZONE, LABEL_QUORUM_READS, ClusterNames


@dataclass(frozen=True)
class ReplicaState:
    name: str
    zone: str
    vm_status: str  # GCE status; "MISSING" for an etcd member whose VM is gone; "UNKNOWN" when its zone is out
    internal_ip: str = ""
    external_ip: str | None = None
    change: str | None = None  # the change that created it (label)
    member_id: int | None = None
    learner: bool = False
    started: bool = False  # the member has started (it has a name and client URLs)
    etcd_ok: bool = False  # a linearizable read through this member succeeded
    leader: bool = False
    api_ready: bool = False
    cert_not_after: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.vm_status == "RUNNING" and self.etcd_ok and not self.learner and self.api_ready

    @property
    def role(self) -> str:
        if self.member_id is None:
            return "none"
        if self.learner:
            return "learner"
        return "leader" if self.leader else "follower"


@dataclass(frozen=True)
class ClusterState:
    cluster: str
    region: str
    replicas: tuple[ReplicaState, ...]
    endpoint_ip: str | None = None
    address_status: str | None = None
    load_balancer: bool = False
    target_pool: bool = False
    pool_members: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    unavailable_zones: tuple[str, ...] = ()  # zones whose API did not answer (observed with tolerate_zones)

    @property
    def names(self) -> ClusterNames:
        return ClusterNames(self.cluster)

    def replica(self, name: str) -> ReplicaState | None:
        return next((r for r in self.replicas if r.name == name), None)

    @property
    def vms(self) -> tuple[ReplicaState, ...]:
        return tuple(r for r in self.replicas if r.vm_status != "MISSING")

    @property
    def voting(self) -> tuple[ReplicaState, ...]:
        return tuple(r for r in self.replicas if r.member_id is not None and not r.learner)

    @property
    def leader(self) -> ReplicaState | None:
        return next((r for r in self.replicas if r.leader), None)

    def endpoints(self) -> list[str]:
        return [client_url(r.internal_ip) for r in self.vms if r.internal_ip and r.vm_status == "RUNNING"]


def etcd_client(tls: EtcdTLS | None, endpoints: list[str], timeout: float = 3.0) -> EtcdClient:
    return EtcdClient(endpoints, tls=tls, timeout=timeout)


def _api_probe(ip: str, ca_pem: str | None) -> tuple[bool, str | None, str | None]:
    """(ready, certificate notAfter, problem) for the API server at ``ip``, TLS verified against the CA."""
    if ca_pem is None:
        return False, None, "no cluster CA to verify the API server with"
    ctx = ssl.create_default_context(cadata=ca_pem)
    try:
        with socket.create_connection((ip, APISERVER_PORT), timeout=2.0) as raw, \
                ctx.wrap_socket(raw, server_hostname=ip) as tls:
            der = tls.getpeercert(binary_form=True)
        not_after = x509.load_der_x509_certificate(der).not_valid_after_utc.isoformat() if der else None
        with httpx.Client(verify=ctx, timeout=2.0) as http:
            resp = http.get(f"https://{ip}:{APISERVER_PORT}/readyz")
    except (OSError, httpx.HTTPError) as exc:
        return False, None, f"API server unreachable: {type(exc).__name__}"
    if resp.status_code != 200:
        return False, not_after, f"API server not ready: {resp.text.strip()}"
    return True, not_after, None


def observe(gce: Gce, cluster: str, region: str, tls: EtcdTLS | None, ca_pem: str | None,
            zones: list[str] | None = None, tolerate_zones: bool = False) -> ClusterState:
    """The cluster as GCE and etcd see it now.

    A zone whose API does not answer raises :class:`~haplane.gce.GceZoneUnavailable`, unless
    ``tolerate_zones``: then it is listed in ``unavailable_zones`` and the etcd members without a VM
    seen elsewhere are ``UNKNOWN`` (never ``MISSING``: unknown is not absent), in that zone if only one
    zone is out."""
    names = ClusterNames(cluster)
    zones = zones or gce.list_zones(region)
    unavailable: list[str] = []
    if tolerate_zones:
        instances = []
        for zone in zones:
            try:
                instances.extend(gce.list_instances([zone], labels={LABEL_CLUSTER: cluster}))
            except GceZoneUnavailable:
                unavailable.append(zone)
    else:
        instances = gce.list_instances(zones, labels={LABEL_CLUSTER: cluster})
    address = gce.get_address(region, names.address)
    rule = gce.get_forwarding_rule(region, names.forwarding_rule)
    pool = gce.get_target_pool(region, names.target_pool)

    members: list[Member] = []
    statuses: dict[str, EndpointStatus] = {}
    healthy: set[str] = set()
    endpoints = [client_url(i.internal_ip) for i in instances if i.status == "RUNNING" and i.internal_ip]
    if endpoints:
        client = etcd_client(tls, endpoints)
        try:
            try:
                members = client.member_list()
            except EtcdError:
                members = []
            for st in client.statuses():
                if isinstance(st, EndpointStatus):
                    statuses[st.endpoint] = st
                    if client.health(st.endpoint).healthy:
                        healthy.add(st.endpoint)
        finally:
            client.close()
    leader_id = next((s.leader_id for s in statuses.values() if s.leader_id), None)
    by_peer = {url: m for m in members for url in m.peer_urls}

    replicas: list[ReplicaState] = []
    seen: set[int] = set()
    for inst in instances:
        replicas.append(_replica(inst, by_peer.get(peer_url(inst.internal_ip)), statuses, healthy,
                                 leader_id, ca_pem))
        if replicas[-1].member_id is not None:
            seen.add(replicas[-1].member_id)
    for m in members:  # members whose VM is gone, or unseen in a zone that does not answer
        if m.id not in seen:
            if unavailable:
                ip = m.peer_urls[0].split("//", 1)[-1].rsplit(":", 1)[0] if m.peer_urls else ""
                replicas.append(ReplicaState(
                    name=m.name or m.hex_id, zone=unavailable[0] if len(unavailable) == 1 else "?",
                    vm_status="UNKNOWN", internal_ip=ip, member_id=m.id, learner=m.is_learner, started=m.started,
                    leader=m.id == leader_id, problems=(f"zone {', '.join(unavailable)} does not answer",)))
                continue
            replicas.append(ReplicaState(
                name=m.name or m.hex_id, zone="?", vm_status="MISSING", member_id=m.id, learner=m.is_learner,
                started=m.started, leader=m.id == leader_id, problems=("VM is gone but its etcd member remains",)))

    settings = {}
    if instances:
        labels = instances[0].labels
        settings = {"multizone": labels.get(LABEL_MULTIZONE, "true"),
                    "quorum_reads": labels.get(LABEL_QUORUM_READS, "false")}
    pool_names = tuple(link.rsplit("/", 1)[-1] for link in pool.instances) if pool else ()
    return ClusterState(
        cluster=cluster, region=region, replicas=tuple(replicas),
        endpoint_ip=address.address if address else None, address_status=address.status if address else None,
        load_balancer=rule is not None, target_pool=pool is not None, pool_members=pool_names,
        settings=settings, unavailable_zones=tuple(unavailable),
    )


def _replica(inst: Instance, member: Member | None, statuses: dict[str, EndpointStatus], healthy: set[str],
             leader_id: int | None, ca_pem: str | None) -> ReplicaState:
    problems: list[str] = []
    state = ReplicaState(name=inst.name, zone=inst.zone, vm_status=inst.status, internal_ip=inst.internal_ip,
                         external_ip=inst.external_ip, change=inst.labels.get(LABEL_CHANGE))
    if inst.status != "RUNNING":
        problems.append(f"VM is {inst.status}")
    if member is None:
        problems.append("not an etcd member")
    else:
        state = replace(state, member_id=member.id, learner=member.is_learner, started=member.started,
                        leader=member.id == leader_id)
        if not member.started:
            problems.append("etcd member never started")
        if member.is_learner:
            problems.append("etcd learner not promoted yet")
    endpoint = client_url(inst.internal_ip)
    st = statuses.get(endpoint)
    etcd_ok = st is not None and not st.errors and endpoint in healthy
    if inst.status == "RUNNING" and member is not None and not etcd_ok:
        problems.append("etcd member unreachable" if st is None else
                        f"etcd errors: {', '.join(st.errors)}" if st.errors else "etcd read through it failed")
    ready, not_after, problem = (False, None, None)
    if inst.status == "RUNNING" and inst.internal_ip:
        ready, not_after, problem = _api_probe(inst.internal_ip, ca_pem)
        if problem:
            problems.append(problem)
    return replace(state, etcd_ok=etcd_ok, api_ready=ready, cert_not_after=not_after, problems=tuple(problems))


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
