"""Emulated VMs that run real processes: etcd, and the API-server stand-in, whose process also runs
the controller-manager and scheduler stand-ins as threads (:mod:`haplane.emulator.controllers`:
leader election through the local API server, on a VM whose metadata carries their certificates).

Each VM is a directory under ``STATE_DIR/vms/`` (its disk: ``pki/``,
``etcd-data/``, ``logs/``) and up to two supervised processes bound to its
internal loopback address. Like systemd on a real VM, a process that exits
is restarted with back-off — that is also how an etcd member started with
``initial-cluster-state=existing`` comes up once the flow has added it.

All process spawning happens in one long-lived supervisor thread: API
handler threads only record what should run and wake it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
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
from haplane.node.spec import (
    APISERVER_PORT,
    CONTROLLER_MANAGER_PORT,
    ETCD_VERSION_KEY,
    FORWARDED_PORTS,
    HEALTH_PORT,
    SCHEDULER_PORT,
    SNAPSHOT_KEY_SECRET,
    TLS_FILES,
    NodeSpec,
    client_url,
    etcd_argv,
    find_etcd,
    find_etcd_version,
    peer_url,
    write_pki,
)
from haplane.processes import stop_group

if TYPE_CHECKING:
    from haplane.emulator.netns import NamespacedNetwork

BACKOFF_MAX_S = 5.0
# The pki files each process reads at start: a change to one of them restarts it (a reload). The
# service-account files are not here: the API-server stand-in re-reads them by itself.
PROC_FILES: dict[str, frozenset[str]] = {
    "etcd": frozenset({"etcd-ca", "etcd-peer-cert", "etcd-peer-key", "etcd-server-cert", "etcd-server-key"}),
    # the API server's process also runs the controller-manager and scheduler stand-ins (threads)
    "apiserver": frozenset(
        {"ca", "etcd-ca", "apiserver-cert", "apiserver-key", "apiserver-etcd-client-cert", "apiserver-etcd-client-key"}
        | {"controller-manager-cert", "controller-manager-key", "scheduler-cert", "scheduler-key"}
    ),
}
# process -> (its Lease in kube-system, its /healthz port); its certificate is TLS_FILES["<process>-cert"]
CONTROLLERS: dict[str, tuple[str, int]] = {
    "controller-manager": ("kube-controller-manager", CONTROLLER_MANAGER_PORT),
    "scheduler": ("kube-scheduler", SCHEDULER_PORT),
}
# client-go's leader-election defaults (seconds), scaled by the emulator's time scale (not below a
# fifth: a lease of 3 s, renewed every 0.4 s, is as busy as a VM of the emulator should get)
LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_PERIOD_S = 15.0, 10.0, 2.0
MIN_LEASE_SCALE = 0.2


def leader_election_flags(time_scale: float) -> list[str]:
    scale = max(MIN_LEASE_SCALE, time_scale)
    return [
        "--leader-elect-lease-duration",
        f"{LEASE_DURATION_S * scale:g}",
        "--leader-elect-renew-deadline",
        f"{RENEW_DEADLINE_S * scale:g}",
        "--leader-elect-retry-period",
        f"{RETRY_PERIOD_S * scale:g}",
    ]


def service_account_flags(files: set[str], pki: Path) -> list[str]:
    """The stand-in's client-CA and service-account flags, as the startup script gives kube-apiserver."""
    flags = ["--client-ca-file", str(pki / TLS_FILES["ca"])] if "ca" in files else []
    if "service-account-key" in files and "service-account-pub" in files:
        flags += [
            "--service-account-key-file",
            str(pki / TLS_FILES["service-account-pub"]),
            "--service-account-signing-key-file",
            str(pki / TLS_FILES["service-account-key"]),
        ]
    return flags


