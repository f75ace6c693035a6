"""Benchmark of the lifecycle flows on the GCE emulator (prints figures; not a test).

    .venv/bin/python bench/bench_lifecycle.py [--time-scale 0.01]

Starts its own Prefect server (the test suite's PrefectServer) and an in-process GCE emulator whose
VMs run real etcd with mutual TLS, then times, in one run:

  (a) create_cluster, 3 replicas, latency profile "instant" (haplane's own overhead: Prefect,
      PKI, GCE API round trips, etcd forming);
  (b) the floor: a bare script that issues the same certificates and starts the same three etcd
      members with mutual TLS until each answers a linearizable read (median of three runs);
  (c) replace_replica of a replica whose processes were killed ("instant");
  (d) the seed's order, create 1 then add_replica twice, and
  (e) create_cluster with 3 replicas at once, both under the "gce" latency profile scaled by
      --time-scale (published GCE figures: VM 24 s, the load balancer's 20 minutes, ...);
and the endpoint downtime of the seed's 1 -> 2 move (the first add): as add_replica reports it,
and as seen by polling https://ENDPOINT:6443/readyz (TLS verified against the cluster CA).

Every cluster is deleted at the end; the emulator (with every VM process) and the Prefect server
are stopped even when a step fails or the run is interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from common import delete_clusters, prefect_server, print_seconds

from haplane.cloud import pki
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.node import spec as node
from haplane.processes import stop_group
from haplane.testing.etcd import allocate_subnet

PROJECT = "haplane-bench"
REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]


def timed(figures: dict[str, float], key: str, fn: Callable[[], object]) -> object:
    start = time.monotonic()
    try:
        return fn()
    finally:
        figures[key] = time.monotonic() - start
        print(f"  {key}: {figures[key]:.1f} s", flush=True)


# --- (b) the floor ---------------------------------------------------------------------------


def floor(etcd_bin: str, root: Path, timeout: float = 60.0) -> float:
    """Issue certificates and start three etcd members with mutual TLS until all are healthy."""
    procs = []
    start = time.monotonic()
    try:
        subnet = allocate_subnet(3)
        names = [f"floor-{i}" for i in range(3)]
        ips = [f"{subnet}.{i + 2}" for i in range(3)]
        cas = pki.create_cluster_cas("floor")
        initial = ",".join(f"{n}={node.peer_url(ip)}" for n, ip in zip(names, ips, strict=True))
        for name, ip in zip(names, ips, strict=True):
            base = root / name
            tls = pki.node_tls(cas, pki.issue_replica_certs(cas, hostname=name, internal_ip=ip, endpoint_ip=ip))
            node.write_pki(tls, base / "pki")
            (base / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
            spec = node.EtcdSpec(name=name, initial_cluster=initial, initial_cluster_token="floor")
            argv = node.etcd_argv(etcd_bin, spec, ip, base / "data", base / "pki")
            with open(base / "etcd.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                    )
                )
        urls = [node.client_url(ip) for ip in ips]
        # a short timeout: a read sent before the first election blocks until then, and the floor
        # should not be quantised by the poller
        with EtcdClient(urls, tls=EtcdTLS.from_cas(cas), timeout=0.25) as client:
            pending = set(urls)
            deadline = time.monotonic() + timeout
            while pending:
                pending = {u for u in pending if not client.health(u).healthy}
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(f"floor: etcd not healthy after {timeout:.0f} s: {sorted(pending)}")
                if pending:
                    time.sleep(0.05)
        return time.monotonic() - start
    finally:
        for p in procs:
            stop_group(p, sig=signal.SIGKILL)


# --- endpoint downtime, seen from outside -------------------------------------------------------


class EndpointWatch:
    """Polls https://IP:6443/readyz (TLS verified) in a thread; the longest run of failures."""

    def __init__(self, ip: str, ca_pem: str, period: float = 0.1):
        self.url = f"https://{ip}:6443/readyz"
        self.ctx = ssl.create_default_context(cadata=ca_pem)
        self.period = period
        self.longest = 0.0
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpoint-watch", daemon=True)

    def _run(self) -> None:
        with httpx.Client(verify=self.ctx, timeout=1.0) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self._close_window(now)
                elif self._down_since is None:
                    self._down_since = now
                self._stop.wait(self.period)

    def _close_window(self, now: float) -> None:
        if self._down_since is not None:
            self.longest = max(self.longest, now - self._down_since)
            self._down_since = None

    def __enter__(self) -> EndpointWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_window(time.monotonic())


def reported_downtime(cluster: str) -> float | None:
    """endpoint_downtime_s from the cluster's replica-table artifact (add_replica's note)."""
    from prefect.artifacts import Artifact

    art = Artifact.get(f"{cluster}-replicas")
    m = re.search(r"endpoint_downtime_s=([0-9.]+)", (art.description or "") if art else "")
    return float(m.group(1)) if m else None


