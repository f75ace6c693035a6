"""What one emulated VM costs, per process (prints figures; not a test).

    .venv/bin/python bench/bench_vm.py [--clusters 1] [--seconds 60]

Boots ``--clusters`` clusters of 3 VMs in the emulator (``instant`` profile, loopback network, real etcd
with mutual TLS, the API-server stand-in, the controller-manager and scheduler stand-ins: what a
replica's metadata describes), waits until every process runs and each cluster's controllers hold
their Leases, then measures each process of each VM over ``--seconds``: RSS, and CPU % of one core
while nothing happens. No Prefect: the VMs alone. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from haplane.cloud.pki import create_cluster_cas, issue_replica_certs, node_tls
from haplane.core.topology import LABEL_CLUSTER
from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.node.spec import ApiServerSpec, EtcdSpec, NodeSpec, peer_url

PROJECT = "vm-bench"
REGION = "us-central1"
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c"]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[float, int] | None:
    """(CPU s, RSS bytes) of ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]) * PAGE


def compute_clients(url: str) -> SimpleNamespace:
    """The real compute_v1 clients this bench uses, pointed at the emulator."""
    options, credentials = {"api_endpoint": url}, AnonymousCredentials()
    return SimpleNamespace(
        instances=compute_v1.InstancesClient(client_options=options, credentials=credentials),
        zone_operations=compute_v1.ZoneOperationsClient(client_options=options, credentials=credentials),
    )


def wait_op(clients: SimpleNamespace, op: compute_v1.Operation, timeout: float = 60.0) -> None:
    """Wait for a zonal operation until DONE."""
    zone = op.zone.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    while op.status != compute_v1.Operation.Status.DONE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"operation {op.name} not DONE after {timeout} s")
        op = clients.zone_operations.wait(project=PROJECT, zone=zone, operation=op.name)


def boot_cluster(
    clients, name: str, apiserver: bool = True, heartbeat_ms: int = 100, cas=None
) -> list[tuple[str, str]]:
    """Three VMs of one cluster, configured as create-cluster's metadata does; [(zone, vm name)]."""
    cas = cas or create_cluster_cas(name)
    vms = []
    for i, zone in enumerate(ZONES):
        body = compute_v1.Instance(
            name=f"{name}-{i}",
            machine_type=f"zones/{zone}/machineTypes/e2-standard-2",
            network_interfaces=[compute_v1.NetworkInterface()],
            labels={LABEL_CLUSTER: name},  # what the watcher lists (bench/bench_watch.py)
        )
        wait_op(clients, clients.instances.insert_unary(project=PROJECT, zone=zone, instance_resource=body))
        vms.append((zone, clients.instances.get(project=PROJECT, zone=zone, instance=body.name)))
    initial = ",".join(f"{vm.name}={peer_url(vm.network_interfaces[0].network_i_p)}" for _, vm in vms)
    for zone, vm in vms:
        ip = vm.network_interfaces[0].network_i_p
        certs = issue_replica_certs(cas, hostname=vm.name, internal_ip=ip, endpoint_ip=ip)
        spec = NodeSpec(
            etcd=EtcdSpec(
                name=vm.name, initial_cluster=initial, heartbeat_ms=heartbeat_ms, election_ms=10 * heartbeat_ms
            ),
            apiserver=ApiServerSpec() if apiserver else None,
            tls=node_tls(cas, certs),
        )
        items = [compute_v1.Items(key=k, value=v) for k, v in spec.to_metadata().items()]
        metadata = compute_v1.Metadata(fingerprint=vm.metadata.fingerprint, items=items)
        wait_op(
            clients,
            clients.instances.set_metadata_unary(
                project=PROJECT, zone=zone, instance=vm.name, metadata_resource=metadata
            ),
        )
    return [(zone, vm.name) for zone, vm in vms]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=1)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=20.0, help="seconds after every process runs, before measuring")
    p.add_argument("--no-apiserver", action="store_true", help="etcd alone (what etcd costs without its clients)")
    p.add_argument("--heartbeat-ms", type=int, default=100, help="etcd's heartbeat interval (election timeout x10)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="haplane-vm-"))
    emulator = Emulator(state_dir=work / "emu", runtime=ProcessRuntime(work / "emu"), profile="instant")
    emulator.start()
    try:
        clients = compute_clients(emulator.url)
        vms = [
            vm
            for c in range(args.clusters)
            for vm in boot_cluster(clients, f"c{c}", not args.no_apiserver, args.heartbeat_ms)
        ]
        admin = EmulatorAdmin(emulator.url)
        deadline = time.monotonic() + 120
        while True:
            procs = {vm: admin.vm(PROJECT, zone, vm)["processes"] for zone, vm in vms}
            if all(ps and all(p["running"] for p in ps.values()) for ps in procs.values()):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the VMs' processes did not all start: {procs}")
            time.sleep(0.5)
        admin.close()
        time.sleep(args.settle)
        pids = {(vm, name): p["pid"] for vm, ps in procs.items() for name, p in ps.items()}
        before = {k: _stat(pid) for k, pid in pids.items()}
        emu_before = _stat(os.getpid())
        time.sleep(args.seconds)
        after = {k: _stat(pid) for k, pid in pids.items()}
        emu_after = _stat(os.getpid())
        dead = sorted(k for k, v in after.items() if v is None or before[k] is None)
        if dead:
            raise SystemExit(f"processes exited while measured: {dead}")
        names = sorted({name for _, name in pids})
        print(f"{len(vms)} VMs ({args.clusters} clusters of 3), idle for {args.seconds:g} s, instant profile, loopback")
        print(f"{'process':<22}{'count':>6}{'RSS MB (mean)':>15}{'CPU % of a core (mean / max)':>30}")
        total_rss = total_cpu = 0.0
        split = {}
        for name in names:
            keys = [k for k in pids if k[1] == name]
            rss = [after[k][1] / 2**20 for k in keys]
            cpu = [100 * (after[k][0] - before[k][0]) / args.seconds for k in keys]
            total_rss += sum(rss)
            total_cpu += sum(cpu)
            split[name] = sum(cpu) / len(vms)
            print(
                f"{name:<22}{len(keys):>6}{statistics.mean(rss):>15.1f}{statistics.mean(cpu):>20.2f} / {max(cpu):.2f}"
            )
        print(f"{'one VM (all of the above)':<28}{total_rss / len(vms):>15.1f}{total_cpu / len(vms):>20.2f}")
        parts = " + ".join(f"{name} {cpu:.2f}" for name, cpu in split.items())
        print(f"one VM, CPU % of a core: {parts} = {total_cpu / len(vms):.2f} (etcd heartbeat {args.heartbeat_ms} ms)")
        print(
            f"{'the emulator itself (this process)':<28}{emu_after[1] / 2**20:>15.1f}"
            f"{100 * (emu_after[0] - emu_before[0]) / args.seconds:>20.2f}"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
