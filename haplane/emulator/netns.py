"""The namespaced network (``haplane emulator --network namespaces``, needs root): VMs on real networks.

Everything this creates is named with one per-emulator prefix (``hpXXXX``) and
removed by :meth:`NamespacedNetwork.close`, even after a failed setup::

    host ──(veth hpXXXX-up, 10.B.254.2 = the worker's egress)──┐
                                                               router namespace hpXXXX-router
    outside namespace hpXXXX-out (10.B.253.2: "the internet") ─┤  (forwards; table haplane_router:
                                                               │   cut zones, 1:1 NAT, LB DNAT;
                                                               │   GCE's health-check prober 35.191.0.1)
          bridge br1 10.B.1.1/24 (zone 1) ── veth ── VM namespace hpXXXX-vm1 (eth0 10.B.1.x/24)
          bridge br2 10.B.2.1/24 (zone 2) ── veth ── VM namespace hpXXXX-vm2 ...

- internal IPs: a /24 per zone; ephemeral external IPs 10.B.128.0/19, static 10.B.160.0/19;
  the host routes 10.B.0.0/16 through the router, so the worker reaches VMs by internal IP (a
  worker in the VPC) and external/forwarding-rule IPs through the router's DNAT;
- firewall rules are enforced inside each VM namespace (:func:`.nft.vm_ruleset`): implied
  deny-ingress, then the project's GCE firewall resources;
- the load balancer: DNAT of the forwarding rule's IP to the pool members whose legacy HTTP
  health check passes, probed from 35.191.0.1 (a GCE prober range) every ``lb_interval`` s;
- ``partition_zone``: the router drops everything to and from the zone's subnet; the zone's
  VMs keep running and still reach each other over their bridge.
"""

from __future__ import annotations

import ctypes
import http.client
import ipaddress
import logging
import os
import random
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from haplane.emulator.nft import Host, router_ruleset, vm_ruleset
from haplane.emulator.runtime import VmView
from haplane.emulator.store import IpPool, ZonedPool
from haplane.node.spec import APISERVER_PORT, HEALTH_PORT

log = logging.getLogger(__name__)
PROBER_IP = "35.191.0.1"  # inside 35.191.0.0/16, a documented source range of GCE's health checkers
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"


class NetworkSetupError(RuntimeError):
    pass


