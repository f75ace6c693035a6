"""A stand-in for kube-apiserver on an emulated VM.

Serves HTTPS on ``IP:6443`` with the replica's own certificate:
``/livez`` (the process is up) and ``/readyz`` (a linearizable read of the
local etcd over mutual TLS succeeds), and ``POST /haplane/canary`` (HTTPS only) that
writes ``{"key": ..., "value": ...}`` under ``/haplane/canary/`` in etcd through this replica
(a write needs etcd's quorum, as every write of kube-apiserver does: the availability
benchmark's canary). A plain-HTTP ``/healthz`` on
``IP:8080`` mirrors ``/readyz`` for the target pool's legacy HTTP health
check, as nginx in front of ``/healthz`` does in Kubernetes the Hard Way.

Run as its own process (``python -m haplane.emulator.apiserver ...``) so
that killing a VM kills it too.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from haplane.node import TLS_FILES


class _Server(ThreadingHTTPServer):
    """Threaded HTTP(S) server; the TLS handshake runs in the request's thread, not in accept()."""

    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:  # type: ignore[override]
        if self.tls is not None:
            request.settimeout(10)
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:  # failed handshakes are the client's problem
        pass


def _etcd_ready(client: httpx.Client, etcd_url: str) -> tuple[bool, str]:
    body = {"key": base64.b64encode(b"/haplane/readyz").decode(), "serializable": False}
    try:
        resp = client.post(f"{etcd_url}/v3/kv/range", json=body)
    except httpx.HTTPError as exc:
        return False, f"etcd {etcd_url} unreachable: {type(exc).__name__}"
    if resp.status_code != 200:
        return False, f"etcd {etcd_url} answered {resp.status_code}"
    return True, "ok"


def _etcd_put(client: httpx.Client, etcd_url: str, key: str, value: str) -> tuple[bool, str]:
    body = {"key": base64.b64encode(f"/haplane/canary/{key}".encode()).decode(),
            "value": base64.b64encode(value.encode()).decode()}
    try:
        resp = client.post(f"{etcd_url}/v3/kv/put", json=body)
    except httpx.HTTPError as exc:
        return False, f"etcd {etcd_url} unreachable: {type(exc).__name__}"
    if resp.status_code != 200:
        return False, f"etcd {etcd_url} answered {resp.status_code}"
    return True, json.dumps({"revision": resp.json().get("header", {}).get("revision")})


def make_handler(etcd: httpx.Client, etcd_url: str, name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, text: str) -> None:
            data = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Haplane-Replica", name)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._send(200, "ok")
            elif path in ("/readyz", "/healthz"):
                ok, why = _etcd_ready(etcd, etcd_url)
                self._send(200 if ok else 503, why)
            elif path == "/version":
                self._send(200, json.dumps({"replica": name, "gitVersion": "haplane-standin"}))
            else:
                self._send(404, f"no such path {path}")

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path != "/haplane/canary" or self.server.tls is None:  # type: ignore[attr-defined]
                self._send(404, f"no such path {path}")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                key, value = str(body["key"]), str(body.get("value", ""))
            except (ValueError, KeyError, TypeError):
                self._send(400, 'expected {"key": ..., "value": ...}')
                return
            ok, why = _etcd_put(etcd, etcd_url, key, value)
            self._send(200 if ok else 503, why)

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="haplane-apiserver-standin")
    p.add_argument("--ip", required=True)
    p.add_argument("--name", default="replica")
    p.add_argument("--port", type=int, default=6443)
    p.add_argument("--health-port", type=int, default=8080)
    p.add_argument("--pki-dir", type=Path, help="serve TLS and talk to etcd with mutual TLS")
    p.add_argument("--etcd-url", required=True)
    args = p.parse_args(argv)

    if args.pki_dir:
        pki: Path = args.pki_dir
        verify = ssl.create_default_context(cafile=str(pki / TLS_FILES["etcd-ca"]))
        verify.load_cert_chain(pki / TLS_FILES["apiserver-etcd-client-cert"],
                               pki / TLS_FILES["apiserver-etcd-client-key"])
        etcd = httpx.Client(verify=verify, timeout=2.0)
    else:
        etcd = httpx.Client(timeout=2.0)
    handler = make_handler(etcd, args.etcd_url, args.name)

    api = _Server((args.ip, args.port), handler)
    if args.pki_dir:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / TLS_FILES["apiserver-cert"], pki / TLS_FILES["apiserver-key"])
        api.tls = ctx
    health = _Server((args.ip, args.health_port), handler)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for server in (api, health):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    api.shutdown()
    health.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
