"""An etcd v3 client over mutual TLS, speaking etcd's JSON gRPC-gateway with httpx.

Why not python-etcd3: it does not import beside google-cloud-compute's
protobuf ("Descriptors cannot be created directly"), and its forks lack learners
(docs/design.md, fact 3).

The gateway's wire format: ``POST /v3/<service>/<method>`` with a JSON body;
int64/uint64 are JSON *strings*; bytes are base64; fields equal to their
default (0, false, "") are omitted. Member IDs are uint64: kept as ``int``
here, with :attr:`Member.hex_id` for the hex form etcdctl prints.

Cluster-wide calls (member list/add/promote/remove/update, alarms, kv) try the
endpoints in order and move on when one cannot be reached or answers
"unavailable"; per-endpoint calls (status, health) go to the endpoint named.
Errors carry the endpoint and etcd's reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
from pydantic import SecretStr

DEFAULT_TIMEOUT = 5.0
HEALTH_KEY = b"health"

# ---------------------------------------------------------------- errors


class EtcdError(Exception):
    """An etcd call failed; ``endpoint`` is where, ``reason`` is etcd's (or the transport's) words."""

    def __init__(self, endpoint: str, reason: str, status_code: int | None = None):
        self.endpoint = endpoint
        self.reason = reason
        self.status_code = status_code
        super().__init__(f"etcd at {endpoint}: {reason}")


class EtcdUnavailable(EtcdError):
    """The endpoint cannot be reached, timed out, or has no leader / cannot serve the call."""


class EtcdTLSError(EtcdUnavailable):
    """The TLS handshake failed (wrong CA, no or untrusted client certificate, plain HTTP)."""


class EtcdNotLearnerReady(EtcdError):
    """Promote was refused: the learner has not caught up with the leader yet (retry)."""


class EtcdMemberNotLearner(EtcdError):
    """Promote was refused: the member is already a voting member."""


class EtcdMemberNotFound(EtcdError):
    """No member with that ID."""


class EtcdMemberExists(EtcdError):
    """A member with those peer URLs already exists."""


class EtcdTooManyLearners(EtcdError):
    """etcd allows one learner at a time (by default)."""


class EtcdNotLeader(EtcdError):
    """The call must go to the leader (move-leader)."""


class EtcdUnhealthyCluster(EtcdError):
    """etcd refused a membership change that would make the cluster unhealthy (strict reconfig check)."""


_REASON_CLASSES: tuple[tuple[str, type[EtcdError]], ...] = (
    ("can only promote a learner member which is in sync with leader", EtcdNotLearnerReady),
    ("can only promote a learner member", EtcdMemberNotLearner),
    ("member not found", EtcdMemberNotFound),
    ("member id not found", EtcdMemberNotFound),
    ("peerurl exists", EtcdMemberExists),
    ("member id already exist", EtcdMemberExists),
    ("too many learner members", EtcdTooManyLearners),
    ("not leader", EtcdNotLeader),
    ("unhealthy cluster", EtcdUnhealthyCluster),
    ("re-configuration failed due to not enough started members", EtcdUnhealthyCluster),
    ("no leader", EtcdUnavailable),
    ("leader changed", EtcdUnavailable),
    ("request timed out", EtcdUnavailable),
    ("rpc not supported for learner", EtcdUnavailable),
    ("server stopped", EtcdUnavailable),
    ("too many requests", EtcdUnavailable),
)


def _classify(endpoint: str, status_code: int, reason: str) -> EtcdError:
    low = reason.lower()
    for needle, cls in _REASON_CLASSES:
        if needle in low:
            return cls(endpoint, reason, status_code)
    if status_code in (502, 503, 504):
        return EtcdUnavailable(endpoint, reason, status_code)
    return EtcdError(endpoint, reason, status_code)


# ---------------------------------------------------------------- TLS


@dataclass(frozen=True)
class EtcdTLS:
    """CA certificate and client certificate/key (PEM) for mutual TLS."""

    ca_pem: str
    cert_pem: str
    key_pem: SecretStr

    def __repr__(self) -> str:
        return "EtcdTLS(ca_pem=..., cert_pem=..., key_pem=SecretStr('**********'))"

    __str__ = __repr__

    @classmethod
    def from_cas(cls, cas: Any) -> EtcdTLS:
        """The operator's credentials from :class:`haplane.cloud.pki.ClusterCAs` (trusting both CAs during a CA rotation)."""
        return cls(ca_pem=cas.etcd_ca_bundle(), cert_pem=cas.operator.cert_pem, key_pem=cas.operator.key_pem)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the etcd CA and presenting the client certificate.

        ``load_cert_chain`` needs files: the key is written to a fresh 0700
        directory (0600 file) and removed as soon as it is loaded.
        """
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        tmp = tempfile.mkdtemp(prefix="haplane-etcd-tls-")  # mode 0700
        try:
            cert_path = os.path.join(tmp, "client.crt")
            key_path = os.path.join(tmp, "client.key")
            for path, text in ((cert_path, self.cert_pem), (key_path, self.key_pem.get_secret_value())):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            ctx.load_cert_chain(cert_path, key_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return ctx


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Member:
    id: int
    name: str  # "" until the member has started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]  # () until the member has started
    is_learner: bool = False

    @property
    def hex_id(self) -> str:
        return format(self.id, "x")

    @property
    def started(self) -> bool:
        return bool(self.name) and bool(self.client_urls)

    @classmethod
    def from_json(cls, m: dict) -> Member:
        return cls(
            id=int(m.get("ID", 0)),
            name=m.get("name", ""),
            peer_urls=tuple(m.get("peerURLs", ())),
            client_urls=tuple(m.get("clientURLs", ())),
            is_learner=bool(m.get("isLearner", False)),
        )


@dataclass(frozen=True)
class MemberAdded:
    member: Member
    members: tuple[Member, ...]  # the cluster's members after the add


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    member_id: int
    leader_id: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    version: str
    db_size: int
    errors: tuple[str, ...] = ()
    is_learner: bool = False
    revision: int = 0  # the member's own (possibly stale) store revision

    @property
    def is_leader(self) -> bool:
        return self.member_id != 0 and self.member_id == self.leader_id

    @property
    def hex_member_id(self) -> str:
        return format(self.member_id, "x")


@dataclass(frozen=True)
class EndpointUnreachable:
    """What :meth:`EtcdClient.statuses` reports for an endpoint it could not ask."""

    endpoint: str
    reason: str


@dataclass(frozen=True)
class EndpointHealth:
    endpoint: str
    healthy: bool
    took_s: float
    reason: str = ""


@dataclass(frozen=True)
class Alarm:
    member_id: int
    alarm: str  # "NOSPACE" | "CORRUPT"


def _b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def json_stream(texts: Iterable[str]) -> Iterable[dict]:
    """The JSON objects of a stream that sends them one after another (etcd's gateway for streaming
    calls such as snapshot: not an array, and not promised to be one per line)."""
    decoder = json.JSONDecoder()
    buf = ""
    for text in texts:
        buf += text
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = decoder.raw_decode(buf)
            except ValueError:
                break  # incomplete: wait for more text
            yield obj
            buf = buf[end:]
    if buf.strip():
        raise ValueError(f"stream ended inside a JSON object ({len(buf)} characters left)")


# ---------------------------------------------------------------- the client


class EtcdClient:
    """A small etcd v3 client. ``endpoints`` are client URLs such as ``https://10.0.0.2:2379``."""

    def __init__(
        self,
        endpoints: Iterable[str],
        tls: EtcdTLS | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive_s: float | None = None,
    ):
        """``keepalive_s``: how long an idle connection is kept for the next call (httpx's 5 s when None;
        a caller that calls every few seconds gives more, or every call pays a new TLS handshake)."""
        self.endpoints = [e.rstrip("/") for e in endpoints]
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.tls = tls
        self.timeout = timeout
        verify: ssl.SSLContext | bool = tls.ssl_context() if tls else True
        limits = httpx.Limits() if keepalive_s is None else httpx.Limits(keepalive_expiry=keepalive_s)
        self._http = httpx.Client(verify=verify, timeout=timeout, trust_env=False, limits=limits)

    def __repr__(self) -> str:
        return f"EtcdClient(endpoints={self.endpoints!r}, tls={'mutual' if self.tls else 'none'})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport

    def _post(self, endpoint: str, path: str, body: dict, timeout: float | None = None) -> dict:
        url = f"{endpoint}{path}"
        try:
            r = self._http.post(url, json=body, timeout=timeout if timeout is not None else self.timeout)
        except httpx.TimeoutException as e:
            raise EtcdUnavailable(endpoint, f"timed out calling {path} ({type(e).__name__})") from None
        except httpx.ConnectError as e:
            cause = e.__context__ or e.__cause__
            if isinstance(cause, ssl.SSLError) or "SSL" in str(e) or "CERTIFICATE" in str(e).upper():
                raise EtcdTLSError(endpoint, f"TLS handshake failed: {e}") from None
            raise EtcdUnavailable(endpoint, f"cannot connect: {e}") from None
        except httpx.TransportError as e:
            raise EtcdUnavailable(endpoint, f"{type(e).__name__} calling {path}: {e}") from None
        if r.status_code != 200:
            try:
                payload = r.json()
                reason = payload.get("message") or payload.get("error") or r.text
            except ValueError:
                reason = r.text.strip() or r.reason_phrase
            raise _classify(endpoint, r.status_code, f"{path}: {reason} (HTTP {r.status_code})")
        try:
            return r.json()
        except ValueError:
            raise EtcdError(endpoint, f"{path}: answer is not JSON: {r.text[:200]!r}", r.status_code) from None

    def _cluster_call(self, path: str, body: dict) -> tuple[str, dict]:
        """Try each endpoint until one answers; return (endpoint, answer)."""
        failures: list[EtcdUnavailable] = []
        for endpoint in self.endpoints:
            try:
                return endpoint, self._post(endpoint, path, body)
            except EtcdUnavailable as e:
                failures.append(e)
        if len(failures) == 1:
            raise failures[0]
        raise EtcdUnavailable(
            ", ".join(self.endpoints),
            "no endpoint answered: " + "; ".join(f"{f.endpoint}: {f.reason}" for f in failures),
        )

    # -- cluster membership

    def member_list(self) -> list[Member]:
        _, data = self._cluster_call("/v3/cluster/member/list", {"linearizable": True})
        return [Member.from_json(m) for m in data.get("members", [])]

    def local_members(self, endpoint: str) -> list[Member]:
        """The member list as ``endpoint`` itself last knew it (served from its own store, without quorum)."""
        data = self._post(endpoint, "/v3/cluster/member/list", {"linearizable": False})
        return [Member.from_json(m) for m in data.get("members", [])]

    def member_add(self, peer_urls: list[str], learner: bool = True) -> MemberAdded:
        _, data = self._cluster_call("/v3/cluster/member/add", {"peerURLs": list(peer_urls), "isLearner": learner})
        return MemberAdded(
            member=Member.from_json(data["member"]), members=tuple(Member.from_json(m) for m in data.get("members", []))
        )

    def member_promote(self, member_id: int) -> list[Member]:
        _, data = self._cluster_call("/v3/cluster/member/promote", {"ID": str(member_id)})
        return [Member.from_json(m) for m in data.get("members", [])]

    def member_remove(self, member_id: int) -> list[Member]:
        _, data = self._cluster_call("/v3/cluster/member/remove", {"ID": str(member_id)})
        return [Member.from_json(m) for m in data.get("members", [])]

    def member_update(self, member_id: int, peer_urls: list[str]) -> list[Member]:
        _, data = self._cluster_call("/v3/cluster/member/update", {"ID": str(member_id), "peerURLs": list(peer_urls)})
        return [Member.from_json(m) for m in data.get("members", [])]

    # -- maintenance

    def status(self, endpoint: str) -> EndpointStatus:
        endpoint = endpoint.rstrip("/")
        d = self._post(endpoint, "/v3/maintenance/status", {})
        header = d.get("header", {})
        return EndpointStatus(
            endpoint=endpoint,
            member_id=int(header.get("member_id", 0)),
            leader_id=int(d.get("leader", 0)),
            raft_index=int(d.get("raftIndex", 0)),
            raft_term=int(d.get("raftTerm", 0)),
            raft_applied_index=int(d.get("raftAppliedIndex", 0)),
            version=d.get("version", ""),
            db_size=int(d.get("dbSize", 0)),
            errors=tuple(d.get("errors", ())),
            is_learner=bool(d.get("isLearner", False)),
            revision=int(header.get("revision", 0)),
        )

    def statuses(self, endpoints: Iterable[str] | None = None) -> list[EndpointStatus | EndpointUnreachable]:
        """Status of every endpoint (this client's, or those given, e.g. every member's client URL);
        one that cannot be asked is reported, not raised."""
        out: list[EndpointStatus | EndpointUnreachable] = []
        for endpoint in self.endpoints if endpoints is None else [e.rstrip("/") for e in endpoints]:
            try:
                out.append(self.status(endpoint))
            except EtcdError as e:
                out.append(EndpointUnreachable(endpoint, e.reason))
        return out

    def version(self, endpoint: str) -> tuple[str, str]:
        """(the member's own etcd version, the cluster version) as ``endpoint`` reports them (``GET /version``;
        the cluster version is "not_decided" until the member has joined)."""
        endpoint = endpoint.rstrip("/")
        try:
            r = self._http.get(f"{endpoint}/version")
        except httpx.TransportError as e:
            raise EtcdUnavailable(endpoint, f"{type(e).__name__} calling /version: {e}") from None
        if r.status_code != 200:
            raise _classify(endpoint, r.status_code, f"/version: {r.text.strip()} (HTTP {r.status_code})")
        try:
            d = r.json()
        except ValueError:
            raise EtcdError(endpoint, f"/version: answer is not JSON: {r.text[:200]!r}", r.status_code) from None
        return str(d.get("etcdserver", "")), str(d.get("etcdcluster", ""))

    def alarms(self) -> list[Alarm]:
        _, d = self._cluster_call("/v3/maintenance/alarm", {"action": "GET", "memberID": "0", "alarm": "NONE"})
        return [Alarm(member_id=int(a.get("memberID", 0)), alarm=a.get("alarm", "NONE")) for a in d.get("alarms", [])]

    def health(self, endpoint: str) -> EndpointHealth:
        """A linearizable read through ``endpoint`` (what ``etcdctl endpoint health`` does)."""
        endpoint = endpoint.rstrip("/")
        start = time.monotonic()
        try:
            self._post(endpoint, "/v3/kv/range", {"key": _b64(HEALTH_KEY), "serializable": False})
        except EtcdError as e:
            return EndpointHealth(endpoint, False, time.monotonic() - start, e.reason)
        return EndpointHealth(endpoint, True, time.monotonic() - start)

    def leader(self) -> tuple[int, str]:
        """(leader member ID, a client URL of the leader)."""
        leader_id = 0
        for s in self.statuses():
            if isinstance(s, EndpointStatus) and s.leader_id:
                leader_id = s.leader_id
                if s.member_id == leader_id:
                    return leader_id, s.endpoint
        if not leader_id:
            raise EtcdUnavailable(", ".join(self.endpoints), "no endpoint knows a leader")
        for m in self.member_list():
            if m.id == leader_id and m.client_urls:
                return leader_id, m.client_urls[0].rstrip("/")
        raise EtcdUnavailable(", ".join(self.endpoints), f"leader {leader_id:x} has no reachable client URL")

    def move_leader(self, target_id: int) -> int:
        """Transfer leadership to ``target_id`` (sent to the current leader). Returns the old leader's ID."""
        leader_id, endpoint = self.leader()
        if leader_id == target_id:
            return leader_id
        self._post(
            endpoint,
            "/v3/maintenance/transfer-leadership",
            {"targetID": str(target_id)},
            timeout=max(self.timeout, 10.0),
        )
        return leader_id

    def snapshot(self, path: str | Path) -> int:
        """Stream a snapshot of the backend to ``path``; returns its size in bytes."""
        path = Path(path)
        partial = path.with_name(path.name + ".part")
        failures: list[str] = []
        for endpoint in self.endpoints:
            try:
                size = self._snapshot_from(endpoint, partial)
            except EtcdUnavailable as e:
                failures.append(f"{e.endpoint}: {e.reason}")
                partial.unlink(missing_ok=True)
                continue
            partial.replace(path)
            return size
        raise EtcdUnavailable(", ".join(self.endpoints), "snapshot failed everywhere: " + "; ".join(failures))

    def _snapshot_from(self, endpoint: str, partial: Path) -> int:
        size = 0
        try:
            with self._http.stream(
                "POST",
                f"{endpoint}/v3/maintenance/snapshot",
                json={},
                timeout=httpx.Timeout(self.timeout, read=max(self.timeout, 60.0)),
            ) as r:
                if r.status_code != 200:
                    r.read()
                    raise _classify(endpoint, r.status_code, f"/v3/maintenance/snapshot: {r.text.strip()}")
                with open(partial, "wb") as f:
                    for chunk in json_stream(r.iter_text()):
                        if "error" in chunk:
                            err = chunk["error"]
                            raise EtcdError(endpoint, f"snapshot: {err.get('message', err)}")
                        blob = chunk.get("result", {}).get("blob")
                        if blob:
                            data = _unb64(blob)
                            f.write(data)
                            size += len(data)
        except (httpx.TransportError, ValueError) as e:
            raise EtcdUnavailable(endpoint, f"snapshot stream broke: {type(e).__name__}: {e}") from None
        if size == 0:
            raise EtcdError(endpoint, "snapshot stream was empty")
        return size

    # -- kv

    def put(self, key: bytes | str, value: bytes | str) -> int:
        """Write a key; returns the revision."""
        _, d = self._cluster_call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(d.get("header", {}).get("revision", 0))

    def put_many(self, items: Iterable[tuple[bytes | str, bytes | str]], batch: int = 100) -> int:
        """Write many keys, ``batch`` per transaction (etcd allows 128 operations per txn by default);
        returns the last revision."""
        revision, ops = 0, []
        for key, value in items:
            ops.append({"requestPut": {"key": _b64(key), "value": _b64(value)}})
            if len(ops) == batch:
                revision = self._txn(ops)
                ops = []
        if ops:
            revision = self._txn(ops)
        return revision

    def _txn(self, ops: list[dict]) -> int:
        _, d = self._cluster_call("/v3/kv/txn", {"success": ops})
        return int(d.get("header", {}).get("revision", 0))

    def get(self, key: bytes | str) -> bytes | None:
        """A linearizable read of one key."""
        _, d = self._cluster_call("/v3/kv/range", {"key": _b64(key), "serializable": False})
        kvs = d.get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None


