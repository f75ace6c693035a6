"""A stand-in for kube-apiserver on an emulated VM.

Serves HTTPS on ``IP:6443`` with the replica's own certificate:
``/livez`` (the process is up) and ``/readyz`` (a linearizable read of the
local etcd over mutual TLS succeeds), and ``POST /haplane/canary`` (HTTPS only) that
writes ``{"key": ..., "value": ...}`` under ``/haplane/canary/`` in etcd through this replica
(a write needs etcd's quorum, as every write of kube-apiserver does: the availability
benchmark's canary). A plain-HTTP ``/healthz`` on
``IP:8080`` mirrors ``/readyz`` for the target pool's legacy HTTP health
check, as nginx in front of ``/healthz`` does in Kubernetes the Hard Way.

Service-account tokens, as kube-apiserver handles them (see
:mod:`haplane.cloud.serviceaccount`), when started with the key files:

- ``POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`` (TokenRequest)
  mints a token signed with ``--service-account-signing-key-file``;
- ``POST /apis/authentication.k8s.io/v1/tokenreviews`` (TokenReview) and
  ``POST /apis/authentication.k8s.io/v1/selfsubjectreviews`` (the caller's own
  bearer token) verify against every key of ``--service-account-key-file``;
- any request with a bearer token that does not verify answers 401.

Minting and reviewing need a client certificate signed by ``--client-ca-file``
(kube-apiserver's x509 authentication of an administrator). Key files are
re-read when they change on disk, so a rotation delivered to the VM takes effect
without a restart.

The Kubernetes API kubectl and the controller-manager and scheduler stand-ins use (discovery,
``/version``, the ``kubernetes`` Endpoints, Leases, ComponentStatuses): see
:mod:`haplane.emulator.kubeapi`. Every path under ``/api``, ``/apis`` and ``/version`` needs a client
certificate of ``--client-ca-file`` (401 otherwise; a certificate of another CA fails the TLS
handshake). While it runs, the stand-in keeps ``/registry/masterleases/<ip>`` in etcd with a 15 s
etcd lease, renewed every 10 s (kube-apiserver's lease endpoint reconciler) and deletes it when it stops.

Run as its own process (``python -m haplane.emulator.apiserver ...``) so
that killing a VM kills it too; with ``--controller`` the controller-manager and scheduler stand-ins
of :mod:`haplane.emulator.controllers` run in that process as threads (one Python process per VM),
and reach it on a listener of their own with keep-alive (:func:`local_handler`), not through the port
the load balancer forwards.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import signal
import socketserver
import ssl
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from haplane.cloud import serviceaccount
from haplane.emulator import controllers, kubeapi
from haplane.node.spec import CONTROLLER_MANAGER_PORT, SCHEDULER_PORT, TLS_FILES
from haplane.node.startup import KUBERNETES_VERSION

_TOKEN_REQUEST = re.compile(r"^/api/v1/namespaces/([a-z0-9-]+)/serviceaccounts/([a-z0-9.-]+)/token$")
_TOKEN_REVIEW = "/apis/authentication.k8s.io/v1/tokenreviews"
_SELF_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


class KeyFile:
    """A PEM file re-read when its modification time or size changes."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._stamp, self._text = path, None, ""

    def text(self) -> str:
        if self.path is None:
            return ""
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._text, self._stamp = self.path.read_text(), stamp
        return self._text


@dataclass
class ServiceAccounts:
    """The stand-in's service-account settings (kube-apiserver's flags of the same names)."""

    signing_key: KeyFile
    public_keys: KeyFile
    issuer: str = serviceaccount.ISSUER

    @property
    def enabled(self) -> bool:
        return self.signing_key.path is not None and self.public_keys.path is not None


class _Server(ThreadingHTTPServer):
    """Threaded HTTP(S) server; the TLS handshake runs in the request's thread, not in accept()."""

    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the address (``socket.getfqdn``): a VM
        whose resolver is unreachable (a namespaced VM) would otherwise serve seconds late."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def finish_request(self, request, client_address) -> None:  # type: ignore[override]
        if self.tls is not None:
            request.settimeout(10)
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:  # failed handshakes are the client's problem
        pass


LOCAL_IDLE_TIMEOUT_S = 90.0  # kube-apiserver's IdleTimeout: a kept-alive connection idle this long is closed


