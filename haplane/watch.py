"""``haplane watch``: one long-lived process that watches every cluster of the workspace and emits
Prefect events on transitions; automations (``haplane setup-workspace``) turn them into health checks.

Every ``period`` seconds it:

- reads the cluster spec blocks (``haplane-cluster-spec``): a cluster created or deleted is picked up
  on the next period, without a restart; ``--shard i/n`` keeps the clusters whose name hashes to ``i``;
- lists every cluster's VMs with ONE ``instances.aggregatedList`` per project (label ``haplane-cluster``);
- per cluster, over etcd connections it keeps alive: etcd's member list from one member, each member's
  status and a linearizable read through it; and each API server's ``/readyz`` on a new connection
  (:func:`haplane.cloud.observe.observe_instances`: the same look as the health check's);
- judges each replica with the health check's own rule (:func:`haplane.core.remediation.find_problems`) and
  tells lost quorum from unknown with :func:`haplane.core.restore.quorum_view`.

It keeps each replica's state in memory and emits events only on transitions (:func:`step`, pure):
``haplane.replica.unhealthy`` (with what was seen), ``haplane.replica.recovered``,
``haplane.cluster.unknown`` (could not look, and why), ``haplane.cluster.quorum-lost``; and the heartbeat
``haplane.watch.alive`` every minute. Resources: ``haplane.cluster.<c>`` and
``haplane.cluster.<c>.replica.<r>`` (labels ``haplane.cluster``, ``haplane.replica``), as the health
check's own events.

It never changes a cluster and never takes a lock: the health check still decides and acts. What it
cannot see is unknown, never failed: while a cluster is unknown no replica of it is judged, so no
``unhealthy`` event (and no check) comes from a view that was not verified.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from haplane import settings
from haplane.core.model import ClusterState
from haplane.core.remediation import Finding, Problem, find_problems
from haplane.core.restore import QuorumView

UNHEALTHY = "haplane.replica.unhealthy"
RECOVERED = "haplane.replica.recovered"
CLUSTER_UNKNOWN = "haplane.cluster.unknown"
QUORUM_LOST = "haplane.cluster.quorum-lost"
ALIVE = "haplane.watch.alive"
SOURCE = "watch"  # label haplane.source of the watcher's resources: automations match its events only
DEFAULT_PERIOD_S = 5.0
PKI_REFRESH_S = 300.0
IN_PROGRESS = (Problem.NOT_A_MEMBER, Problem.LEARNER_STUCK)  # what an add in progress looks like

log = logging.getLogger("haplane.watch")


# ---------------------------------------------------------------- pure: a look, memory, transitions


@dataclass(frozen=True)
class Look:
    """What one period saw of one cluster."""

    cluster: str
    unknown: str = ""  # why the cluster could not be seen ("" when it could); then nothing is judged
    quorum_lost: str = ""  # why etcd's quorum is seen lost
    failed: tuple[Finding, ...] = ()  # the health check's findings
    healthy: tuple[str, ...] = ()  # replicas known healthy


def look_at(state: ClusterState, quorum: tuple[QuorumView, str] | None = None, busy: bool = False) -> Look:
    """A :class:`Look` from an observed state; ``quorum`` is the etcd probe's view when the member list
    could not be read (a cluster that lost quorum cannot answer it either); ``busy``: a change holds the
    cluster's lock (a learner or a VM not yet a member is then a change in progress, not a failure)."""
    if quorum is not None and quorum[0] is QuorumView.LOST:
        return Look(state.cluster, quorum_lost=quorum[1])
    if state.unknowns:
        return Look(state.cluster, unknown="; ".join(u.text for u in state.unknowns))
    return Look(
        state.cluster,
        failed=tuple(find_problems(state, busy)),
        healthy=tuple(r.name for r in state.replicas if r.healthy),
    )


@dataclass(frozen=True)
class Memory:
    """What the watcher last knew of a cluster: its view and each replica's health."""

    view: str = ""  # "" never seen, "ok", "unknown", "quorum-lost"
    replicas: dict[str, str] = field(default_factory=dict)  # name -> "healthy" | "unhealthy"


@dataclass(frozen=True)
class Event:
    name: str
    cluster: str
    replica: str = ""  # "" for a cluster event
    payload: dict[str, Any] = field(default_factory=dict)


