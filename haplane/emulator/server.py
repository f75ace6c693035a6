"""The GCE emulator: an HTTP server on loopback speaking Compute Engine's REST/JSON v1.

In Python::

    from haplane.emulator.server import Emulator
    with Emulator(state_dir=tmp_path, profile="instant") as emu:
        client = compute_v1.InstancesClient(
            client_options={"api_endpoint": emu.url}, credentials=AnonymousCredentials())

From the shell (``haplane emulator``, see :func:`add_cli`)::

    haplane emulator --port 8787 --state-dir /tmp/emu --profile gce --time-scale 0.01

prints ``haplane emulator ready on http://127.0.0.1:PORT`` once it serves, and
stops cleanly (runtime closed, exit 0) on SIGINT/SIGTERM.

Paths: ``/compute/v1/...`` the Compute API (:mod:`.api`), ``/_emulator/...``
the admin API (:mod:`.control`, client :mod:`.admin`), ``/v1/projects/...``
Secret Manager and ``/oauth2/v3/tokeninfo`` (:mod:`.secretmanager`; every Secret Manager
call needs a bearer token: the workers' one, :attr:`Emulator.workers_token`, or a VM's). Anything else: 404
in Google's error shape.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from haplane.emulator.api import ComputeApi
from haplane.emulator.calllog import CallLog
from haplane.emulator.catalog import Catalog
from haplane.emulator.control import Control
from haplane.emulator.errors import ApiError
from haplane.emulator.faults import FaultBook
from haplane.emulator.latency import PROFILES, LatencyModel
from haplane.emulator.operations import OperationBook, Timer
from haplane.emulator.resources import Ctx
from haplane.emulator.runtime import NullRuntime, Runtime
from haplane.emulator.secretmanager import SecretManager
from haplane.emulator.store import Store

log = logging.getLogger(__name__)
DEFAULT_PORT = 8787
WORKERS_TOKEN_FILE = "workers-token"  # in the state directory, mode 0600
MAX_BODY = 8 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: Emulator


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY a keep-alive client waits for the
    # delayed ACK (~40 ms) on every call
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s - %s", self.address_string(), format % args)

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ApiError(413, "invalid", "Request body too large")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                raise ApiError(400, "parseError", "Parse Error: the request body is not JSON") from None
            emulator = self.server.emulator
            if parts.path.startswith("/compute/v1/"):
                status, reply = emulator.api.handle(self.command, parts.path, query, body)
            elif parts.path.startswith("/_emulator/"):
                status, reply = emulator.control.handle(self.command, parts.path, query, body)
            elif parts.path.startswith("/v1/projects/"):  # Secret Manager
                who = emulator.secrets.identity(self.headers.get("Authorization"))
                status, reply = emulator.secrets.handle(self.command, parts.path, query, body, who)
            elif parts.path.startswith("/computeMetadata/v1/"):  # refused: see secretmanager's docstring
                status, reply = emulator.secrets.metadata(parts.path)
            elif parts.path == "/oauth2/v3/tokeninfo":
                status, reply = emulator.secrets.tokeninfo(query)
            else:
                raise ApiError(404, "notFound", f"No such path: {self.command} {parts.path}")
        except ApiError as exc:
            status, reply = exc.code, exc.body()
        except Exception as exc:  # never a silent success
            log.exception("emulator request failed")
            status, reply = 500, ApiError(500, "backendError", f"{type(exc).__name__}: {exc}").body()
        text = isinstance(reply, str)
        data = reply.encode() if text else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text else "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve


def check_host(host: str) -> str:
    """Refuse any address outside 127.0.0.0/8: the emulator is for this machine only."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--host must be an IPv4 address in 127.0.0.0/8, got {host!r}") from None
    if ip not in ipaddress.ip_network("127.0.0.0/8"):
        raise ValueError(f"--host {host} is not in 127.0.0.0/8: the emulator only serves on loopback")
    return host


