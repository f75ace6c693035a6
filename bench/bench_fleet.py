"""Fleet benchmark: scheduled health checks of many clusters on Prefect with PostgreSQL and two workers
(prints figures; not a test).

    .venv/bin/python bench/bench_fleet.py [--clusters 20] [--replicas 3] [--interval 60] [--kill-every 5]
                                          [--steady-minutes 5] [--workers 2]

Starts a throw-away PostgreSQL (Debian's ``postgresql``, as the tests do), a Prefect server on it, an
in-process GCE emulator (latency profile ``instant``; VMs run real etcd with mutual TLS), sets the
workspace up as docs/production.md does (connection block, shared result storage), creates
``--clusters`` clusters of ``--replicas`` replicas, schedules their health checks every ``--interval``
seconds, starts ``--workers`` process workers on pool ``haplane`` (separate PREFECT_HOMEs), and then:

  1. steady state for ``--steady-minutes``: health-check runs per minute, CPU and memory of the server
     (Prefect and PostgreSQL) and of the workers, worker CPU per check;
  2. kills one replica in every ``--kill-every``-th cluster at once (its processes die, GCE still says
     RUNNING) and waits until each of those clusters has been healed by its scheduled check: time from
     kill to the end of the replace-replica run (median, worst);
  3. lateness of every scheduled check in the measured time (start minus scheduled start), checks that
     skipped because the previous check of the cluster still ran, and checks never started.

With ``--watch`` (issue 20's benchmark): also ``haplane watch --period 5`` as its own process, scheduled
checks every ``--interval`` (900 s by default then: the backstop), ``--kill N`` clusters killed at once, and
it reports the watcher's CPU and RSS, the flow runs started in the steady state (goal: none but the
backstop), kill -> the watcher's ``haplane.replica.unhealthy`` event and kill -> the health check the
automation started, per cluster (median, worst), and what one emulated VM costs (RSS, CPU):

    .venv/bin/python bench/bench_fleet.py --watch --clusters 50 --kill 10

Everything it starts is stopped at the end, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the figures, not every task run

from haplane.cloud.gce import Gce
from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.processes import stop_group
from haplane.testing.postgres import Postgres, pg_bindir
from haplane.testing.prefect import PrefectServer, serving
from haplane.testing.worker import descendants, start_worker

PROJECT = "haplane-fleet"
REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ process figures from /proc


def _stat(pid: int) -> tuple[float, float, int] | None:
    """(own CPU s, reaped children's CPU s, RSS bytes) of ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / TICK
    children = (int(fields[13]) + int(fields[14])) / TICK
    return own, children, int(fields[21]) * PAGE


def tree(pid: int) -> tuple[float, int, int]:
    """CPU seconds of ``pid`` and everything below it (live or reaped), RSS of the live tree, the largest
    RSS of one process below it (a flow run)."""
    cpu, rss, biggest = 0.0, 0, 0
    top = _stat(pid)
    if top is None:
        return 0.0, 0, 0
    cpu, rss = top[0] + top[1], top[2]
    for child in descendants(pid):
        st = _stat(child)
        if st:
            cpu, rss, biggest = cpu + st[0], rss + st[2], max(biggest, st[2])
    return cpu, rss, biggest


class Sampler:
    """Samples named process trees every ``every`` seconds on a thread: CPU deltas and RSS (mean, max)."""

    def __init__(self, pids: dict[str, int], every: float = 2.0) -> None:
        self.pids, self.every = pids, every
        self.samples: list[tuple[float, dict[str, tuple[float, int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), {k: tree(p) for k, p in self.pids.items()}))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), {k: tree(p) for k, p in self.pids.items()}))

    def figures(self, name: str) -> dict[str, float]:
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        rss = [s[name][1] for _, s in self.samples]
        return {
            "cpu_s": last[name][0] - first[name][0],
            "seconds": t1 - t0,
            "cpu_pct": 100 * (last[name][0] - first[name][0]) / (t1 - t0),
            "rss_mean_mb": statistics.mean(rss) / 2**20,
            "rss_max_mb": max(rss) / 2**20,
            "run_rss_max_mb": max(s[name][2] for _, s in self.samples) / 2**20,
        }


# ------------------------------------------------------------------ Prefect API


def runs(api: str, flow: str, **flt) -> list[dict]:
    out, offset = [], 0
    while True:
        body = {
            "flows": {"name": {"any_": [flow]}},
            "flow_runs": flt,
            "limit": 200,
            "offset": offset,
            "sort": "EXPECTED_START_TIME_ASC",
        }
        page = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=60).raise_for_status().json()
        out += page
        if len(page) < 200:
            return out
        offset += 200