def step(memory: Memory, look: Look) -> tuple[Memory, list[Event]]:
    """The new memory and the events of one look (transitions only)."""
    c = look.cluster
    if look.unknown:  # replicas keep their last known health: unknown is not failed, nor recovered
        events = [] if memory.view == "unknown" else [Event(CLUSTER_UNKNOWN, c, payload={"reason": look.unknown})]
        return Memory("unknown", memory.replicas), events
    if look.quorum_lost:
        events = (
            []
            if memory.view == "quorum-lost"
            else [Event(QUORUM_LOST, c, payload={"reason": look.quorum_lost, "action": "run restore-cluster"})]
        )
        return Memory("quorum-lost", memory.replicas), events
    events: list[Event] = []
    now: dict[str, str] = {}
    for f in look.failed:
        now[f.replica] = "unhealthy"
        if memory.replicas.get(f.replica) != "unhealthy":
            events.append(
                Event(UNHEALTHY, c, f.replica, {"zone": f.zone, "problem": f.problem.value, "detail": f.detail})
            )
    for name in look.healthy:
        now[name] = "healthy"
        if memory.replicas.get(name) == "unhealthy":
            events.append(Event(RECOVERED, c, name, {"how": "healthy again"}))
    for name, was in sorted(memory.replicas.items()):
        if name not in now and was == "unhealthy":  # replaced or removed: no VM and no etcd member left
            events.append(Event(RECOVERED, c, name, {"how": "gone (no VM, no etcd member)"}))
    return Memory("ok", now), events


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0 <= i < n; a clear error otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: give it as i/n, e.g. 0/2 and 1/2 for two watchers") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: i must be 0..n-1 and n at least 1 (e.g. 0/2 and 1/2 for two watchers)")
    return i, n


def shard_of(cluster: str, shards: int) -> int:
    """The shard a cluster belongs to: a stable hash of its name (the same on every machine)."""
    return int.from_bytes(hashlib.sha256(cluster.encode()).digest()[:8], "big") % shards


# ---------------------------------------------------------------- the process


@dataclass
class Watched:
    """One cluster being watched: its spec's fields, kept-alive connections, memory."""

    cluster: str
    region: str
    project: str
    uid: str | None
    memory: Memory = field(default_factory=Memory)
    etcd: Any = None  # haplane.cloud.etcd.EtcdClient, kept alive
    api: Any = None  # ReadyzProbe verifying the cluster CA (its TLS context kept; a new connection a probe)
    tls: Any = None
    ca_pem: str | None = None
    pki_problem: str | None = None
    pki_read: float = -1e9
    # haplane.core.restore.Look of the last periods, while etcd is unseen
    etcd_looks: list = field(default_factory=list)
    election_s: float = 1.0  # the cluster's etcd election timeout (its spec's etcd_heartbeat_ms x 10)

    def close(self) -> None:
        for c in (self.etcd, self.api):
            if c is not None:
                c.close()
        self.etcd = self.api = None


class ReadyzProbe:
    """``GET /readyz`` of an API server, on a new TLS connection each time (as a load balancer's health
    check: a kept connection would outlive a firewall cut), verified against the cluster CA: (ready,
    None, problem, answered), what :func:`haplane.cloud.observe.observe_instances` takes.

    Cheap enough for a fleet: one TLS context, the last TLS session of each server resumed (its
    ticket: no certificate chain to send and verify again), and a bare HTTP/1.0 request on the socket
    instead of an HTTP client's machinery."""

    MAX_ANSWER = 64 * 1024

    def __init__(self, ca_pem: str, timeout: float = 2.0) -> None:
        self.ctx = ssl.create_default_context(cadata=ca_pem)
        self.timeout = timeout
        self.sessions: dict[str, ssl.SSLSession] = {}

    def __call__(self, ip: str) -> tuple[bool, str | None, str | None, bool]:
        import socket

        from haplane.node.spec import APISERVER_PORT

        request = f"GET /readyz HTTP/1.0\r\nHost: {ip}:{APISERVER_PORT}\r\nAccept: */*\r\n\r\n".encode()
        try:
            with (
                socket.create_connection((ip, APISERVER_PORT), timeout=self.timeout) as raw,
                self.ctx.wrap_socket(raw, server_hostname=ip, session=self.sessions.get(ip)) as tls,
            ):
                tls.sendall(request)
                answer = b""
                while len(answer) <= self.MAX_ANSWER and (chunk := tls.recv(16384)):
                    answer += chunk
                self.sessions[ip] = tls.session
        except OSError as exc:  # ssl.SSLError and timeouts included
            self.sessions.pop(ip, None)
            return False, None, f"API server unreachable: {type(exc).__name__}", False
        head, _, body = answer.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
            return False, None, f"API server answered no HTTP: {head[:80]!r}", True
        if status[1] != b"200":
            text = body.decode(errors="replace").strip()[:200] or status[1].decode()
            return False, None, f"API server not ready: {text}", True
        return True, None, None, True

    def close(self) -> None:
        self.sessions.clear()


