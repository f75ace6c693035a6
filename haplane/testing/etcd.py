"""Real etcd clusters on loopback, with mutual TLS, for tests and benchmarks.

Each member runs on its own address 127.11.<subnet>.<host> with the standard
ports (2379 client, 2380 peer), from :func:`haplane.node.spec.etcd_argv` and PKI
from :mod:`haplane.cloud.pki` written by :func:`haplane.node.spec.write_pki`. Every
process runs in its own process group and is killed by :meth:`EtcdCluster.close`.
The tests' fixtures ``etcd_cluster_factory`` and ``etcd_bin`` are in tests/fixtures/etcd.py.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from haplane.cloud import pki
from haplane.cloud.etcd import EtcdClient, EtcdError, EtcdTLS, Member, add_member_when_ready
from haplane.emulator.network import can_bind
from haplane.node import spec as node

SUBNET_PREFIX = "127.11"
# a per-process start so that two pytest sessions on one machine rarely pick the same subnet
_subnets = itertools.count((os.getpid() * 7) % 250 + 1)


def allocate_subnet(hosts: int = 8) -> str:
    """A free ``127.11.X`` prefix: no address .2 .. .(hosts+1) has etcd's ports in use."""
    for _ in range(250):
        x = next(_subnets) % 250 + 1
        prefix = f"{SUBNET_PREFIX}.{x}"
        if all(
            can_bind(f"{prefix}.{h}", p)
            for h in range(2, hosts + 2)
            for p in (node.ETCD_CLIENT_PORT, node.ETCD_PEER_PORT)
        ):
            return prefix
    raise RuntimeError(f"no free {SUBNET_PREFIX}.X subnet for etcd")


@dataclass
class EtcdProc:
    name: str
    ip: str
    data_dir: Path
    pki_dir: Path | None
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return node.client_url(self.ip) if self.pki_dir else f"http://{self.ip}:{node.ETCD_CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return node.peer_url(self.ip) if self.pki_dir else f"http://{self.ip}:{node.ETCD_PEER_PORT}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class EtcdCluster:
    root: Path
    cas: pki.ClusterCAs
    subnet: str
    etcd_bin: str
    token: str = "haplane-test"
    members: dict[str, EtcdProc] = field(default_factory=dict)
    _clients: list[EtcdClient] = field(default_factory=list)
    _hosts: Iterator[int] = field(default_factory=lambda: itertools.count(2))

    def next_ip(self) -> str:
        return f"{self.subnet}.{next(self._hosts)}"

    # -- processes

    def tls_for(self, name: str, ip: str, cas: pki.ClusterCAs | None = None) -> dict[str, str]:
        cas = cas or self.cas
        replica = pki.issue_replica_certs(cas, hostname=name, internal_ip=ip, endpoint_ip=ip)
        return pki.node_tls(cas, replica)

    def launch(
        self, name: str, ip: str, initial_cluster: str, state: str, tls: dict[str, str] | None = None
    ) -> EtcdProc:
        """Start one etcd process (does not wait)."""
        base = self.root / name
        pki_dir = base / "pki"
        node.write_pki(tls if tls is not None else self.tls_for(name, ip), pki_dir)
        data_dir = base / "data"
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spec = node.EtcdSpec(
            name=name, initial_cluster=initial_cluster, initial_cluster_state=state, initial_cluster_token=self.token
        )
        argv = node.etcd_argv(self.etcd_bin, spec, ip, data_dir, pki_dir)
        m = EtcdProc(name=name, ip=ip, data_dir=data_dir, pki_dir=pki_dir, log_path=base / "etcd.log")
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.members[name] = m
        return m

    def start_new(self, n: int, prefix: str = "m") -> list[EtcdProc]:
        names = [f"{prefix}{i}" for i in range(n)]
        ips = [self.next_ip() for _ in names]
        initial = ",".join(f"{nm}={node.peer_url(ip)}" for nm, ip in zip(names, ips, strict=True))
        procs = [self.launch(nm, ip, initial, "new") for nm, ip in zip(names, ips, strict=True)]
        self.wait_healthy(procs)
        return procs

    def join(
        self,
        name: str,
        *,
        learner: bool = True,
        wait: bool = True,
        tls: dict[str, str] | None = None,
        ip: str | None = None,
    ) -> tuple[Member, EtcdProc]:
        """Add a member (learner by default) through the API, then start it with state=existing."""
        ip = ip or self.next_ip()
        added = add_member_when_ready(self.client(), [node.peer_url(ip)], learner=learner)
        parts = []
        for m in added.members:
            member_name = name if m.id == added.member.id else m.name
            parts += [f"{member_name}={u}" for u in m.peer_urls]
        proc = self.launch(name, ip, ",".join(parts), "existing", tls=tls)
        if wait:
            self.wait_started(proc)
        return added.member, proc

    def remove_proc(self, name: str) -> None:
        m = self.members.pop(name)
        m.stop()

    # -- clients and waiting

    def running(self) -> list[EtcdProc]:
        return [m for m in self.members.values() if m.alive]

    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.running()]

    def client(self, endpoints: list[str] | None = None, timeout: float = 5.0) -> EtcdClient:
        c = EtcdClient(endpoints or self.endpoints(), EtcdTLS.from_cas(self.cas), timeout=timeout)
        self._clients.append(c)
        return c

    def _diagnose(self, procs: list[EtcdProc], what: str) -> str:
        lines = [what]
        for p in procs:
            state = "running" if p.alive else f"exited rc={p.proc.returncode if p.proc else None}"
            lines.append(f"--- {p.name} {p.ip} ({state}):\n{p.log_tail()}")
        return "\n".join(lines)

    def wait_healthy(self, procs: list[EtcdProc], timeout: float = 30.0) -> None:
        """Until a linearizable read succeeds through every one of ``procs``."""
        c = self.client([p.client_url for p in procs], timeout=2.0)
        deadline = time.monotonic() + timeout
        pending = {p.client_url: p for p in procs}
        while pending:
            for url, p in list(pending.items()):
                if p.proc is not None and p.proc.poll() is not None:
                    raise RuntimeError(self._diagnose(procs, f"etcd {p.name} exited while starting"))
                if c.health(url).healthy:
                    del pending[url]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(self._diagnose(list(pending.values()), f"etcd not healthy after {timeout}s"))
            time.sleep(0.2)

    def wait_started(self, proc: EtcdProc, timeout: float = 30.0) -> None:
        """Until ``proc`` answers status (a learner cannot serve linearizable reads)."""
        c = self.client([proc.client_url], timeout=2.0)
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive:
                raise RuntimeError(self._diagnose([proc], f"etcd {proc.name} exited while joining"))
            try:
                c.status(proc.client_url)
                return
            except EtcdError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(self._diagnose([proc], f"etcd {proc.name} not answering after {timeout}s"))
            time.sleep(0.2)

    def close(self) -> None:
        for c in self._clients:
            c.close()
        for m in list(self.members.values()):
            m.kill()