def check_privileges() -> None:
    """Refuse early, saying what is missing, when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise NetworkSetupError(
            "--network namespaces needs root (network namespaces, veth pairs, nftables); "
            "run as root, or use the default --network loopback"
        )
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise NetworkSetupError(f"--network namespaces needs the '{tool}' command: apt-get install -y {package}")


def run(*argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkSetupError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _used_second_octets() -> set[int]:
    """Second octets of 10.x.0.0/16 already addressed or routed on this host (not to be shadowed)."""
    used = set()
    text = (
        run("ip", "-4", "-o", "addr", "show", check=False).stdout + run("ip", "-4", "route", "show", check=False).stdout
    )
    for word in text.split():
        try:
            net = ipaddress.ip_network(word.split("/")[0] if "/" not in word else word, strict=False)
        except ValueError:
            continue
        ten = ipaddress.ip_network("10.0.0.0/8")
        if net.version == 4 and net.overlaps(ten):
            if net.prefixlen <= 8:
                return set(range(256))
            first, last = int(net.network_address) >> 16 & 0xFF, int(net.broadcast_address) >> 16 & 0xFF
            used.update(range(first, last + 1))
    return used


def enter_namespace(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (sockets it opens live there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class _Lb:
    backends: Callable[[], list[VmView]]
    healthy: tuple[str, ...] = ()


class NamespacedNetwork:
    """One emulator's network namespaces, bridges, veths and nftables tables (see the module doc)."""

    def __init__(self, prefix: str | None = None, lb_interval: float = 0.5):
        check_privileges()
        self.prefix = prefix or f"hp{secrets.token_hex(2)}"
        if len(self.prefix) > 8:
            raise ValueError("the prefix must be at most 8 characters (interface names are 15 at most)")
        free = sorted(set(range(64, 250)) - _used_second_octets())
        if not free:
            raise NetworkSetupError("no free 10.x.0.0/16 on this host for the emulator's network")
        self.octet = random.choice(free)
        self.net = ipaddress.ip_network(f"10.{self.octet}.0.0/16")
        self.router = f"{self.prefix}-router"
        self.outside = f"{self.prefix}-out"
        self.uplink = f"{self.prefix}-up"
        self.host_ip = f"10.{self.octet}.254.2"  # the worker's egress address toward the VMs
        self.outside_ip = f"10.{self.octet}.253.2"
        self.lb_interval = lb_interval
        self._lock = threading.RLock()
        self._zones: dict[str, int] = {}
        self._bridges: set[str] = set()
        self._vms: dict[str, tuple[str, VmView]] = {}  # key -> (namespace, view)
        self._counter = 0
        self._firewalls: list[dict] = []
        self._nat: dict[str, str] = {}
        self._lbs: dict[str, _Lb] = {}
        self._cut: set[str] = set()
        self._links: set[tuple[str, str]] = set()  # address pairs cut from each other (cut_links)
        self._closed = threading.Event()
        self._probes: ThreadPoolExecutor | None = None
        self._refresher: threading.Thread | None = None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # --- addresses ------------------------------------------------------------------------------

    def zone_subnet(self, zone: str) -> str:
        with self._lock:
            index = self._zones.get(zone)
            if index is None:
                index = len(self._zones) + 1
                if index > 100:
                    raise NetworkSetupError("the namespaced network serves at most 100 zones")
                self._zones[zone] = index
        return f"10.{self.octet}.{index}.0/24"

    def pools(self) -> tuple[ZonedPool, IpPool, IpPool]:
        """(internal, ephemeral external, static external) pools for the emulator's store."""
        return (ZonedPool(self.zone_subnet), IpPool(f"10.{self.octet}.128.0/19"), IpPool(f"10.{self.octet}.160.0/19"))

    # --- set-up and tear-down -------------------------------------------------------------------

    def _setup(self) -> None:
        o, r = self.octet, self.router
        run("ip", "netns", "add", r)
        run("ip", "-n", r, "link", "set", "lo", "up")
        run("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "-n", r, "addr", "add", f"{PROBER_IP}/32", "dev", "lo")
        run("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", "up0", "netns", r)
        run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.uplink)
        run("ip", "link", "set", self.uplink, "up")
        run("ip", "-n", r, "addr", "add", f"10.{o}.254.1/24", "dev", "up0")
        run("ip", "-n", r, "link", "set", "up0", "up")
        run("ip", "-n", r, "route", "add", "unreachable", str(self.net))
        run("ip", "route", "add", str(self.net), "via", f"10.{o}.254.1", "dev", self.uplink)
        # "the internet": a client outside every VPC range, for firewall tests
        run("ip", "netns", "add", self.outside)
        run("ip", "-n", self.outside, "link", "set", "lo", "up")
        run("ip", "-n", r, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", self.outside)
        run("ip", "-n", r, "addr", "add", f"10.{o}.253.1/24", "dev", "out0")
        run("ip", "-n", r, "link", "set", "out0", "up")
        run("ip", "-n", self.outside, "addr", "add", f"{self.outside_ip}/24", "dev", "eth0")
        run("ip", "-n", self.outside, "link", "set", "eth0", "up")
        run("ip", "-n", self.outside, "route", "add", "default", "via", f"10.{o}.253.1")
        self._render_router()
        self._probes = ThreadPoolExecutor(
            max_workers=4,
            thread_name_prefix=f"{self.prefix}-probe",
            initializer=enter_namespace,
            initargs=(self.router,),
        )
        self._refresher = threading.Thread(target=self._refresh_lbs, name=f"{self.prefix}-lb", daemon=True)
        self._refresher.start()

    def leftovers(self) -> list[str]:
        """Namespaces and host links of this network that exist (empty after :meth:`close`)."""
        found = [
            n.split()[0]
            for n in run("ip", "netns", "list", check=False).stdout.splitlines()
            if n.startswith(self.prefix + "-")
        ]
        links = run("ip", "-o", "link", "show", check=False).stdout
        found += [
            line.split(":")[1].strip().split("@")[0]
            for line in links.splitlines()
            if line.split(":")[1].strip().startswith(self.prefix)
        ]
        return found

    def close(self) -> None:
        """Remove every namespace, veth, bridge, route and nft table of this network (idempotent)."""
        self._closed.set()
        if self._refresher is not None:
            self._refresher.join(5)
        if self._probes is not None:
            self._probes.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            namespaces = [ns for ns, _ in self._vms.values()]
            self._vms.clear()
        # bridges, veths and tables live in the namespaces: deleting them removes those too
        for ns in [*namespaces, self.outside, self.router]:
            run("ip", "netns", "del", ns, check=False)
        run("ip", "link", "del", self.uplink, check=False)  # gone with its peer already; to be sure
        for ns in [n for n in self.leftovers() if not n.startswith(self.uplink)]:
            run("ip", "netns", "del", ns, check=False)
        left = self.leftovers()
        if left:
            log.error("namespaced network %s: could not remove %s", self.prefix, left)

    # --- VMs ------------------------------------------------------------------------------------

    def namespace(self, vm_key: str) -> str | None:
        with self._lock:
            entry = self._vms.get(vm_key)
            return entry[0] if entry else None

    def exec_prefix(self, vm: VmView) -> list[str]:
        """What runs a VM's process inside its namespace (made by :meth:`vm_up`)."""
        return ["ip", "netns", "exec", self.vm_up(vm)]

    def vm_up(self, vm: VmView) -> str:
        """The VM's namespace (created on first use) with its internal IP on its zone's bridge."""
        with self._lock:
            entry = self._vms.get(vm.key)
            if entry is not None:
                ns, old = entry
                self._vms[vm.key] = (ns, vm)
                if old.tags != vm.tags:
                    self._render_firewalls()
                return ns
            self._counter += 1
            n = self._counter
            ns, r = f"{self.prefix}-vm{n}", self.router
            subnet = ipaddress.ip_network(self.zone_subnet(vm.zone))
            bridge = f"br{self._zones[vm.zone]}"
            gateway = str(subnet.network_address + 1)
            if bridge not in self._bridges:
                run("ip", "-n", r, "link", "add", bridge, "type", "bridge")
                run("ip", "-n", r, "addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
                run("ip", "-n", r, "link", "set", bridge, "up")
                self._bridges.add(bridge)
            run("ip", "netns", "add", ns)
            self._vms[vm.key] = (ns, vm)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", r, "link", "add", f"v{n}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", r, "link", "set", f"v{n}", "master", bridge, "up")
            run("ip", "-n", ns, "addr", "add", f"{vm.internal_ip}/{subnet.prefixlen}", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", gateway)
            self._render_firewalls()
            return ns

    def vm_gone(self, vm: VmView) -> None:
        """The VM was deleted (its processes already ended): its namespace and veth go."""
        with self._lock:
            entry = self._vms.pop(vm.key, None)
            if entry is None:
                return
            run("ip", "netns", "del", entry[0], check=False)
            self._render_firewalls()

    def set_external(self, vm: VmView, powered: bool) -> None:
        """1:1 NAT of the VM's external IPs to its internal IP (none while it is not running)."""
        with self._lock:
            for ext, internal in list(self._nat.items()):
                if internal == vm.internal_ip:
                    del self._nat[ext]
            if powered:
                for ext in vm.external_ips:
                    self._nat[ext] = vm.internal_ip
            self._render_router()

    # --- firewalls ------------------------------------------------------------------------------

    def set_firewalls(self, firewalls: list[dict]) -> None:
        with self._lock:
            self._firewalls = list(firewalls)
            self._render_firewalls()

    def _render_firewalls(self) -> None:
        hosts = {key: Host(ip=view.internal_ip, tags=view.tags) for key, (_, view) in self._vms.items()}
        for key, (ns, view) in self._vms.items():
            project_rules = [f for f in self._firewalls if f"/projects/{view.project}/" in f.get("selfLink", "")]
            script = vm_ruleset(
                hosts[key], project_rules, [h for k, h in hosts.items() if self._vms[k][1].project == view.project]
            )
            run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=script)

    # --- zones ----------------------------------------------------------------------------------

    def partition_zone(self, zone: str) -> None:
        with self._lock:
            self._cut.add(self.zone_subnet(zone))
            self._render_router()

    def reconnect_zone(self, zone: str) -> None:
        with self._lock:
            self._cut.discard(self.zone_subnet(zone))
            self._render_router()

    def cut_links(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Partition inside the network: each pair of addresses (VMs of different zones, or a VM and the
        worker's :attr:`host_ip`) stops reaching each other, both ways, by rules in the router's forward chain.
        VMs of one zone share a bridge and are not cut from each other."""
        with self._lock:
            self._links |= {(min(a, b), max(a, b)) for a, b in pairs}
            self._render_router()

    def heal_links(self) -> None:
        """Undo every :meth:`cut_links`."""
        with self._lock:
            self._links.clear()
            self._render_router()

    # --- load balancer --------------------------------------------------------------------------

    def probe(self, ip: str, port: int = HEALTH_PORT, path: str = "/healthz", timeout: float = 1.0) -> bool:
        """GCE's legacy HTTP health check of ``ip``, sent from the prober address in the router."""
        if self._probes is None or self._closed.is_set():
            return False

        def check() -> bool:
            conn = http.client.HTTPConnection(ip, port, timeout=timeout, source_address=(PROBER_IP, 0))
            try:
                conn.request("GET", path)
                return conn.getresponse().status == 200
            except OSError:
                return False
            finally:
                conn.close()

        try:
            return self._probes.submit(check).result(timeout + 5)
        except Exception:
            return False

    def set_lb(self, ip: str, backends: Callable[[], list[VmView]]) -> None:
        with self._lock:
            self._lbs[ip] = _Lb(backends)
        self._refresh_lb(ip)

    def clear_lb(self, ip: str) -> None:
        with self._lock:
            self._lbs.pop(ip, None)
            self._render_router()

    def _refresh_lb(self, ip: str) -> None:
        with self._lock:
            lb = self._lbs.get(ip)
        if lb is None:
            return
        views = lb.backends()
        healthy = tuple(v.internal_ip for v in views if self.probe(v.internal_ip))
        with self._lock:
            if self._lbs.get(ip) is lb and lb.healthy != healthy:
                lb.healthy = healthy
                self._render_router()

    def _refresh_lbs(self) -> None:
        while not self._closed.wait(self.lb_interval):
            with self._lock:
                ips = list(self._lbs)
            for ip in ips:
                try:
                    self._refresh_lb(ip)
                except Exception:  # keep checking; a failure shows in the log
                    log.exception("load balancer %s: health refresh failed", ip)

    def _render_router(self) -> None:
        script = router_ruleset(
            self._cut, self._nat, {ip: list(lb.healthy) for ip, lb in self._lbs.items()}, (APISERVER_PORT,), self._links
        )
        run("ip", "netns", "exec", self.router, "nft", "-f", "-", stdin=script)