def ts(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ the run


def create_clusters(names: list[str], replicas: int) -> None:
    """create-cluster for each of ``names`` in turn, in this process (the Prefect API from the environment)."""
    from flows.create_cluster import create_cluster

    for name in names:
        state = create_cluster(
            cluster=name, region=REGION, zones=ZONES, replicas=replicas, connection="fleet", return_state=True
        )
        if not state.is_completed():
            raise RuntimeError(f"create-cluster {name} ended {state.type.value}: {state.message}")


def create_fleet(names: list[str], replicas: int, parallel: int, logs: Path) -> None:
    """The clusters, created by ``parallel`` processes at once (each a share of ``names`` in turn): one
    after another, 50 clusters took longer than the benchmark's window."""
    started = time.monotonic()
    procs = []
    for i in range(min(parallel, len(names))):
        share = names[i::parallel]
        with open(logs / f"create-{i}.log", "ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--create", ",".join(share), "--replicas", str(replicas)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
    try:
        failed = [i for i, proc in enumerate(procs) if proc.wait() != 0]
    finally:
        for proc in procs:
            stop_group(proc, sig=signal.SIGTERM)
    if failed:
        tails = "; ".join((logs / f"create-{i}.log").read_text()[-500:] for i in failed)
        raise RuntimeError(f"create-cluster failed in {len(failed)} of {len(procs)} creators: {tails}")
    say(f"{len(names)} clusters of {replicas} created in {time.monotonic() - started:.0f} s ({parallel} at once)")


def run(args: argparse.Namespace, work: Path) -> dict:
    from prefect.filesystems import LocalFileSystem

    from deployments.setup import ensure_limits, setup_workspace

    bindir = pg_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    names = [f"fleet-{i:02d}-{uuid.uuid4().hex[:3]}" for i in range(args.clusters)]
    pg = Postgres(bindir)
    emulator = Emulator(state_dir=work / "emulator", runtime=ProcessRuntime(work / "emulator"), profile="instant")
    workers = []
    watcher: subprocess.Popen | None = None
    os.environ.pop("HAPLANE_GCE_ENDPOINT", None)
    os.environ.pop("HAPLANE_PROJECT", None)
    os.environ.pop("HAPLANE_GCE_TOKEN", None)
    try:
        pg.start()
        emulator.start()
        admin, gce = EmulatorAdmin(emulator.url), Gce(PROJECT, emulator.url)
        server = PrefectServer(
            work / "prefect",
            {
                "PREFECT_API_DATABASE_CONNECTION_URL": pg.url,
                "PREFECT_UI_ENABLED": "false",
                # the default pool (5 + 10 overflow) ran out at 10 clusters: "QueuePool limit ... reached", HTTP 500s
                "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": str(args.db_pool),
                "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": str(args.db_pool),
            },
        )
        server.home.mkdir()
        with serving(server):
            api = server.url
            LocalFileSystem(basepath=str(work / "shared-results")).save("fleet-results", overwrite=True)
            setup_workspace(
                project=PROJECT,
                endpoint=emulator.url,
                connection="fleet",
                result_storage="local-file-system/fleet-results",
                token=emulator.workers_token,
            )
            ensure_limits(names)
            create_fleet(names, args.replicas, args.create_parallel, work)
            for i in range(args.workers):
                home = work / f"worker-{i}"
                home.mkdir()
                workers.append(
                    start_worker(
                        server,
                        {"PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"},
                        home / "worker.log",
                        name=f"fleet-{i}",
                        env_drop=("HAPLANE_GCE_ENDPOINT", "HAPLANE_PROJECT", "HAPLANE_GCE_TOKEN"),
                    )
                )
            setup_workspace(clusters=names, health_interval=args.interval, connection="fleet")
            one_vm = vm_cost(emulator, 10.0)
            say(f"one VM: {one_vm[0]:.0f} MB RSS, {one_vm[1]:.1f} % of a core ({one_vm[2]} processes)")
            pids = {"prefect server": server.proc.pid, "postgresql": _postmaster(pg)}
            pids |= {f"worker {i}": w.proc.pid for i, w in enumerate(workers)}
            if args.watch:
                watcher = start_watcher(server, work / "watcher", args.period)
                pids["watcher"] = watcher.pid
                say(
                    f"haplane watch every {args.period:g} s; checks every {args.interval:g} s (backstop); "
                    f"{args.workers} workers; warming up {args.warmup:g} s"
                )
                time.sleep(args.warmup)
            else:
                say(
                    f"health checks every {args.interval:g} s scheduled; {args.workers} workers; warming up one "
                    f"interval"
                )
                time.sleep(args.interval)
            steady_from = time.time()
            with Sampler(pids) as steady:
                time.sleep(args.steady_minutes * 60)
            steady_to = time.time()
            say("steady state measured; killing replicas")

            victims, zones = {}, {}
            for name in names[: args.kill] if args.watch else names[:: args.kill_every]:
                first = sorted(gce.list_instances(ZONES, labels={"haplane-cluster": name}), key=lambda v: v.name)[0]
                victims[name], zones[name] = first.name, first.zone
            killed_at = time.time()  # the VMs looked up first: the kills follow each other within moments
            for name, vm in victims.items():
                admin.kill_vm(PROJECT, zones[name], vm)
            say(f"{len(victims)} replicas killed in {time.time() - killed_at:.1f} s")
            healed: dict[str, float] = {}
            deadline = time.monotonic() + args.heal_timeout
            with Sampler(pids) as healing:
                while time.monotonic() < deadline and len(healed) < len(victims):
                    for r in runs(
                        api,
                        "replace-replica",
                        tags={"all_": ["haplane-remediation"]},
                        state={"type": {"any_": ["COMPLETED"]}},
                    ):
                        cluster = next((t.split(":", 1)[1] for t in r["tags"] if t.startswith("cluster:")), None)
                        if cluster in victims and cluster not in healed and ts(r["end_time"]) > killed_at:
                            healed[cluster] = ts(r["end_time"]) - killed_at
                    time.sleep(3)
            end = time.time()
            checks = runs(api, "health-check")
            replaces = [r for r in runs(api, "replace-replica") if r["start_time"] and ts(r["start_time"]) > killed_at]
            rids = [f"haplane.cluster.{c}.replica.{vm}" for c, vm in victims.items()]
            seen = first_events(api, "haplane.replica.unhealthy", killed_at, rids) if args.watch else {}
            detected = {
                c: seen[f"haplane.cluster.{c}.replica.{vm}"] - killed_at
                for c, vm in victims.items()
                if f"haplane.cluster.{c}.replica.{vm}" in seen
            }
            started = {}
            for c in checks:
                cl = c["parameters"].get("cluster")
                if (
                    cl in victims
                    and c["start_time"]
                    and ts(c["start_time"]) > killed_at
                    and (c.get("created_by") or {}).get("type") == "AUTOMATION"
                ):
                    started[cl] = min(ts(c["start_time"]) - killed_at, started.get(cl, float("inf")))
            return {
                "names": names,
                "victims": victims,
                "healed": healed,
                "steady": steady,
                "healing": healing,
                "steady_window": (steady_from, steady_to),
                "end": end,
                "checks": checks,
                "workers": args.workers,
                "args": args,
                "detected": detected,
                "started": started,
                "vm": one_vm,
                "killed_at": killed_at,
                "replaces": replaces,
                "api": api,
                "started_in_steady": _started_in(api, steady_from, steady_to),
            }  # while the server still runs
    finally:
        if watcher is not None:
            stop_group(watcher, sig=signal.SIGTERM)
        for w in workers:
            w.stop()
        with contextlib.suppress(Exception):
            emulator.stop()
        pg.stop()


def start_watcher(server: PrefectServer, home: Path, period: float) -> subprocess.Popen:
    """``haplane watch`` as the README's production section runs it, on its own PREFECT_HOME."""
    home.mkdir()
    env = server.env() | {"PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    for key in ("HAPLANE_GCE_ENDPOINT", "HAPLANE_PROJECT", "HAPLANE_GCE_TOKEN"):  # all from --connection fleet
        env.pop(key, None)
    with open(home / "watch.log", "ab") as out:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "haplane"),
                "watch",
                "--period",
                str(period),
                "--connection",
                "fleet",
                "--name",
                "fleet-watch",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def first_events(api: str, name: str, since: float, resources: list[str]) -> dict[str, float]:
    """resource id -> when the first event ``name`` about it occurred after ``since`` (the watcher's only)."""
    found: dict[str, float] = {}
    for rid in resources:  # one query per resource: the events API answers 50 events at most
        body = {
            "filter": {
                "event": {"name": [name]},
                "any_resource": {"id": [rid]},
                "occurred": {"since": dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
            },
            "limit": 50,
        }
        resp = httpx.post(f"{api}/events/filter", json=body, timeout=60)
        if resp.status_code != 200:
            say(f"events of {rid} could not be read: {resp.status_code} {resp.text[:200]}")
            continue
        for e in resp.json()["events"]:
            if e["resource"].get("haplane.source") == "watch":
                at = ts(e["occurred"])
                found[rid] = min(at, found.get(rid, at))
    return found


def vm_cost(emulator: Emulator, seconds: float) -> tuple[float, float, int]:
    """(RSS MB, CPU % of one core over ``seconds``, processes) of one emulated VM (its etcd, its API stand-in)."""
    machine = next(iter(emulator.runtime._machines.values()))
    pids = [p.popen.pid for p in machine.procs.values() if p.running and p.popen]
    before = sum((_stat(pid) or (0, 0, 0))[0] for pid in pids)
    time.sleep(seconds)
    stats = [_stat(pid) or (0, 0, 0) for pid in pids]
    return sum(s[2] for s in stats) / 2**20, 100 * (sum(s[0] for s in stats) - before) / seconds, len(pids)


def _postmaster(pg: Postgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


def _overlapping(check: dict, checks: list[dict]) -> bool:
    """Whether another check of the same cluster ran at some time while ``check`` ran."""
    cluster, lo, hi = check["parameters"].get("cluster"), ts(check["start_time"]), ts(check["end_time"]) or time.time()
    return any(
        c is not check
        and c["parameters"].get("cluster") == cluster
        and c["start_time"]
        and ts(c["start_time"]) < hi
        and (ts(c["end_time"]) or time.time()) > lo
        for c in checks
    )


def report(r: dict) -> None:
    args = r["args"]
    lo, hi = r["steady_window"]
    minutes = (hi - lo) / 60
    checks = r["checks"]
    in_steady = [c for c in checks if c["start_time"] and lo <= ts(c["start_time"]) < hi]
    completed = [c for c in in_steady if c["state_type"] == "COMPLETED"]
    measured = [c for c in checks if lo <= ts(c["expected_start_time"]) < r["end"] - args.interval]
    late = [ts(c["start_time"]) - ts(c["expected_start_time"]) for c in measured if c["start_time"]]
    never = [c for c in measured if not c["start_time"]]
    skipped = [c for c in measured if "another health check" in ((c["state"] or {}).get("message") or "")]
    failed = [c for c in measured if c["state_type"] in ("FAILED", "CRASHED")]
    alone = [c for c in skipped if not _overlapping(c, checks)]
    expected = len(r["names"]) * (r["end"] - args.interval - lo) / args.interval

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"fleet: {len(r['names'])} clusters x {args.replicas} replicas (instant profile), checks every "
        f"{args.interval:g} s, {r['workers']} process workers, Prefect on PostgreSQL"
    )
    print()
    print(f"{'steady state (' + format(minutes, '.1f') + ' min)':<58}{'value':>12}")
    print(f"{'health-check runs started per minute':<58}{len(in_steady) / minutes:>12.1f}")
    print(f"{'  of which completed per minute':<58}{len(completed) / minutes:>12.1f}")
    print(f"{'  offered (clusters x 60 / interval)':<58}{len(r['names']) * 60 / args.interval:>12.1f}")
    for name in r["steady"].pids:
        f = r["steady"].figures(name)
        print(f"{name + ': CPU % of one core':<58}{f['cpu_pct']:>12.1f}")
        print(f"{name + ': RSS MB (mean / max)':<58}{f['rss_mean_mb']:>6.0f} / {f['rss_max_mb']:.0f}")
    worker_cpu = sum(r["steady"].figures(n)["cpu_s"] for n in r["steady"].pids if n.startswith("worker"))
    if completed:
        print(f"{'workers: CPU s per check':<58}{worker_cpu / len(completed):>12.2f}")
        biggest = max(r["steady"].figures(n)["run_rss_max_mb"] for n in r["steady"].pids if n.startswith("worker"))
        print(f"{'workers: RSS MB of one flow-run process (max)':<58}{biggest:>12.0f}")
    server_cpu = sum(r["steady"].figures(n)["cpu_s"] for n in ("prefect server", "postgresql"))
    if completed:
        print(f"{'server (Prefect + PostgreSQL): CPU s per check':<58}{server_cpu / len(completed):>12.2f}")
    if args.watch:
        print(f"{'flow runs started (any flow) in the steady state':<58}{r['started_in_steady']:>12}")
        vm = r["vm"]
        print(f"{'one emulated VM: RSS MB / CPU % of one core (idle)':<58}{vm[0]:>6.0f} / {vm[1]:.1f}")
    print()
    heal = sorted(r["healed"].values())
    print(f"{'kill one replica in ' + str(len(r['victims'])) + ' clusters at once':<58}{'value':>12}")
    print(f"{'clusters healthy again':<58}{len(heal):>9} / {len(r['victims'])}")
    for label, values in (
        ("kill -> haplane.replica.unhealthy", r.get("detected", {})),
        ("kill -> health check started (automation)", r.get("started", {})),
    ):
        if args.watch:
            got = sorted(values.values())
            print(f"{label + ', clusters':<58}{len(got):>9} / {len(r['victims'])}")
            if got:
                print(f"{label + ', median / worst s':<58}{statistics.median(got):>6.1f} / {got[-1]:.1f}")
    if heal:
        print(f"{'kill -> healthy, median s':<58}{statistics.median(heal):>12.1f}")
        print(f"{'kill -> healthy, worst s':<58}{heal[-1]:>12.1f}")
    if args.watch:
        after = [c for c in checks if c["start_time"] and ts(c["start_time"]) > r["killed_at"]]
        healing_cpu = sum(r["healing"].figures(n)["cpu_s"] for n in r["healing"].pids if n.startswith("worker"))
        print(
            f"{'health checks / replace-replica runs started after the kill':<58}{len(after):>6} / {len(r['replaces'])}"
        )
        if after:
            print(f"{'workers: CPU s per health check (their replaces included)':<58}{healing_cpu / len(after):>12.2f}")
        f = r["healing"].figures("prefect server")
        print(f"{'prefect server while healing: CPU % of one core':<58}{f['cpu_pct']:>12.1f}")
        w = r["healing"].figures("watcher")
        print(f"{'watcher while healing: CPU % of one core':<58}{w['cpu_pct']:>12.1f}")
    print()
    print(f"{'scheduled checks (steady + healing)':<58}{'value':>12}")
    print(f"{'checks due':<58}{len(measured):>12} (about {expected:.0f} expected)")
    if late:
        print(f"{'start - scheduled start, median s':<58}{statistics.median(late):>12.1f}")
        print(f"{'start - scheduled start, worst s':<58}{max(late):>12.1f}")
        print(f"{'late by more than 15 s':<58}{sum(x > 15 for x in late):>12}")
    print(f"{'skipped (previous check of the cluster still running)':<58}{len(skipped):>12}")
    print(f"{'  of which no other check of the cluster was running':<58}{len(alone):>12}")
    print(f"{'never started':<58}{len(never):>12}")
    print(f"{'failed or crashed':<58}{len(failed):>12}")


def _started_in(api: str, lo: float, hi: float) -> int:
    """Flow runs of any flow that started in [lo, hi)."""
    body = {
        "flow_runs": {
            "start_time": {
                "after_": dt.datetime.fromtimestamp(lo, dt.UTC).isoformat(),
                "before_": dt.datetime.fromtimestamp(hi, dt.UTC).isoformat(),
            }
        }
    }
    resp = httpx.post(f"{api}/flow_runs/count", json=body, timeout=60)
    return resp.json() if resp.status_code == 200 else -1  # -1: the server refused the count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--replicas", type=int, default=3, choices=[1, 3, 5, 7])
    p.add_argument("--interval", type=float, default=60.0, help="seconds between health checks of a cluster")
    p.add_argument("--kill-every", type=int, default=5, help="kill one replica in every n-th cluster")
    p.add_argument("--steady-minutes", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--db-pool",
        type=int,
        default=20,
        help="the server's PostgreSQL pool size and overflow (Prefect's default is 5 and 10)",
    )
    p.add_argument("--heal-timeout", type=float, default=900.0, help="seconds to wait for the killed clusters")
    p.add_argument("--watch", action="store_true", help="run haplane watch; checks every --interval are the backstop")
    p.add_argument("--period", type=float, default=5.0, help="--watch: the watcher's period (s)")
    p.add_argument("--kill", type=int, default=10, help="--watch: kill one replica in this many clusters at once")
    p.add_argument(
        "--warmup", type=float, default=30.0, help="--watch: seconds between the watcher's start and the steady state"
    )
    p.add_argument("--create-parallel", type=int, default=5, help="create-cluster runs at once while setting up")
    p.add_argument("--create", help=argparse.SUPPRESS)  # internal: create these clusters (comma-separated) and exit
    args = p.parse_args(argv)
    if args.create:
        create_clusters(args.create.split(","), args.replicas)
        return 0
    if args.watch and "--interval" not in " ".join(argv or sys.argv):
        args.interval = 900.0
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    work = Path(tempfile.mkdtemp(prefix="haplane-fleet-"))
    say(f"work directory {work}")
    try:
        report(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