class Emulator:
    """The emulator: ``start()`` serves in a background thread, ``stop()`` ends it and closes the runtime.

    ``profile`` / ``time_scale``: the latency model (:mod:`.latency`); ``catalog``:
    regions and zones (:mod:`.catalog`); ``wait_timeout``: how long
    ``*Operations.wait`` long-polls before answering a still RUNNING operation
    (GCE: about 2 minutes).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: Path | str | None = None,
        runtime: Runtime | None = None,
        profile: str = "instant",
        time_scale: float = 1.0,
        catalog: Catalog | None = None,
        wait_timeout: float = 120.0,
    ):
        self.host = check_host(host)
        self.port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.runtime: Runtime = runtime if runtime is not None else NullRuntime()
        self.latency = LatencyModel(profile, time_scale)
        self.catalog = catalog or Catalog()
        self.wait_timeout = wait_timeout
        self.faults = FaultBook()
        self.calls = CallLog()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timer: Timer | None = None

    @property
    def workers_token(self) -> str:
        """The workers' credential for Secret Manager (``HAPLANE_GCE_TOKEN``, or the connection block's token)."""
        return self.secrets.workers_token

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        server = _Server((self.host, self.port), _Handler)
        server.emulator = self
        self._server = server
        self._timer = Timer()
        pools = getattr(self.runtime, "address_pools", lambda: None)()
        store = Store(self.url, pools)
        self.store = store
        self.ops = OperationBook(store, self.latency, self._timer)
        self.ctx = Ctx(
            store=store,
            ops=self.ops,
            runtime=self.runtime,
            catalog=self.catalog,
            latency=self.latency,
            wait_timeout=self.wait_timeout,
        )
        self.api = ComputeApi(self.ctx, self.faults, self.calls)
        self.control = Control(self.ctx, self.faults, self.calls)
        self.secrets = SecretManager(store)
        if self.state_dir is not None:  # for clients in other processes: HAPLANE_GCE_TOKEN=$(cat ...)
            token_file = self.state_dir / WORKERS_TOKEN_FILE
            token_file.unlink(missing_ok=True)
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.secrets.workers_token)
        attach = getattr(self.runtime, "attach", None)
        if attach is not None:  # VMs read their keys from this emulator's Secret Manager
            attach(self.url, self.secrets.token_for_instance)
        time_scale = getattr(self.runtime, "follow_time_scale", None)
        if time_scale is not None:  # the VMs' leader-election timings scale with the latency model's
            time_scale(lambda: self.latency.time_scale)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="emulator-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        store = getattr(self, "store", None)
        if store is not None:
            with store.changed:  # wake long-polling waits
                store.changed.notify_all()
        self.runtime.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- command line ---------------------------------------------------------------------------------


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register the ``emulator`` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "emulator",
        help="run the GCE emulator (Compute API on loopback)",
        description="Run the GCE emulator: Compute Engine's REST API on loopback, "
        "with real processes per VM (or none with --bare).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address in 127.0.0.0/8 to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = pick one)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".haplane/emulator"),
        help="directory for the VMs' data (default .haplane/emulator)",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="instant", help="latency profile")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every latency by this")
    p.add_argument("--catalog", type=Path, help='JSON file adding regions: {"regions": {"R": ["a", "b"]}}')
    p.add_argument("--bare", action="store_true", help="run no processes for VMs (NullRuntime)")
    p.add_argument(
        "--network",
        choices=("loopback", "namespaces"),
        default="loopback",
        help="loopback (default, no privileges): VMs bind 127.x addresses, firewalls are stored "
        "only; namespaces (root, iproute2 and nftables): a network namespace per VM on a "
        "bridge per zone, firewalls enforced, zone failures are partitions",
    )
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Serve in the foreground until SIGINT/SIGTERM; print one ready line; exit 0."""
    try:
        host = check_host(args.host)
        catalog = Catalog.from_file(args.catalog) if args.catalog else None
        if args.time_scale < 0:
            raise ValueError("--time-scale must be >= 0")
    except (ValueError, OSError) as exc:
        print(f"haplane emulator: {exc}", file=sys.stderr)
        return 2
    network = getattr(args, "network", "loopback")
    if network == "namespaces" and args.bare:
        print(
            "haplane emulator: --network namespaces runs VM processes in their namespaces; "
            "drop --bare (or use --network loopback)",
            file=sys.stderr,
        )
        return 2
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if args.bare:
        runtime: Runtime = NullRuntime()
    else:
        from haplane.emulator.vm import ProcessRuntime

        netns = None
        if network == "namespaces":
            from haplane.emulator.netns import NamespacedNetwork, NetworkSetupError

            try:
                netns = NamespacedNetwork()
            except NetworkSetupError as exc:
                print(f"haplane emulator: {exc}", file=sys.stderr)
                return 2
        try:
            runtime = ProcessRuntime(state_dir, network=netns)
        except BaseException:
            if netns is not None:
                netns.close()
            raise
    emulator = Emulator(
        host=host,
        port=args.port,
        state_dir=state_dir,
        runtime=runtime,
        profile=args.profile,
        time_scale=args.time_scale,
        catalog=catalog,
    )
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(f"haplane emulator: cannot serve on {host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"haplane emulator ready on {emulator.url}", flush=True)  # the ready line comes first
        netns = getattr(runtime, "network", None)
        if netns is not None:
            print(
                f"haplane emulator network: namespaces {netns.prefix}-*, VMs in {netns.net}, "
                f"this host reaches them from {netns.host_ip}",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"haplane emulator: the workers' token for Secret Manager is in {state_dir / WORKERS_TOKEN_FILE} "
            f"(export HAPLANE_GCE_TOKEN=$(cat {state_dir / WORKERS_TOKEN_FILE}))",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