def local_handler(handler: type[BaseHTTPRequestHandler]) -> type[BaseHTTPRequestHandler]:
    """``handler`` answering HTTP/1.1 with keep-alive, for the listener of this VM's own components only.

    The controller-manager and scheduler stand-ins read their Lease every retry period (2 s); over
    HTTP/1.0 each read paid a TLS handshake, most of an idle VM's CPU. The port the load balancer
    forwards (``--port``) stays HTTP/1.0: a kept-alive connection through the load balancer stays on
    its backend while that replica is replaced (an upgrade's canary got 503s so)."""

    class Local(handler):  # type: ignore[misc, valid-type]
        protocol_version = "HTTP/1.1"
        timeout = LOCAL_IDLE_TIMEOUT_S  # applied after the handshake (StreamRequestHandler.setup)

    return Local


def _rfc3339(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _etcd_post(client: httpx.Client, etcd_url: str, path: str, body: dict) -> tuple[httpx.Response | None, str]:
    """One call to local etcd's JSON gateway: its answer, or None and why there is none."""
    try:
        resp = client.post(f"{etcd_url}{path}", json=body)
    except httpx.HTTPError as exc:
        return None, f"etcd {etcd_url} unreachable: {type(exc).__name__}"
    if resp.status_code != 200:
        return None, f"etcd {etcd_url} answered {resp.status_code}"
    return resp, "ok"


def _etcd_ready(client: httpx.Client, etcd_url: str) -> tuple[bool, str]:
    body = {"key": base64.b64encode(b"/haplane/readyz").decode(), "serializable": False}
    resp, why = _etcd_post(client, etcd_url, "/v3/kv/range", body)
    return resp is not None, why


def _etcd_put(client: httpx.Client, etcd_url: str, key: str, value: str) -> tuple[bool, str]:
    body = {
        "key": base64.b64encode(f"/haplane/canary/{key}".encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    }
    resp, why = _etcd_post(client, etcd_url, "/v3/kv/put", body)
    if resp is None:
        return False, why
    return True, json.dumps({"revision": resp.json().get("header", {}).get("revision")})


def _component_probe(ip: str, port: int) -> tuple[bool, str]:
    """A component's /healthz on this VM (kube-apiserver asks 127.0.0.1; the stand-ins share loopback,
    so the VM's own address)."""
    try:
        resp = httpx.get(f"http://{ip}:{port}/healthz", timeout=1.0)
    except httpx.HTTPError as exc:
        return False, f"Get http://{ip}:{port}/healthz: {type(exc).__name__}"
    return resp.status_code == 200, resp.text.strip() or str(resp.status_code)


COMPONENTS = {"controller-manager": CONTROLLER_MANAGER_PORT, "scheduler": SCHEDULER_PORT}


def make_handler(
    etcd: httpx.Client,
    etcd_url: str,
    name: str,
    sa: ServiceAccounts | None = None,
    ip: str = "127.0.0.1",
    port: int = 6443,
) -> type[BaseHTTPRequestHandler]:
    sa = sa or ServiceAccounts(KeyFile(None), KeyFile(None))
    kv = kubeapi.EtcdKv(etcd, etcd_url)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _json(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Haplane-Replica", name)
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._json(
                code,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": reason,
                    "message": message,
                    "code": code,
                },
            )

        def _admin(self) -> bool:
            """A client certificate verified against --client-ca-file was presented."""
            getpeercert = getattr(self.connection, "getpeercert", None)
            return bool(getpeercert and getpeercert())

        def _bearer(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[7:].strip() if auth.lower().startswith("bearer ") else None

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}") if length else {}

        def _review(self, token: str) -> dict:
            try:
                user = serviceaccount.verify(token, sa.public_keys.text(), issuer=sa.issuer)
            except serviceaccount.TokenError as exc:
                return {"authenticated": False, "error": str(exc)}
            return {
                "authenticated": True,
                "audiences": list(user.audiences),
                "user": {
                    "username": user.username,
                    "uid": user.uid,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{user.namespace}",
                        "system:authenticated",
                    ],
                },
            }

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            # read the body first, whatever the answer: closing a socket with unread input resets
            # the connection, and the client may lose the answer
            try:
                body = self._body()
            except ValueError:
                self._status(400, "BadRequest", "the body is not JSON")
                return
            if path == "/haplane/canary":  # the availability canary: a write through this replica, HTTPS only
                self._canary(body)
                return
            lease = kubeapi.LEASE_PATH.match(path)
            if lease and self._bearer() is None:
                if self._authenticated():
                    self._write_lease(lease[1], None, body)
                return
            if not sa.enabled:
                self._status(404, "NotFound", f"no such path {path}")
                return
            token = self._bearer()
            if token is not None:  # a bearer token must verify, whatever the path
                review = self._review(token)
                if not review["authenticated"]:
                    self._status(401, "Unauthorized", review["error"])
                    return
                if path == _SELF_REVIEW:
                    self._json(
                        201,
                        {
                            "kind": "SelfSubjectReview",
                            "apiVersion": "authentication.k8s.io/v1",
                            "status": {"userInfo": review["user"]},
                        },
                    )
                else:
                    self._status(403, "Forbidden", f"{review['user']['username']} may not POST {path}")
                return
            if not self._admin():
                self._status(401, "Unauthorized", "present a bearer token or a client certificate of the cluster CA")
                return
            match = _TOKEN_REQUEST.match(path)
            if match:
                spec = body.get("spec") or {}
                audiences = tuple(spec.get("audiences") or (sa.issuer,))
                expiration = int(spec.get("expirationSeconds") or 3600)
                if expiration < 600:
                    self._status(
                        422, "Invalid", "spec.expirationSeconds: may not specify a duration less than 10 minutes"
                    )
                    return
                token, exp = serviceaccount.mint(
                    sa.signing_key.text(),
                    namespace=match[1],
                    name=match[2],
                    audiences=audiences,
                    expiration_s=expiration,
                    issuer=sa.issuer,
                )
                self._json(
                    201,
                    {
                        "kind": "TokenRequest",
                        "apiVersion": "authentication.k8s.io/v1",
                        "spec": {"audiences": list(audiences), "expirationSeconds": expiration},
                        "status": {"token": token, "expirationTimestamp": _rfc3339(exp)},
                    },
                )
            elif path == _TOKEN_REVIEW:
                review = self._review(str((body.get("spec") or {}).get("token", "")))
                self._json(201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "status": review})
            else:
                self._status(404, "NotFound", f"no such path {path}")

        def _canary(self, body: dict) -> None:
            if self.server.tls is None:  # type: ignore[attr-defined]
                self._send(404, "no such path /haplane/canary")
                return
            if not isinstance(body, dict) or "key" not in body:
                self._send(400, 'expected {"key": ..., "value": ...}')
                return
            ok, why = _etcd_put(etcd, etcd_url, str(body["key"]), str(body.get("value", "")))
            self._send(200 if ok else 503, why)

        def _send(self, code: int, text: str) -> None:
            data = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Haplane-Replica", name)
            self.end_headers()
            self.wfile.write(data)

        def _authenticated(self) -> bool:
            """A client certificate of the cluster CA was presented; else a 401 is sent."""
            if self.server.tls is not None and self._admin():  # type: ignore[attr-defined]
                return True
            self._status(401, "Unauthorized", "Unauthorized: present a client certificate of the cluster CA")
            return False

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._send(200, "ok")
            elif path in ("/readyz", "/healthz"):
                ok, why = _etcd_ready(etcd, etcd_url)
                self._send(200 if ok else 503, why)
            elif path == "/version" or path.startswith(("/api/", "/apis/")) or path in ("/api", "/apis"):
                if self._authenticated():
                    try:
                        self._api_get(path)
                    except kubeapi.EtcdUnavailable as exc:
                        self._status(503, "ServiceUnavailable", str(exc))
            else:
                self._send(404, f"no such path {path}")

        def do_PUT(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                body = self._body()
            except ValueError:
                self._status(400, "BadRequest", "the body is not JSON")
                return
            lease = kubeapi.LEASE_PATH.match(path)
            if not self._authenticated():
                return
            if lease and lease[2]:
                self._write_lease(lease[1], lease[2], body)
            else:
                self._status(405, "MethodNotAllowed", f"PUT is not supported on {path}")

        def _write_lease(self, namespace: str, name: str | None, body: dict) -> None:
            """Create (``name`` None: POST) or update a Lease; 409 on a conflict, as kube-apiserver."""
            lease, why = kubeapi.check_lease(body, namespace, name)
            if lease is None:
                self._status(422, "Invalid", why)
                return
            lease_name = lease["metadata"]["name"]
            key = f"{kubeapi.LEASES}{namespace}/{lease_name}"
            try:
                if name is None:
                    lease["metadata"]["creationTimestamp"] = _rfc3339(int(dt.datetime.now(dt.UTC).timestamp()))
                    rev = kv.put_if(key, lease, None)
                    conflict = f'leases.coordination.k8s.io "{lease_name}" already exists'
                    code, reason = 409, "AlreadyExists"
                else:
                    rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
                    old = kv.get(key)
                    if old is None:
                        self._status(404, "NotFound", f'leases.coordination.k8s.io "{lease_name}" not found')
                        return
                    if not rv.isdigit():
                        self._status(422, "Invalid", "metadata.resourceVersion: must be specified for an update")
                        return
                    lease["metadata"]["creationTimestamp"] = old.value.get("metadata", {}).get("creationTimestamp")
                    rev = kv.put_if(key, lease, int(rv))
                    conflict = (
                        f'Operation cannot be fulfilled on leases.coordination.k8s.io "{lease_name}": the '
                        f"object has been modified; please apply your changes to the latest version and try "
                        f"again"
                    )
                    code, reason = 409, "Conflict"
            except kubeapi.EtcdUnavailable as exc:
                self._status(503, "ServiceUnavailable", str(exc))
                return
            if rev is None:
                self._status(code, reason, conflict)
                return
            lease["metadata"]["resourceVersion"] = str(rev)
            self._json(201 if name is None else 200, lease)

        def _api_get(self, path: str) -> None:
            now = dt.datetime.now(dt.UTC)
            table = kubeapi.wants_table(self.headers.get("Accept", ""))
            if path == "/version":
                self._json(200, kubeapi.version_info(KUBERNETES_VERSION))
                return
            doc = kubeapi.discovery(path, f"{ip}:{port}")
            if doc is not None:
                self._json(200, doc)
                return
            if m := kubeapi.ENDPOINTS_PATH.match(path):
                if m[1] != "default" or m[2] not in (None, "kubernetes"):
                    if m[2]:
                        self._status(404, "NotFound", f'endpoints "{m[2]}" not found')
                    else:
                        self._json(200, kubeapi.as_list("EndpointsList", "v1", [], 0))
                    return
                kvs, rev = kv.list(kubeapi.MASTER_LEASES)
                objs = [kubeapi.endpoints(kvs, port)]
                if table:
                    self._json(200, kubeapi.endpoints_table(objs, now))
                else:
                    self._json(200, objs[0] if m[2] else kubeapi.as_list("EndpointsList", "v1", objs, rev))
                return
            if m := kubeapi.LEASE_PATH.match(path):
                if m[2]:
                    found = kv.get(f"{kubeapi.LEASES}{m[1]}/{m[2]}")
                    if found is None:
                        self._status(404, "NotFound", f'leases.coordination.k8s.io "{m[2]}" not found')
                        return
                    objs = [kubeapi.lease_object(found)]
                    rev = found.mod_revision
                else:
                    kvs, rev = kv.list(f"{kubeapi.LEASES}{m[1]}/")
                    objs = [kubeapi.lease_object(k) for k in kvs]
                if table:
                    self._json(200, kubeapi.leases_table(objs, now))
                else:
                    self._json(
                        200, objs[0] if m[2] else kubeapi.as_list("LeaseList", "coordination.k8s.io/v1", objs, rev)
                    )
                return
            if m := kubeapi.COMPONENTS_PATH.match(path):
                wanted = [m[1]] if m[1] else list(COMPONENTS)
                if any(c not in COMPONENTS for c in wanted):
                    self._status(404, "NotFound", f'componentstatuses "{m[1]}" not found')
                    return
                objs = [kubeapi.component_status(c, lambda c=c: _component_probe(ip, COMPONENTS[c])) for c in wanted]
                if table:
                    self._json(200, kubeapi.components_table(objs))
                else:
                    self._json(200, objs[0] if m[1] else kubeapi.as_list("ComponentStatusList", "v1", objs, 0))
                return
            self._status(404, "NotFound", "the server could not find the requested resource")

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="haplane-apiserver-standin")
    p.add_argument("--ip", required=True)
    p.add_argument("--name", default="replica")
    p.add_argument("--port", type=int, default=6443)
    p.add_argument("--health-port", type=int, default=8080)
    p.add_argument("--pki-dir", type=Path, help="serve TLS and talk to etcd with mutual TLS")
    p.add_argument("--etcd-url", required=True)
    p.add_argument("--client-ca-file", type=Path, help="CA of administrators' client certificates")
    p.add_argument("--service-account-key-file", type=Path, help="public keys that verify service-account tokens")
    p.add_argument("--service-account-signing-key-file", type=Path, help="private key that signs them")
    p.add_argument("--service-account-issuer", default=serviceaccount.ISSUER)
    p.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="NAME:PORT:CERT:KEY",
        help="run this controller-manager or scheduler stand-in in this process (needs --client-ca-file)",
    )
    p.add_argument("--leader-elect-lease-duration", type=float, default=15.0)
    p.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    p.add_argument("--leader-elect-retry-period", type=float, default=2.0)
    args = p.parse_args(argv)
    try:
        components = [controllers.Component.parse(c) for c in args.controller]
    except ValueError as exc:
        p.error(f"--controller: {exc}")
    if components and not args.client_ca_file:
        p.error("--controller needs --client-ca-file (the CA the stand-ins verify this server with)")
    sa = ServiceAccounts(
        KeyFile(args.service_account_signing_key_file),
        KeyFile(args.service_account_key_file),
        args.service_account_issuer,
    )

    if args.pki_dir:
        pki: Path = args.pki_dir
        verify = ssl.create_default_context(cafile=str(pki / TLS_FILES["etcd-ca"]))
        verify.load_cert_chain(
            pki / TLS_FILES["apiserver-etcd-client-cert"], pki / TLS_FILES["apiserver-etcd-client-key"]
        )
        etcd = httpx.Client(verify=verify, timeout=2.0)
    else:
        etcd = httpx.Client(timeout=2.0)
    handler = make_handler(etcd, args.etcd_url, args.name, sa, ip=args.ip, port=args.port)

    api = _Server((args.ip, args.port), handler)
    if args.pki_dir:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / TLS_FILES["apiserver-cert"], pki / TLS_FILES["apiserver-key"])
        if args.client_ca_file:  # client certificates are optional; bearer tokens are the other way in
            ctx.load_verify_locations(cafile=str(args.client_ca_file))
            ctx.verify_mode = ssl.CERT_OPTIONAL
        api.tls = ctx
    health = _Server((args.ip, args.health_port), handler)
    servers = [api, health]
    local_port = args.port
    if components and args.pki_dir:
        # the VM's own components: a listener of their own, with keep-alive, on an ephemeral port of the
        # VM's address that nothing forwards to (kube-controller-manager once used the apiserver's
        # localhost port so); the same handler, TLS and client-certificate check as --port
        local = _Server((args.ip, 0), local_handler(handler))
        local.tls = api.tls
        servers.append(local)
        local_port = local.server_address[1]

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    reconciler = threading.Thread(
        target=keep_master_lease, args=(kubeapi.EtcdKv(etcd, args.etcd_url), args.ip, stop), daemon=True
    )
    reconciler.start()
    timings = (args.leader_elect_lease_duration, args.leader_elect_renew_deadline, args.leader_elect_retry_period)
    threads = controllers.start_components(
        components, args.ip, args.name, local_port, str(args.client_ca_file), timings, stop
    )
    stop.wait()
    reconciler.join(3)
    for t in threads:
        t.join(3)
    for server in servers:
        server.shutdown()
    return 0


def keep_master_lease(kv: kubeapi.EtcdKv, ip: str, stop: threading.Event) -> None:
    """kube-apiserver's lease endpoint reconciler: this API server's IP under
    ``/registry/masterleases/`` with an etcd lease of 15 s, renewed every 10 s while it runs
    (kube-apiserver's reconcile interval: it drops out of the ``kubernetes`` Endpoints at most 15 s
    after it dies), deleted when it stops. A renewal is a lease grant and a put; the key's ``since``
    (kept across restarts) is read once, by the first renewal that reaches etcd."""
    key = f"{kubeapi.MASTER_LEASES}{ip}"
    since = None
    while not stop.is_set():
        try:
            if since is None:
                old = kv.get(key)
                since = (old.value.get("since") if old else None) or kubeapi.micro_time()
            kv.put_with_ttl(key, {"ip": ip, "since": since}, kubeapi.MASTER_LEASE_TTL_S)
        except (kubeapi.EtcdUnavailable, ValueError, KeyError):
            pass  # etcd not there yet, or no quorum: try again
        stop.wait(kubeapi.MASTER_LEASE_RENEW_S)
    try:
        kv.delete(key)
    except kubeapi.EtcdUnavailable:
        pass


if __name__ == "__main__":
    sys.exit(main())