_TRANSIENT_RECONFIG = (EtcdUnhealthyCluster, EtcdUnavailable)


def _retry_deadline(deadline: float, interval: float) -> bool:
    return time.monotonic() + interval <= deadline


def promote_when_ready(
    client: EtcdClient, member_id: int, timeout: float = 60.0, interval: float = 0.5
) -> list[Member]:
    """Promote a learner, retrying while etcd says it has not caught up yet.

    Also retried: "unhealthy cluster" / "not enough started members" (etcd's strict
    reconfiguration check wants every member connected for 5 s before a change) and
    unreachable endpoints. Idempotent: a member that is already voting counts as promoted.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.member_promote(member_id)
        except EtcdMemberNotLearner:
            return client.member_list()
        except (EtcdNotLearnerReady, *_TRANSIENT_RECONFIG) as e:
            if not _retry_deadline(deadline, interval):
                raise EtcdNotLearnerReady(
                    e.endpoint, f"learner {member_id:x} not promoted after {timeout:.0f}s: {e.reason}", e.status_code
                ) from None
            time.sleep(interval)


def add_member_when_ready(
    client: EtcdClient, peer_urls: list[str], learner: bool = True, timeout: float = 30.0, interval: float = 0.5
) -> MemberAdded:
    """Add a member, retrying etcd's transient refusals (a member that joined less than
    5 s ago makes etcd answer "unhealthy cluster"). Idempotent: when a member with these
    peer URLs already exists (a resumed run), that member is returned."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.member_add(peer_urls, learner=learner)
        except EtcdMemberExists:
            members = tuple(client.member_list())
            existing = next((m for m in members if set(m.peer_urls) == set(peer_urls)), None)
            if existing is None:
                raise
            return MemberAdded(member=existing, members=members)
        except _TRANSIENT_RECONFIG:
            if not _retry_deadline(deadline, interval):
                raise
            time.sleep(interval)


def remove_member_when_ready(
    client: EtcdClient, member_id: int, timeout: float = 30.0, interval: float = 0.5
) -> list[Member]:
    """Remove a member, retrying etcd's transient refusals ("not enough started members").
    Idempotent: a member already gone counts as removed. Quorum safety is the caller's
    decision (:func:`haplane.core.quorum.can_remove`); etcd's own check is a second line."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.member_remove(member_id)
        except EtcdMemberNotFound:
            return client.member_list()
        except _TRANSIENT_RECONFIG:
            if not _retry_deadline(deadline, interval):
                raise
            time.sleep(interval)