@dataclass
class Proc:
    argv: list[str]
    log: Path
    wrap: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NS]: where it runs
    popen: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    files: str | None = None  # the pki files it started with (Machine.files_key)
    last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.wrap + self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def send(self, sig: int) -> None:
        """Send ``sig`` to its process group without waiting (:meth:`terminate` waits)."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

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
    tls_wanted: dict[str, str] = field(default_factory=dict)  # suffix -> PEM (from metadata)
    secrets_wanted: dict[str, str] = field(default_factory=dict)  # suffix -> version (metadata)
    files_applied: str | None = None  # files_key() of what is on its disk
    secrets_error: str | None = None
    next_read: float = 0.0

    def files_key(self, only: frozenset[str] | None = None) -> str:
        """Names what the VM's pki directory should hold (a digest, never the keys themselves);
        ``only``: the files one process reads."""
        pick = (lambda d: d) if only is None else (lambda d: {k: v for k, v in d.items() if k in only})
        blob = json.dumps([pick(self.tls_wanted), pick(self.secrets_wanted)], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def keys_ready(self) -> bool:
        return self.files_applied == self.files_key()


class ProcessRuntime:
    """The emulator's default runtime: real etcd and an API-server stand-in per VM.

    ``network``: None for loopback (VMs bind 127.x addresses; external and load-balancer IPs
    are userspace forwarders; firewalls are not enforced), or a :class:`.netns.NamespacedNetwork`
    (a namespace per VM, NAT and load balancing in a router namespace, nftables firewalls,
    zone partitions). The runtime closes the network it was given.
    """

    def __init__(
        self,
        state_dir: Path,
        etcd_bin: str | None = None,
        python: str | None = None,
        network: NamespacedNetwork | None = None,
    ) -> None:
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
        self.endpoint: str | None = None  # the emulator's URL: Secret Manager and the metadata server
        self.token_for_ip: Callable[[str], str] | None = None
        self.time_scale: Callable[[], float] = lambda: 1.0
        self._supervisor = threading.Thread(target=self._supervise, name="vm-supervisor", daemon=True)
        self._supervisor.start()

    def attach(self, endpoint: str, token_for_ip: Callable[[str], str] | None = None) -> None:
        """Where the VMs find Secret Manager and the metadata server (the emulator, once it serves).
        ``token_for_ip``: the metadata server's token for the VM with that internal address, asked
        in-process (the hypervisor side) in both network modes: never over HTTP, where the source
        address would have to say which VM asks."""
        self.endpoint = endpoint
        self.token_for_ip = token_for_ip

    def follow_time_scale(self, time_scale: Callable[[], float]) -> None:
        """The emulator's time scale, asked when a VM's processes are planned (leader-election timings)."""
        self.time_scale = time_scale

    # --- Runtime protocol -------------------------------------------------
    def check_image(self, metadata: dict[str, str]) -> None:
        """Refuse a VM whose etcd version this host lacks (FileNotFoundError naming the package)."""
        self._etcd_bin(metadata)

    def _etcd_bin(self, metadata: dict[str, str]) -> str:
        """The etcd binary of the version the VM asks for; without one, the runtime's (today's default)."""
        version = metadata.get(ETCD_VERSION_KEY)
        return find_etcd_version(version) if version else self.etcd_bin

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
            procs = [p for m in machines for p in m.procs.values()]
            for p in procs:  # every VM at once: one after another, 54 VMs took minutes to stop
                p.send(signal.SIGTERM)
            deadline = time.monotonic() + 3.0
            for p in procs:
                p.terminate(grace=max(0.1, deadline - time.monotonic()))
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
        # the files are written by the supervisor (with the keys it reads from Secret Manager as
        # the VM), and the processes (re)started on them, as the startup script does on a real VM
        m.tls_wanted = dict(spec.tls) if pki is not None else {}
        m.secrets_wanted = dict(spec.secret_refs) if pki is not None else {}
        ip = m.view.internal_ip
        wanted: dict[str, list[str]] = {}
        if spec.etcd is not None:
            wanted["etcd"] = etcd_argv(self._etcd_bin(m.view.metadata), spec.etcd, ip, m.root / "etcd-data", pki)
            if spec.restore is not None:  # restore-cluster: etcd's data comes from a snapshot at first boot
                wanted["etcd"] = self._restore_argv(m, spec, ip) + wanted["etcd"]
        if spec.apiserver is not None and spec.etcd is not None:
            argv = [
                self.python,
                "-m",
                "haplane.emulator.apiserver",
                "--ip",
                ip,
                "--name",
                m.view.name,
                "--port",
                str(spec.apiserver.port),
                "--health-port",
                str(spec.apiserver.health_port),
                "--etcd-url",
                client_url(ip) if pki else client_url(ip).replace("https", "http"),
            ]
            if pki is not None:
                argv += ["--pki-dir", str(pki)]
                argv += service_account_flags(set(spec.tls) | set(spec.secret_refs), pki)
            files = set(spec.tls) | set(spec.secret_refs)
            controllers = [
                f"{component}:{port}:{pki / TLS_FILES[f'{name}-cert']}:{pki / TLS_FILES[f'{name}-key']}"
                for name, (component, port) in CONTROLLERS.items()
                if pki is not None and {"ca", f"{name}-cert", f"{name}-key"} <= files
            ]
            if controllers:  # threads of the API server's process: one Python process per VM, not three
                argv += [arg for c in controllers for arg in ("--controller", c)]
                argv += leader_election_flags(self.time_scale())
            wanted["apiserver"] = argv
        wrap = self.network.exec_prefix(m.view) if self.network is not None else []
        for name, argv in wanted.items():
            proc = m.procs.get(name)
            if proc is None:
                m.procs[name] = Proc(argv=argv, log=m.root / "logs" / f"{name}.log", wrap=wrap)
            elif proc.argv != argv:
                proc.argv = argv  # takes effect at the next (re)start

    def _restore_argv(self, m: Machine, spec: NodeSpec, ip: str) -> list[str]:
        """The boot step that restores etcd's data dir from the snapshot in metadata, then execs etcd."""
        restore_file = self._write_restore_file(m, spec=json.loads(spec.restore.to_json()), key=spec.snapshot_key)
        return [
            self.python,
            "-m",
            "haplane.node.restore_boot",
            "--restore",
            str(restore_file),
            "--data-dir",
            str(m.root / "etcd-data"),
            "--name",
            spec.etcd.name,
            "--peer-url",
            peer_url(ip),
            "--token",
            spec.etcd.initial_cluster_token,
            "--",
        ]

    @staticmethod
    def _write_restore_file(m: Machine, spec: dict | None = None, key: str | None = None) -> Path:
        """``restore.json`` (0600): the restore spec, and the key once known (from metadata, or read
        from Secret Manager by the VM); a part not given is kept from the file."""
        path = m.root / "restore.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        new = {**old, **(spec or {})}
        new["key"] = key if key is not None else old.get("key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(new, f)
        return path

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

    def _apply_files(self, m: Machine, key: str, tls: dict[str, str], refs: dict[str, str]) -> None:
        """What the VM does at boot and whenever its metadata changes: read its private keys from
        Secret Manager as its own service account (a token from the metadata server, asked
        in-process for this VM), write them and its certificates to its disk, and restart the
        processes that run on older files (etcd and the API server reload their certificates).
        Runs outside the lock."""
        from haplane.cloud.secretstore import read_as_vm

        try:
            files = dict(tls)
            if refs:
                if self.endpoint is None or self.token_for_ip is None:
                    raise RuntimeError("no Secret Manager: the runtime is not attached to an emulator")
                token = self.token_for_ip(m.view.internal_ip)
                files.update({suffix: read_as_vm(self.endpoint, token, ref) for suffix, ref in refs.items()})
            snapshot_key = files.pop(SNAPSHOT_KEY_SECRET, None)
            if snapshot_key is not None:  # restore-cluster: the key that opens the snapshot
                self._write_restore_file(m, key=snapshot_key)
            write_pki(files, m.root / "pki")
        except Exception as exc:  # refused, not there yet: try again, as a boot script would
            with self._lock:
                m.secrets_error = f"{type(exc).__name__}: {exc}"[:500]
                m.next_read = time.monotonic() + 1.0
            return
        with self._lock:
            m.files_applied, m.secrets_error = key, None
            stale = [
                p
                for name, p in m.procs.items()
                if p.running and p.files not in (None, m.files_key(PROC_FILES.get(name)))
            ]
        for p in stale:  # a reload: restart at once, not counted as a crash
            p.terminate()
            with self._lock:
                p.popen, p.next_start = None, 0.0
        with self._lock:
            self._wake.notify_all()

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                applies = [
                    (m, m.files_key(), dict(m.tls_wanted), dict(m.secrets_wanted))
                    for m in self._machines.values()
                    if m.powered and not m.killed and not m.keys_ready and now >= m.next_read
                ]
            for m, key, tls, refs in applies:
                self._apply_files(m, key, tls, refs)
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                for m in list(self._machines.values()):
                    if not m.powered or m.killed or not m.keys_ready:
                        continue
                    for name, proc in m.procs.items():
                        if proc.running or now < proc.next_start:
                            continue
                        if proc.popen is not None:  # it ran and exited: restart with back-off
                            proc.last_exit = proc.popen.returncode
                            proc.restarts += 1
                            proc.popen = None
                            proc.next_start = now + min(BACKOFF_MAX_S, 0.5 * 2 ** min(proc.restarts, 4))
                            continue
                        proc.files = m.files_key(PROC_FILES.get(name))
                        proc.spawn()
                self._wake.wait(0.25)
