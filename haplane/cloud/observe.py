"""Observe a cluster: the adapter that fills the model (:mod:`haplane.core.model`) from GCE and etcd.

Nothing is remembered between runs; every flow starts from :func:`observe`.
What cannot be looked at is recorded as unknown, with the reason, never as
absent: a member list that cannot be read (no operator certificate, an
expired one, etcd unreachable from this worker) gives "membership unknown",
not "no members"; API servers none of which answer give "readiness unknown".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
from cryptography import x509

from haplane.cloud.etcd import EndpointStatus, EtcdClient, EtcdError, EtcdTLS, Member
from haplane.cloud.gce import Gce, GceZoneUnavailable, Instance
from haplane.core.model import COMPONENTS, MISSING, UNPLACED, ZONE_OUT, ClusterState, LeaderLease, ReplicaState, Unknown
from haplane.core.ownership import owned
from haplane.core.restore import Look
from haplane.core.topology import (
    LABEL_CHANGE,
    LABEL_CLUSTER,
    LABEL_MULTIZONE,
    LABEL_QUORUM_READS,
    LABEL_UID,
    ClusterNames,
)
from haplane.core.versions import DEFAULT_KUBERNETES_VERSION
from haplane.node.spec import APISERVER_PORT, ETCD_CLIENT_PORT, KUBERNETES_VERSION_KEY, client_url, peer_url

__all__ = ["ClusterState", "ReplicaState", "Unknown", "observe", "now_utc"]


def etcd_client(tls: EtcdTLS | None, endpoints: list[str], timeout: float = 3.0) -> EtcdClient:
    return EtcdClient(endpoints, tls=tls, timeout=timeout)


def _api_probe(ip: str, ca_pem: str) -> tuple[bool, str | None, str | None, bool]:
    """(ready, certificate notAfter, problem, answered) for the API server at ``ip``, TLS verified
    against the CA; ``answered`` is False when nothing answered at all."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    try:
        with (
            socket.create_connection((ip, APISERVER_PORT), timeout=2.0) as raw,
            ctx.wrap_socket(raw, server_hostname=ip) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        not_after = x509.load_der_x509_certificate(der).not_valid_after_utc.isoformat() if der else None
        with httpx.Client(verify=ctx, timeout=2.0) as http:
            resp = http.get(f"https://{ip}:{APISERVER_PORT}/readyz")
    except (OSError, httpx.HTTPError) as exc:
        return False, None, f"API server unreachable: {type(exc).__name__}", False
    if resp.status_code != 200:
        return False, not_after, f"API server not ready: {resp.text.strip()}", True
    return True, not_after, None, True


def client_context(ca_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """TLS to the API servers, verified against ``ca_pem``, presenting a client certificate (the key
    is in a 0600 file only while the context loads it)."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    with tempfile.TemporaryDirectory(prefix="haplane-client-") as tmp:
        cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
        cert.write_text(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


def components_down(http: httpx.Client, ip: str) -> tuple[tuple[str, ...] | None, str]:
    """The components the API server at ``ip`` reports not running (its componentstatuses, which
    asks each component's /healthz on the replica), or None and why it could not be read."""
    try:
        resp = http.get(f"https://{ip}:{APISERVER_PORT}/api/v1/componentstatuses")
        items = resp.json().get("items") if resp.status_code == 200 else None
    except (OSError, httpx.HTTPError, ValueError) as exc:
        return None, f"componentstatuses unreadable: {type(exc).__name__}"
    if items is None:
        return None, f"componentstatuses answered {resp.status_code}"
    healthy = {
        i["metadata"]["name"]
        for i in items
        if any(c.get("type") == "Healthy" and c.get("status") == "True" for c in i.get("conditions") or [])
    }
    return tuple(c for c in COMPONENTS if c not in healthy), "ok"


def _leases(http: httpx.Client, ip: str, now: dt.datetime) -> tuple[LeaderLease, ...]:
    """Each component's Lease in kube-system, read through the API server at ``ip`` (raises
    httpx.HTTPError or ValueError when it cannot be read)."""
    out = []
    for component, name in COMPONENTS.items():
        resp = http.get(
            f"https://{ip}:{APISERVER_PORT}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}"
        )
        if resp.status_code == 404:
            out.append(LeaderLease(component))
            continue
        if resp.status_code != 200:
            raise ValueError(f"Lease {name}: {resp.status_code}")
        spec = resp.json().get("spec") or {}
        identity = spec.get("holderIdentity") or None
        duration = float(spec.get("leaseDurationSeconds") or 15)
        try:
            renewed = dt.datetime.fromisoformat(str(spec.get("renewTime")).replace("Z", "+00:00"))
        except ValueError:
            renewed = None
        expired = identity is None or renewed is None or (now - renewed).total_seconds() > duration
        out.append(
            LeaderLease(
                component,
                holder=identity.partition("_")[0] if identity else None,
                identity=identity,
                renew_time=renewed.isoformat(timespec="seconds") if renewed else None,
                duration_s=duration,
                expired=expired,
            )
        )
    return tuple(out)


def _etcd_check(names: ClusterNames) -> str:
    return (
        f"that this worker reaches etcd on port {ETCD_CLIENT_PORT} of the replicas' internal IPs (firewall "
        f"{names.firewall_etcd_client}, the worker's network) and that the operator certificate in block "
        f"{names.pki_block} loads and has not expired"
    )


def observe(
    gce: Gce,
    cluster: str,
    region: str,
    tls: EtcdTLS | None,
    ca_pem: str | None,
    zones: list[str] | None = None,
    pki_problem: str | None = None,
    uid: str | None = None,
    tolerate_zones: bool = False,
    api_client: tuple[str, str] | None = None,
) -> ClusterState:
    """The cluster as GCE and etcd see it now; what could not be seen is recorded as unknown.

    ``tls``/``ca_pem`` None (with ``pki_problem`` saying why) means the cluster's PKI could not be
    read: etcd membership and API readiness are then unknown, not empty.

    A zone whose API does not answer raises :class:`~haplane.cloud.gce.GceZoneUnavailable`, unless
    ``tolerate_zones``: then it is listed in ``unavailable_zones`` and the etcd members without a VM
    seen elsewhere are ``ZONE_OUT`` (never ``MISSING``: unknown is not absent) with a ``vm_unknown``, placed
    in that zone when only one zone is out (zone ``UNPLACED`` when several are: which one is unknown).

    ``api_client``: (certificate, key) of a client certificate of the cluster CA: with it each ready API
    server is asked which of its replica's controller-manager and scheduler run (componentstatuses),
    and the components' Leases are read; without it neither is looked at."""
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
    # a VM with the cluster's label but not its uid is a look-alike: reported, never judged or touched
    look_alikes = tuple(sorted(f"{i.name} ({i.zone})" for i in instances if not owned(i.labels.get(LABEL_UID), uid)))
    instances = [i for i in instances if owned(i.labels.get(LABEL_UID), uid)]
    address = gce.get_address(region, names.address)
    rule = gce.get_forwarding_rule(region, names.forwarding_rule)
    pool = gce.get_target_pool(region, names.target_pool)
    state = observe_instances(
        cluster, region, instances, tls, ca_pem, pki_problem=pki_problem, unavailable=unavailable, api_client=api_client
    )
    pool_names = tuple(link.rsplit("/", 1)[-1] for link in pool.instances) if pool else ()
    return replace(
        state,
        endpoint_ip=address.address if address else None,
        address_status=address.status if address else None,
        load_balancer=rule is not None,
        target_pool=pool is not None,
        pool_members=pool_names,
        look_alikes=look_alikes,
    )


ApiProbe = Callable[[str], tuple[bool, str | None, str | None, bool]]


def observe_instances(
    cluster: str,
    region: str,
    instances: list[Instance],
    tls: EtcdTLS | None,
    ca_pem: str | None,
    pki_problem: str | None = None,
    unavailable: Sequence[str] = (),
    etcd: EtcdClient | None = None,
    api_probe: ApiProbe | None = None,
    api_client: tuple[str, str] | None = None,
    read_versions: bool = True,
) -> ClusterState:
    """The replicas of a cluster whose VMs (``instances``, the cluster's own) were listed already: etcd
    membership, each member's status and a linearizable read through it, each API server's readiness;
    with ``read_versions`` each member's etcd version too (else left unread: None).

    :func:`observe` lists the VMs per zone; the watcher (:mod:`haplane.watch`) lists every cluster's
    at once and passes kept-alive connections: ``etcd`` (its endpoints are set here) and ``api_probe``
    (ip -> ready, certificate notAfter, problem, answered). The load balancer is not looked at."""
    names = ClusterNames(cluster)
    members: list[Member] = []
    membership_unknown: Unknown | None = None
    statuses: dict[str, EndpointStatus] = {}
    healthy: set[str] = set()
    versions: dict[str, str] = {}  # client URL -> the etcd version that member reports
    cluster_versions: set[str] = set()
    endpoints = [client_url(i.internal_ip) for i in instances if i.status == "RUNNING" and i.internal_ip]
    if endpoints and tls is None:
        membership_unknown = Unknown(
            f"etcd membership of {cluster}",
            pki_problem or f"no operator client certificate: the PKI block {names.pki_block} is missing",
            f"that block {names.pki_block} exists and loads with this worker's Prefect settings",
        )
    elif endpoints:
        client = etcd or etcd_client(tls, endpoints)
        client.endpoints = endpoints
        try:
            try:
                members = client.member_list()
            except EtcdError as exc:
                membership_unknown = Unknown(
                    f"etcd membership of {cluster}", f"member list failed: {exc}", _etcd_check(names)
                )
            if membership_unknown is None:
                for st in client.statuses():
                    if isinstance(st, EndpointStatus):
                        statuses[st.endpoint] = st
                        if client.health(st.endpoint).healthy:
                            healthy.add(st.endpoint)
                        if read_versions:
                            _read_version(client, st.endpoint, versions, cluster_versions)
        finally:
            if etcd is None:
                client.close()
    leader_id = next((s.leader_id for s in statuses.values() if s.leader_id), None)
    by_peer = {url: m for m in members for url in m.peer_urls}

    probes: dict[str, tuple[bool, str | None, str | None, bool]] = {}
    running = [i for i in instances if i.status == "RUNNING" and i.internal_ip]
    api_unknown: dict[str, Unknown] = {}
    if running and ca_pem is None:
        for i in running:
            api_unknown[i.name] = Unknown(
                f"API readiness of {i.name}",
                pki_problem or f"no cluster CA to verify it with (block {names.pki_block} is missing)",
                f"that block {names.pki_block} exists and loads",
            )
    elif running:
        probes = {i.name: api_probe(i.internal_ip) if api_probe else _api_probe(i.internal_ip, ca_pem) for i in running}
        if not any(answered for *_, answered in probes.values()):  # none answered: this worker may be cut off
            for i in running:
                api_unknown[i.name] = Unknown(
                    f"API readiness of {i.name}",
                    "no API server of the cluster answered this worker",
                    f"that this worker reaches port {APISERVER_PORT} of the replicas' internal IPs (firewall "
                    f"{names.firewall_apiserver}, the worker's network)",
                )

    components: dict[str, tuple[tuple[str, ...] | None, str]] = {}
    leases: tuple[LeaderLease, ...] = ()
    leases_unknown: Unknown | None = None
    ready = [i for i in running if probes.get(i.name, (False,))[0]]
    if api_client is not None and ca_pem is not None and ready:
        with httpx.Client(verify=client_context(ca_pem, *api_client), timeout=2.0) as http:
            components = {i.name: components_down(http, i.internal_ip) for i in ready}
            why = "no API server answered"
            for i in ready:
                try:
                    leases = _leases(http, i.internal_ip, now_utc())
                    break
                except (OSError, httpx.HTTPError, ValueError) as exc:
                    why = f"{i.name}: {type(exc).__name__}: {exc}"[:200]
            else:
                leases_unknown = Unknown(
                    f"the leader-election Leases of {cluster}",
                    why,
                    f"that this worker reaches port {APISERVER_PORT} of the replicas",
                )
    leads: dict[str, list[str]] = {}
    for lease in leases:
        if lease.leader is not None:
            leads.setdefault(lease.leader, []).append(lease.component)

    replicas: list[ReplicaState] = []
    seen: set[int] = set()
    for inst in instances:
        replicas.append(
            _replica(
                inst,
                by_peer.get(peer_url(inst.internal_ip)),
                statuses,
                healthy,
                leader_id,
                probes.get(inst.name),
                membership_unknown,
                api_unknown.get(inst.name),
                versions.get(client_url(inst.internal_ip)),
            )
        )
        down, why = components.get(inst.name, ((), "not asked"))
        if down is None:
            replicas[-1] = replace(
                replicas[-1],
                components_unknown=Unknown(
                    f"controller-manager and scheduler of {inst.name}",
                    why,
                    f"that the API server of {inst.name} answers /api/v1/componentstatuses",
                ),
                problems=(*replicas[-1].problems, f"components unknown: {why}"),
            )
        elif down:
            replicas[-1] = replace(
                replicas[-1],
                components_down=down,
                problems=(*replicas[-1].problems, f"{' and '.join(down)} not running"),
            )
        replicas[-1] = replace(replicas[-1], leads=tuple(leads.get(inst.name, ())))
        if replicas[-1].member_id is not None:
            seen.add(replicas[-1].member_id)
    for m in members:  # members whose VM is gone, or unseen in a zone that does not answer
        if m.id not in seen:
            if unavailable:
                ip = m.peer_urls[0].split("//", 1)[-1].rsplit(":", 1)[0] if m.peer_urls else ""
                out = ", ".join(unavailable)
                replicas.append(
                    ReplicaState(
                        name=m.name or m.hex_id,
                        zone=unavailable[0] if len(unavailable) == 1 else UNPLACED,
                        vm_status=ZONE_OUT,
                        internal_ip=ip,
                        member_id=m.id,
                        learner=m.is_learner,
                        started=m.started,
                        leader=m.id == leader_id,
                        problems=(f"zone(s) {out} do not answer",),
                        vm_unknown=Unknown(
                            f"the VM of etcd member {m.name or m.hex_id}",
                            f"it is in none of the zones that answer, and zone(s) {out} do not answer",
                            f"the status of zone(s) {out} (GCE's status page, the zones' operations)",
                        ),
                    )
                )
                continue
            replicas.append(
                ReplicaState(
                    name=m.name or m.hex_id,
                    zone="?",
                    vm_status=MISSING,
                    member_id=m.id,
                    learner=m.is_learner,
                    started=m.started,
                    leader=m.id == leader_id,
                    problems=("VM is gone but its etcd member remains",),
                )
            )

    settings = {}
    if instances:
        labels = instances[0].labels
        settings = {
            "multizone": labels.get(LABEL_MULTIZONE, "true"),
            "quorum_reads": labels.get(LABEL_QUORUM_READS, "false"),
        }
    return ClusterState(
        cluster=cluster,
        region=region,
        replicas=tuple(replicas),
        settings=settings,
        membership_unknown=membership_unknown,
        unavailable_zones=tuple(unavailable),
        leases=leases,
        leases_unknown=leases_unknown,
        # one answer from every member that answered, else unread (members that disagree: unread too)
        etcd_cluster_version=cluster_versions.pop() if len(cluster_versions) == 1 else None,
    )


def _read_version(client: EtcdClient, endpoint: str, versions: dict[str, str], cluster_versions: set[str]) -> None:
    """The member's own etcd version and its view of the cluster version; what it does not say stays unread."""
    try:
        server, cluster = client.version(endpoint)
    except EtcdError:
        return
    if server:
        versions[endpoint] = server
    if cluster and cluster != "not_decided":
        cluster_versions.add(cluster)


def _replica(
    inst: Instance,
    member: Member | None,
    statuses: dict[str, EndpointStatus],
    healthy: set[str],
    leader_id: int | None,
    probe: tuple[bool, str | None, str | None, bool] | None,
    membership_unknown: Unknown | None,
    api_unknown: Unknown | None,
    etcd_version: str | None = None,
) -> ReplicaState:
    problems: list[str] = []
    state = ReplicaState(
        name=inst.name,
        zone=inst.zone,
        vm_status=inst.status,
        internal_ip=inst.internal_ip,
        external_ip=inst.external_ip,
        change=inst.labels.get(LABEL_CHANGE),
        etcd_version=etcd_version,
        kubernetes_version=inst.metadata.get(KUBERNETES_VERSION_KEY, DEFAULT_KUBERNETES_VERSION),
    )
    if inst.status != "RUNNING":
        problems.append(f"VM is {inst.status}")
    etcd_ok, etcd_unknown = False, None
    if membership_unknown is not None:
        if inst.status == "RUNNING":
            etcd_unknown = Unknown(f"etcd health of {inst.name}", membership_unknown.reason, membership_unknown.check)
            problems.append(f"etcd unknown: {membership_unknown.reason}")
    elif member is None:
        problems.append("not an etcd member")
    else:
        state = replace(
            state, member_id=member.id, learner=member.is_learner, started=member.started, leader=member.id == leader_id
        )
        if not member.started:
            problems.append("etcd member never started")
        if member.is_learner:
            problems.append("etcd learner not promoted yet")
        endpoint = client_url(inst.internal_ip)
        st = statuses.get(endpoint)
        etcd_ok = st is not None and not st.errors and endpoint in healthy
        if inst.status == "RUNNING" and not etcd_ok:
            problems.append(
                "etcd member unreachable"
                if st is None
                else f"etcd errors: {', '.join(st.errors)}"
                if st.errors
                else "etcd read through it failed"
            )
    ready, not_after = False, None
    if api_unknown is not None:
        problems.append(f"API readiness unknown: {api_unknown.reason}")
    elif probe is not None:
        ready, not_after, problem, _ = probe
        if problem:
            problems.append(problem)
    return replace(
        state,
        etcd_ok=etcd_ok,
        api_ready=ready,
        cert_not_after=not_after,
        problems=tuple(problems),
        etcd_unknown=etcd_unknown,
        api_unknown=api_unknown,
    )


def etcd_look(client: EtcdClient, running: dict[str, str], at_s: float) -> Look:
    """One look at the etcd of each running replica (``running``: client URL -> VM name), by name: status
    (alive, credentials accepted, leader, store revision), a linearizable read, and the member list each
    member itself last knew; what :func:`haplane.core.restore.quorum_view` decides on, over several looks."""
    answering, with_leader, readable, unreachable, revisions, voters = [], [], [], [], [], set()
    for st in client.statuses(list(running)):
        name = running[st.endpoint]
        if not isinstance(st, EndpointStatus):
            unreachable.append(f"{name}: {st.reason}")
            continue
        answering.append(name)
        revisions.append((name, st.revision))
        if st.leader_id:
            with_leader.append(name)
        if client.health(st.endpoint).healthy:
            readable.append(name)
        with contextlib.suppress(EtcdError):
            voters |= {m.name for m in client.local_members(st.endpoint) if m.name and not m.is_learner}
    return Look(
        at_s=at_s,
        answering=tuple(answering),
        with_leader=tuple(with_leader),
        readable=tuple(readable),
        unreachable=tuple(unreachable),
        revisions=tuple(revisions),
        voters=tuple(sorted(voters)),
    )


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