# --- the run ----------------------------------------------------------------------------------


def run(time_scale: float, work: Path) -> None:
    from flows.add_replica import add_replica
    from flows.create_cluster import create_cluster
    from flows.replace_replica import replace_replica
    from tasks.pki import load_cas

    tag = uuid.uuid4().hex[:4]
    names = {k: f"bench-{k}-{tag}" for k in ("a", "d", "e")}
    created: list[str] = []
    figures: dict[str, float] = {}
    state = work / "emulator"
    runtime = ProcessRuntime(state)
    emulator = Emulator(state_dir=state, runtime=runtime).start()
    admin = EmulatorAdmin(emulator.url)
    os.environ["HAPLANE_GCE_ENDPOINT"], os.environ["HAPLANE_PROJECT"] = emulator.url, PROJECT
    os.environ["HAPLANE_GCE_TOKEN"] = emulator.workers_token
    try:
        print(f"emulator on {emulator.url}; latency profile 'instant'", flush=True)
        emulator.latency.configure(profile="instant", time_scale=1.0)
        created.append(names["a"])
        rows = timed(figures, "a", lambda: create_cluster(cluster=names["a"], region=REGION, zones=ZONES, replicas=3))
        # The floor is short and noisy (etcd's randomised election timeout): the median of three runs.
        floors = sorted(floor(runtime.etcd_bin, work / f"floor-{i}") for i in range(3))
        figures["b"] = floors[1]
        print(f"  b: {figures['b']:.1f} s (median of {', '.join(f'{x:.1f}' for x in floors)})", flush=True)

        victim = rows[-1]
        admin.kill_vm(PROJECT, victim["zone"], victim["replica"])
        timed(figures, "c", lambda: replace_replica(cluster=names["a"], replica_name=victim["replica"]))

        print(f"latency profile 'gce' x {time_scale:g}", flush=True)
        emulator.latency.configure(profile="gce", time_scale=time_scale)
        created.append(names["d"])
        rows = timed(
            figures,
            "d1",
            lambda: create_cluster(
                cluster=names["d"], region=REGION, zones=ZONES[:1], replicas=1, load_balancer="as-needed"
            ),
        )
        watch = EndpointWatch(rows[0]["endpoint IP"], load_cas(names["d"]).ca.cert_pem)
        with watch:
            timed(figures, "d2", lambda: add_replica(cluster=names["d"], zone=ZONES[1]))
        figures["downtime_reported"] = reported_downtime(names["d"]) or float("nan")
        figures["downtime_observed"] = watch.longest
        timed(figures, "d3", lambda: add_replica(cluster=names["d"], zone=ZONES[2]))
        figures["d"] = figures["d1"] + figures["d2"] + figures["d3"]
        created.append(names["e"])
        timed(figures, "e", lambda: create_cluster(cluster=names["e"], region=REGION, zones=ZONES, replicas=3))
    finally:
        emulator.latency.configure(profile="instant", time_scale=1.0)
        delete_clusters(created)
        admin.close()
        emulator.stop()
    report(figures, time_scale)


def report(f: dict[str, float], time_scale: float) -> None:
    lb = 1200 * time_scale
    rows = [
        ("(a) create_cluster, 3 replicas (instant)", f["a"]),
        ("(b) floor: certificates + 3 etcd members with mutual TLS, healthy (median of 3)", f["b"]),
        ("(c) replace_replica, killed replica (instant)", f["c"]),
        (f"(d) seed's order, gce x{time_scale:g}: create 1", f["d1"]),
        ("        + add_replica (1 -> 2, load balancer)", f["d2"]),
        ("        + add_replica (2 -> 3)", f["d3"]),
        ("    total", f["d"]),
        (f"(e) create_cluster, 3 at once, gce x{time_scale:g}", f["e"]),
    ]
    print_seconds(
        f"haplane lifecycle benchmark, {dt.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        rows,
    )
    print()
    print(f"(a)/(b) haplane's create over the floor:           {f['a'] / f['b']:.1f}x")
    print(f"(c)/(b) replace over the floor:                    {f['c'] / f['b']:.1f}x")
    print(f"(d)/(e) seed's order over create 3 at once:        {f['d'] / f['e']:.2f}x")
    print(
        f"1 -> 2 endpoint downtime: reported by add_replica {f['downtime_reported']:.1f} s, "
        f"observed at /readyz {f['downtime_observed']:.1f} s "
        f"(the load balancer alone is modelled as {lb:.0f} s = 1200 s x {time_scale:g})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.01,
        help="scale of the 'gce' latency profile for (d) and (e) (default 0.01: the "
        "20-minute load balancer takes 12 s)",
    )
    parser.add_argument("--verbose", action="store_true", help="show the flows' logs")
    args = parser.parse_args(argv)

    with prefect_server("haplane-bench-", args.verbose) as work:
        run(args.time_scale, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