def replica_resource(cluster: str, replica: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"haplane.cluster.{cluster}.replica.{replica}",
        "prefect.resource.name": replica,
        "haplane.cluster": cluster,
        "haplane.replica": replica,
    }


def cluster_resource(cluster: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"haplane.cluster.{cluster}",
        "prefect.resource.name": cluster,
        "haplane.cluster": cluster,
    }


def watcher_resource(name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"haplane.watch.{name}", "prefect.resource.name": name}


def resource_of(event: Event) -> dict[str, str]:
    """The resource of a watcher's event: the health check's own resources, labelled ``haplane.source``."""
    if event.name == ALIVE:
        return watcher_resource(event.payload["watcher"])
    resource = replica_resource(event.cluster, event.replica) if event.replica else cluster_resource(event.cluster)
    return {**resource, "haplane.source": SOURCE}


def prefect_emit(event: Event) -> None:
    from prefect.events import emit_event

    emit_event(event=event.name, resource=resource_of(event), payload=event.payload)


class Watcher:
    """The loop of ``haplane watch``. ``gce_for(project)`` gives a :class:`haplane.cloud.gce.Gce`; ``specs()``
    the cluster spec blocks' data; ``read_pki(cluster)`` its CAs or why not; ``busy(cluster)`` whether a
    change holds its lock; ``emit`` sends an :class:`Event` (the Prefect wiring: :mod:`deployments.watch`)."""

    def __init__(
        self,
        gce_for: Callable[[str | None], Any],
        specs: Callable[[], Iterable[dict]],
        read_pki: Callable[[str], tuple[Any, str | None]],
        busy: Callable[[str], bool],
        emit: Callable[[Event], None] = prefect_emit,
        period: float = DEFAULT_PERIOD_S,
        shard: tuple[int, int] = (0, 1),
        name: str = "haplane-watch",
    ) -> None:
        self.gce_for, self.specs, self.emit = gce_for, specs, emit
        self.period, self.shard, self.name = period, shard, name
        self.read_pki = read_pki
        self.busy = busy
        self.watched: dict[str, Watched] = {}
        self.last_alive = -1e9
        self.looks = 0
        self.stop = threading.Event()

    # -- one period
    def refresh(self) -> None:
        from haplane.node.spec import ETCD_HEARTBEAT_MS, election_s

        i, n = self.shard
        seen = {}
        for data in self.specs():
            c = data.get("cluster")
            if c and shard_of(c, n) == i:
                seen[c] = data
        for c in set(self.watched) - set(seen):  # deleted: forget it, close its connections
            self.watched.pop(c).close()
            log.info("cluster %s is gone: no longer watched", c)
        for c, data in seen.items():
            if c not in self.watched:
                self.watched[c] = Watched(
                    c,
                    data["region"],
                    data.get("project") or "",
                    data.get("uid"),
                    election_s=election_s(data.get("etcd_heartbeat_ms") or ETCD_HEARTBEAT_MS),
                )
                log.info("watching cluster %s", c)

    def tick(self) -> None:
        self.refresh()
        by_project: dict[str, list[Watched]] = {}
        for w in self.watched.values():
            by_project.setdefault(w.project, []).append(w)
        for project, clusters in sorted(by_project.items()):
            self._look_project(project, clusters)
        now = time.monotonic()
        if now - self.last_alive >= settings.watch_heartbeat_s():
            self.last_alive = now
            self.emit(
                Event(
                    ALIVE,
                    "",
                    payload={
                        "watcher": self.name,
                        "clusters": len(self.watched),
                        "shard": f"{self.shard[0]}/{self.shard[1]}",
                        "period_s": self.period,
                    },
                )
            )

    def _look_project(self, project: str, clusters: list[Watched]) -> None:
        from haplane.core.topology import LABEL_CLUSTER

        try:
            gce = self.gce_for(project or None)
            instances = gce.list_labelled_instances(LABEL_CLUSTER, timeout=max(self.period, 5.0))
        except Exception as exc:  # noqa: BLE001 - could not look: every cluster of the project is unknown
            why = (
                f"the VMs of project {project or '(default)'} could not be listed "
                f"(instances.aggregatedList: {type(exc).__name__}: {str(exc)[:200]})"
            )
            for w in clusters:
                self._record(w, Look(w.cluster, unknown=why))
            return
        mine: dict[str, list] = {}
        for inst in instances:
            mine.setdefault(inst.labels.get(LABEL_CLUSTER, ""), []).append(inst)
        for w in clusters:
            try:
                look = self._look_cluster(w, mine.get(w.cluster, []))
            except Exception as exc:  # noqa: BLE001 - a look that failed is unknown, never failed
                look = Look(w.cluster, unknown=f"the look failed: {type(exc).__name__}: {str(exc)[:200]}")
            self._record(w, look)

    def _look_cluster(self, w: Watched, instances: list) -> Look:
        from haplane.cloud.observe import etcd_look, observe_instances
        from haplane.core.ownership import owned
        from haplane.core.restore import quorum_view
        from haplane.core.topology import LABEL_UID
        from haplane.node.spec import client_url

        self._connect(w)
        instances = [i for i in instances if owned(i.labels.get(LABEL_UID), w.uid)]
        state = observe_instances(
            w.cluster,
            w.region,
            instances,
            w.tls,
            w.ca_pem,
            pki_problem=w.pki_problem,
            etcd=w.etcd,
            api_probe=w.api,
            read_versions=False,  # what the watcher judges never reads them: 3 calls a cluster a look less
        )
        quorum = None
        if state.membership_unknown is None or w.etcd is None:
            w.etcd_looks = []
        else:  # lost quorum or only cut off? decided on the looks of the last few periods, as a restore does
            from haplane.core.restore import ELECTIONS_SPANNED, QuorumEvidence

            running = {client_url(i.internal_ip): i.name for i in instances if i.status == "RUNNING" and i.internal_ip}
            now = time.monotonic()
            election_s = w.election_s
            keep = max(2 * ELECTIONS_SPANNED * election_s, 3 * self.period)
            w.etcd_looks = [x for x in w.etcd_looks if now - x.at_s <= keep]
            if running:
                w.etcd_looks.append(etcd_look(w.etcd, running, now))
            evidence = QuorumEvidence(
                vms=tuple((i.name, i.status) for i in instances),
                footprint_seen=bool(instances),
                looks=tuple(w.etcd_looks),
                election_s=election_s,
            )
            quorum = quorum_view(evidence)
        look = look_at(state, quorum)
        if any(f.problem in IN_PROGRESS for f in look.failed) and self.busy(w.cluster):
            look = look_at(state, quorum, busy=True)
        return look

    def _record(self, w: Watched, look: Look) -> None:
        self.looks += 1
        w.memory, events = step(w.memory, look)
        for e in events:
            log.warning("%s %s%s: %s", e.name, e.cluster, f"/{e.replica}" if e.replica else "", e.payload)
            self.emit(e)

    def _connect(self, w: Watched) -> None:
        """(Re)read the cluster's PKI every PKI_REFRESH_S (certificates rotate) and keep one etcd client
        and one HTTPS client per cluster, so each period reuses their connections."""
        if w.etcd is not None and time.monotonic() - w.pki_read < PKI_REFRESH_S:
            return  # (a PKI that could not be read is read again every period)

        from haplane.cloud.etcd import EtcdClient, EtcdTLS

        w.close()
        w.pki_read = time.monotonic()
        cas, w.pki_problem = self.read_pki(w.cluster)
        if cas is None:
            w.tls = w.ca_pem = None
            return
        w.tls, w.ca_pem = EtcdTLS.from_cas(cas), cas.ca_bundle()
        # endpoints set per look; idle connections kept for the next periods (httpx's default 5 s expiry
        # closed them just before each look of a 5 s period: three TLS handshakes a cluster a look)
        w.etcd = EtcdClient(["https://127.0.0.1:2379"], tls=w.tls, timeout=2.0, keepalive_s=max(60.0, 3 * self.period))
        # /readyz on a new connection each look, as a load balancer's health check asks: an established
        # connection outlives a firewall change (GCE's firewalls are stateful) and would hide a cut
        w.api = ReadyzProbe(w.ca_pem)

    # -- the loop
    def run(self) -> None:
        log.info("haplane watch %s: every %g s, shard %d/%d", self.name, self.period, *self.shard)
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - the watcher keeps watching; the next period looks again
                    log.exception("a period of haplane watch failed; looking again next period")
                self.stop.wait(max(0.0, self.period - (time.monotonic() - started)))
        finally:
            for w in self.watched.values():
                w.close()
