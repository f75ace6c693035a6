"""Stand-ins for kube-controller-manager and kube-scheduler on an emulated VM: leader election only.

Each runs on every replica, as the real ones do with ``--leader-elect=true``, and takes and renews a
``coordination.k8s.io/v1`` Lease (``kube-system/kube-controller-manager`` or
``kube-system/kube-scheduler``) through its local API server, with its own client certificate of the
cluster CA. The holder is ``<hostname>_<uuid>`` (a new uuid per start, as client-go's). Timings are
client-go's defaults (lease duration 15 s, renew deadline 10 s, retry period 2 s), given scaled by
the emulator's time scale:

- every retry period a candidate reads the Lease; it takes it when there is none, or when the
  holder's ``renewTime`` plus ``leaseDurationSeconds`` is past (the stand-ins share one clock, so the
  record's time is used where client-go uses the time it first saw the record);
- the holder renews every retry period; one that could not renew for the renew deadline stops
  leading and exits (the real components exit on "leaderelection lost"), to be restarted;
- a write carries the ``resourceVersion`` it read: of two candidates only one wins (409 for the other).

``/healthz`` on the VM's address (10257, 10259) answers ``ok`` while the stand-in runs; the API
server's ``componentstatuses`` asks it. Standard library only, so it is up within moments of its start.

On an emulated VM both run as threads of the API-server stand-in's process (``--controller``,
:func:`start_components`): one Python process per VM instead of three (about 44 MB less a VM), and
killing the VM ends them with it; a thread that loses its leadership starts over with a new
identity, as the restarted process would. They reach the API server on its listener for the VM's own
components (an ephemeral port, HTTP/1.1 with keep-alive: one TLS handshake per connection, not per
request). ``python -m haplane.emulator.controllers`` runs one as its own process, which exits on a
lost leadership.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import signal
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMESPACE = "kube-system"
COMPONENT_NAMES = ("kube-controller-manager", "kube-scheduler")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


class Api:
    """The local API server, over HTTPS with this component's client certificate, on one connection
    kept alive between calls (reopened when the server closed it: HTTP/1.0, or idle too long)."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> None:
        self.host, self.port, self.ctx, self.timeout = host, port, ctx, timeout
        self._conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        for attempt in (1, 2):
            reused = self._conn is not None and self._conn.sock is not None
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused and attempt == 1:  # the server closed an idle connection: the request never ran
                    continue
                raise
            except BaseException:
                self.close()
                raise
            return resp.status, (json.loads(raw) if raw else {})
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Elector:
    def __init__(self, api: Api, name: str, identity: str, lease_s: float, renew_s: float, retry_s: float) -> None:
        self.api, self.name, self.identity = api, name, identity
        self.lease_s, self.renew_s, self.retry_s = lease_s, renew_s, retry_s
        self.leading = False
        self.last_renew = 0.0  # monotonic time of the last successful write as holder
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}"

    def _spec(self, old: dict | None) -> dict:
        now = _micro(_now())
        spec = dict(old or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if old else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=max(1, round(self.lease_s)), renewTime=now)
        return spec

    def try_acquire_or_renew(self) -> bool:
        code, lease = self.api.call("GET", self.path)
        if code == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": NAMESPACE},
                "spec": self._spec(None),
            }
            code, _ = self.api.call("POST", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases", body)
            return code == 201
        if code != 200:
            return False
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity and spec.get("holderIdentity"):
            renewed = _parse(spec.get("renewTime"))
            duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
            if renewed is not None and (_now() - renewed).total_seconds() < duration:
                return False  # held by another, not expired
        lease["spec"] = self._spec(spec)
        code, _ = self.api.call("PUT", self.path, lease)
        return code == 200

    def step(self) -> bool:
        """One retry period's work; False once leadership is lost (the real components exit then)."""
        try:
            ok = self.try_acquire_or_renew()
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
            ok = False
        now = time.monotonic()
        if ok:
            if not self.leading:
                print(
                    f"{_micro(_now())} successfully acquired lease {NAMESPACE}/{self.name} as {self.identity}",
                    flush=True,
                )
            self.leading, self.last_renew = True, now
        elif self.leading and now - self.last_renew > self.renew_s:
            print(f"{_micro(_now())} failed to renew lease {NAMESPACE}/{self.name}: leaderelection lost", flush=True)
            return False
        return True


@dataclass(frozen=True)
class Component:
    """One stand-in: ``kube-controller-manager`` or ``kube-scheduler``, its /healthz port, its client
    certificate (the CA is the cluster's)."""

    name: str
    port: int
    cert_file: str
    key_file: str

    @classmethod
    def parse(cls, text: str) -> Component:
        """``NAME:PORT:CERT:KEY`` (the API-server stand-in's ``--controller``)."""
        name, port, cert, key = text.split(":", 3)
        if name not in COMPONENT_NAMES:
            raise ValueError(f"unknown component {name!r}; expected one of {COMPONENT_NAMES}")
        return cls(name, int(port), cert, key)


def run_component(
    component: Component,
    ip: str,
    hostname: str,
    apiserver_port: int,
    ca_file: str,
    timings: tuple[float, float, float],
    stop: threading.Event,
    restart_on_loss: bool,
) -> int:
    """Serve /healthz and take part in the election until ``stop``. On a lost leadership: return 1
    (a process exits, to be restarted by its supervisor), or with ``restart_on_loss`` start over
    with a new identity after a retry period, as a restarted process would."""
    lease_s, renew_s, retry_s = timings
    health = _health_server(ip, component.port)
    api = None
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.load_cert_chain(component.cert_file, component.key_file)
        api = Api(ip, apiserver_port, ctx, timeout=max(1.0, retry_s))
        while not stop.is_set():
            elector = Elector(api, component.name, f"{hostname}_{uuid.uuid4()}", lease_s, renew_s, retry_s)
            while not stop.is_set() and elector.step():
                stop.wait(retry_s)
            if stop.is_set():
                break
            if not restart_on_loss:
                return 1
            stop.wait(retry_s)
        return 0
    finally:
        if api is not None:
            api.close()
        health.shutdown()
        health.server_close()


def start_components(
    components: list[Component],
    ip: str,
    hostname: str,
    apiserver_port: int,
    ca_file: str,
    timings: tuple[float, float, float],
    stop: threading.Event,
) -> list[threading.Thread]:
    """The stand-ins as threads of the API-server stand-in's process (one Python process per VM
    instead of three: killing the VM still ends them all)."""
    threads = [
        threading.Thread(
            target=run_component,
            args=(c, ip, hostname, apiserver_port, ca_file, timings, stop, True),
            name=c.name,
            daemon=True,
        )
        for c in components
    ]
    for t in threads:
        t.start()
    return threads


def _health_server(ip: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            ok = self.path.split("?", 1)[0] in ("/healthz", "/livez", "/readyz")
            data = b"ok" if ok else b"not found"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((ip, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="haplane-controllers-standin")
    p.add_argument("--component", required=True, choices=COMPONENT_NAMES)
    p.add_argument("--ip", required=True, help="the VM's address: /healthz is served there")
    p.add_argument("--port", type=int, required=True, help="/healthz port (10257, 10259)")
    p.add_argument("--hostname", required=True)
    p.add_argument("--apiserver-port", type=int, default=6443)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--cert-file", required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("--leader-elect-lease-duration", type=float, default=15.0)
    p.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    p.add_argument("--leader-elect-retry-period", type=float, default=2.0)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    timings = (args.leader_elect_lease_duration, args.leader_elect_renew_deadline, args.leader_elect_retry_period)
    component = Component(args.component, args.port, args.cert_file, args.key_file)
    return run_component(
        component, args.ip, args.hostname, args.apiserver_port, args.ca_file, timings, stop, restart_on_loss=False
    )


if __name__ == "__main__":
    sys.exit(main())
