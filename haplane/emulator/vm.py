"""Emulated VMs that run real processes: etcd and the API-server stand-in.

Each VM is a directory under ``STATE_DIR/vms/`` (its disk: ``pki/``,
``etcd-data/``, ``logs/``) and up to two supervised processes bound to its
internal loopback address. Like systemd on a real VM, a process that exits
is restarted with back-off — that is also how an etcd member started with
``initial-cluster-state=existing`` comes up once the flow has added it.

All process spawning happens in one long-lived supervisor thread: API
handler threads only record what should run and wake it.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from haplane.emulator.network import Forwarder
from haplane.emulator.runtime import VmView
from haplane.node import (
    APISERVER_PORT,
    FORWARDED_PORTS,
    HEALTH_PORT,
    NodeSpec,
    client_url,
    etcd_argv,
    find_etcd,
    write_pki,
)
from haplane.processes import stop_group

if TYPE_CHECKING:
    from haplane.emulator.netns import NamespacedNetwork

BACKOFF_MAX_S = 5.0


@dataclass
class Proc:
    argv: list[str]
    log: Path
    wrap: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NS]: where it runs
    popen: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.wrap + self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def terminate(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if self.popen is not None:
            stop_group(self.popen, grace=grace, sig=sig)

    def state(self) -> dict:
        return {
            "running": self.running,
            "pid": self.popen.pid if self.running and self.popen else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "log": str(self.log),
        }


@dataclass
class Machine:
    view: VmView
    root: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    powered: bool = False  # RUNNING in GCE terms
    killed: bool = False  # admin fault: processes dead and not restarted


class ProcessRuntime:
    """The emulator's default runtime: real etcd and an API-server stand-in per VM.

    ``network``: None for loopback (VMs bind 127.x addresses; external and load-balancer IPs
    are userspace forwarders; firewalls are not enforced), or a :class:`.netns.NamespacedNetwork`
    (a namespace per VM, NAT and load balancing in a router namespace, nftables firewalls,
    zone partitions). The runtime closes the network it was given.
    """

    def __init__(self, state_dir: Path, etcd_bin: str | None = None, python: str | None = None,
                 network: NamespacedNetwork | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.etcd_bin = etcd_bin or find_etcd()
        self.python = python or sys.executable
        self.network = network
        self.forwarder = Forwarder()
        self._machines: dict[str, Machine] = {}
        self._lbs: dict[str, Callable[[], list[VmView]]] = {}
        self._rr = itertools.count()
        self._health = httpx.Client(timeout=1.0)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._supervisor = threading.Thread(target=self._supervise, name="vm-supervisor", daemon=True)
        self._supervisor.start()

    # --- Runtime protocol -------------------------------------------------
    def start(self, vm: VmView) -> None:
        with self._lock:
            m = self._machine(vm)
            m.view, m.powered, m.killed = vm, True, False
            if self.network is not None:
                self.network.vm_up(vm)
            self._plan(m)
            self._forward_external(m, None)
            self._wake.notify_all()

    def update(self, vm: VmView) -> None:
        with self._lock:
            m = self._machine(vm)
            old = m.view
            m.view = vm
            if m.powered:
                if self.network is not None:
                    self.network.vm_up(vm)  # tags may have changed: firewalls follow
                self._plan(m)
                self._forward_external(m, old)
            self._wake.notify_all()

    def stop(self, vm: VmView) -> None:
        with self._lock:
            m = self._machine(vm)
            m.powered = False
            self._forward_external(m, m.view, remove_all=True)
            procs = list(m.procs.values())
        for p in procs:
            p.terminate()

    def delete(self, vm: VmView) -> None:
        self.stop(vm)
        with self._lock:
            m = self._machines.pop(vm.key, None)
        if self.network is not None:
            self.network.vm_gone(vm)
        if m is not None:
            shutil.rmtree(m.root, ignore_errors=True)

    def kill(self, vm: VmView) -> None:
        with self._lock:
            m = self._machine(vm)
            m.killed = True
            procs = list(m.procs.values())
        for p in procs:
            p.terminate(signal.SIGKILL)

    def healthy(self, vm: VmView) -> bool:
        if self.network is not None:
            return self.network.probe(vm.internal_ip)
        try:
            return self._health.get(f"http://{vm.internal_ip}:{HEALTH_PORT}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def processes(self, vm: VmView) -> dict[str, dict]:
        with self._lock:
            m = self._machines.get(vm.key)
            if m is None:
                return {}
            out = {name: p.state() for name, p in m.procs.items()}
            for state in out.values():
                state["killed"] = m.killed
            return out

    def set_forwarding(self, ip: str, backends: Callable[[], list[VmView]]) -> None:
        with self._lock:
            self._lbs[ip] = backends
        if self.network is not None:
            self.network.set_lb(ip, backends)
            return

        def pick() -> tuple[str, int] | None:
            healthy = [vm for vm in backends() if self.healthy(vm)]
            if not healthy:
                return None
            return healthy[next(self._rr) % len(healthy)].internal_ip, APISERVER_PORT

        self.forwarder.listen(ip, APISERVER_PORT, pick)

    def clear_forwarding(self, ip: str) -> None:
        with self._lock:
            self._lbs.pop(ip, None)
        if self.network is not None:
            self.network.clear_lb(ip)
            return
        self.forwarder.close(ip, APISERVER_PORT)

    def set_firewalls(self, firewalls: list[dict]) -> None:
        if self.network is not None:
            self.network.set_firewalls(firewalls)

    def partition_zone(self, zone: str) -> bool:
        if self.network is None:
            return False
        self.network.partition_zone(zone)
        return True

    def reconnect_zone(self, zone: str) -> None:
        if self.network is not None:
            self.network.reconnect_zone(zone)

    def address_pools(self):
        """The IP pools the emulator's store should use with this runtime's network (None: loopback)."""
        return self.network.pools() if self.network is not None else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            machines = list(self._machines.values())
            self._wake.notify_all()
        self._supervisor.join(5)
        try:
            for m in machines:
                for p in m.procs.values():
                    p.terminate(grace=3.0)
        finally:
            self.forwarder.shutdown()
            self._health.close()
            if self.network is not None:
                self.network.close()

    # --- internals --------------------------------------------------------
    def _machine(self, vm: VmView) -> Machine:
        m = self._machines.get(vm.key)
        if m is None:
            root = self.state_dir / "vms" / vm.project / vm.zone / vm.name
            (root / "logs").mkdir(parents=True, exist_ok=True)
            m = self._machines[vm.key] = Machine(view=vm, root=root)
        return m

    def _plan(self, m: Machine) -> None:
        """Write the VM's files and record the processes its metadata describes (not yet spawned)."""
        spec = NodeSpec.from_metadata(m.view.metadata)
        pki = m.root / "pki" if spec.secure else None
        if pki is not None:
            write_pki(spec.tls, pki)
        ip = m.view.internal_ip
        wanted: dict[str, list[str]] = {}
        if spec.etcd is not None:
            wanted["etcd"] = etcd_argv(self.etcd_bin, spec.etcd, ip, m.root / "etcd-data", pki)
        if spec.apiserver is not None and spec.etcd is not None:
            argv = [self.python, "-m", "haplane.emulator.apiserver", "--ip", ip, "--name", m.view.name,
                    "--port", str(spec.apiserver.port), "--health-port", str(spec.apiserver.health_port),
                    "--etcd-url", client_url(ip) if pki else client_url(ip).replace("https", "http")]
            if pki is not None:
                argv += ["--pki-dir", str(pki)]
            wanted["apiserver"] = argv
        wrap = self.network.exec_prefix(m.view) if self.network is not None else []
        for name, argv in wanted.items():
            proc = m.procs.get(name)
            if proc is None:
                m.procs[name] = Proc(argv=argv, log=m.root / "logs" / f"{name}.log", wrap=wrap)
            elif proc.argv != argv:
                proc.argv = argv  # takes effect at the next (re)start

    def _forward_external(self, m: Machine, old: VmView | None, remove_all: bool = False) -> None:
        if self.network is not None:
            self.network.set_external(m.view, powered=m.powered and not remove_all)
            return
        before = set(old.external_ips) if old else set()
        after = set() if remove_all or not m.powered else set(m.view.external_ips)
        for ip in before - after:
            for port in FORWARDED_PORTS:
                self.forwarder.close(ip, port)
        internal = m.view.internal_ip
        for ip in after - before if old else after:
            for port in FORWARDED_PORTS:
                self.forwarder.listen(ip, port, lambda internal=internal, port=port: (internal, port))

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                for m in list(self._machines.values()):
                    if not m.powered or m.killed:
                        continue
                    for proc in m.procs.values():
                        if proc.running or now < proc.next_start:
                            continue
                        if proc.popen is not None:  # it ran and exited: restart with back-off
                            proc.last_exit = proc.popen.returncode
                            proc.restarts += 1
                            proc.popen = None
                            proc.next_start = now + min(BACKOFF_MAX_S, 0.5 * 2 ** min(proc.restarts, 4))
                            continue
                        proc.spawn()
                self._wake.wait(0.25)
