"""What ``haplane watch`` costs per cluster it looks at (prints figures; not a test).

    .venv/bin/python bench/bench_watch.py [--clusters 4] [--looks 24] [--period 5] [--profile 25]

Boots ``--clusters`` clusters of 3 VMs in the emulator (as ``bench/bench_vm.py``: real etcd with mutual
TLS and the API-server stand-in, loopback, ``instant`` profile), then runs the watcher's own loop
(:class:`haplane.watch.Watcher`: one ``instances.aggregatedList``, each cluster's etcd look and each API
server's ``/readyz``) in this process every ``--period`` seconds, ``--looks`` times, with the cluster
specs and PKI handed over in memory (no Prefect: the blocks are read once a period in production, an
API call not counted here). Prints the watcher's CPU per period and per cluster (% of one core at that
period; the CPU time of the watcher's thread only: the emulator serving it runs in this process too,
in threads of its own) and, with ``--profile N``, cProfile's N costliest functions. Everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vm import PROJECT, REGION, boot_cluster, compute_clients  # noqa: E402

from haplane.cloud.gce import Gce  # noqa: E402
from haplane.cloud.pki import create_cluster_cas  # noqa: E402
from haplane.emulator.server import Emulator  # noqa: E402
from haplane.emulator.vm import ProcessRuntime  # noqa: E402
from haplane.watch import Watcher  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=4)
    p.add_argument("--looks", type=int, default=24, help="periods measured")
    p.add_argument("--period", type=float, default=5.0)
    p.add_argument("--heartbeat-ms", type=int, default=500, help="the clusters' etcd heartbeat")
    p.add_argument("--settle", type=float, default=15.0, help="seconds after boot before measuring")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's N costliest functions")
    p.add_argument("--sort", default="tottime", help="--profile: cProfile's sort key (tottime, cumulative)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="haplane-watch-bench-"))
    emulator = Emulator(state_dir=work / "emu", runtime=ProcessRuntime(work / "emu"), profile="instant")
    emulator.start()
    try:
        clients = compute_clients(emulator.url)
        cas = {f"c{c}": create_cluster_cas(f"c{c}") for c in range(args.clusters)}
        for name, ca in cas.items():
            boot_cluster(clients, name, heartbeat_ms=args.heartbeat_ms, cas=ca)
        specs = [
            {"cluster": name, "region": REGION, "project": PROJECT, "etcd_heartbeat_ms": args.heartbeat_ms}
            for name in cas
        ]
        events = []
        gce = Gce(PROJECT, emulator.url)
        watcher = Watcher(
            gce_for=lambda _project: gce,
            specs=lambda: specs,
            read_pki=lambda cluster: (cas[cluster], None),
            busy=lambda _cluster: False,
            emit=events.append,
            period=args.period,
        )
        deadline = time.monotonic() + 120
        while True:  # until every cluster is seen, every replica healthy
            watcher.tick()
            views = {w.cluster: (w.memory.view, w.memory.replicas) for w in watcher.watched.values()}
            if all(v == "ok" and len(r) == 3 and set(r.values()) == {"healthy"} for v, r in views.values()):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the clusters did not all look healthy: {views}")
            time.sleep(1)
        time.sleep(args.settle)
        profiler = cProfile.Profile(time.thread_time) if args.profile else None  # CPU, not wall
        cpu, wall = [], []
        for _ in range(args.looks):
            started, cpu0 = time.monotonic(), time.thread_time()
            if profiler is not None:
                profiler.enable()
            watcher.tick()
            if profiler is not None:
                profiler.disable()
            cpu.append(time.thread_time() - cpu0)
            wall.append(time.monotonic() - started)
            time.sleep(max(0.0, args.period - wall[-1]))
        bad = {w.cluster: w.memory for w in watcher.watched.values() if w.memory.view != "ok"}
        if bad:
            raise SystemExit(f"a cluster was not seen while measured: {bad}")
        per_look = sum(cpu) / len(cpu)
        print(
            f"{args.clusters} clusters of 3 VMs, {args.looks} periods of {args.period:g} s, loopback, instant profile"
        )
        print(f"watcher CPU per period: {1000 * per_look:.1f} ms (wall {1000 * sum(wall) / len(wall):.0f} ms)")
        print(
            f"watcher CPU per cluster: {1000 * per_look / args.clusters:.2f} ms a look = "
            f"{100 * per_look / args.clusters / args.period:.3f} % of one core at a {args.period:g} s period"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.profile)
        for w in watcher.watched.values():
            w.close()
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
