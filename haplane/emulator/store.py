"""Resource state: resources as GCE-shaped JSON dicts, IP pools, ids, one lock.

All mutable API state lives in :class:`Store` and is guarded by ``Store.lock``
(an ``RLock``; ``Store.changed`` is a condition on it, notified whenever an
operation changes, for ``operations.wait``). Never call the runtime while
holding the lock: a runtime may call back (``backends()``) from its own threads.

Keys starting with ``_`` in a resource dict are internal and never served.

IP pools (all loopback, 127.0.0.0/8): internal IPs 127.10.0.0/16, ephemeral
external IPs 127.20.0.0/16, fresh static addresses 127.30.0.0/16; hosts .0,
.1 and .255 of each /24 are skipped; an IP is never handed out while allocated.
The namespaced network (:mod:`.netns`) gives its own pools instead: a /24 per
zone for internal IPs (:class:`ZonedPool`) and external ranges in its 10.B.0.0/16.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from haplane.emulator.network import can_bind
from haplane.node.spec import FORWARDED_PORTS, VM_PORTS


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def fingerprint(value) -> str:
    """GCE-style fingerprint: base64 of 8 bytes, changes when ``value`` changes."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()[:8]
    return base64.b64encode(digest).decode()


class IpPool:
    """Sequential allocator over a /16 (skips .0, .1, .255 hosts; never hands out an allocated IP)."""

    def __init__(self, cidr: str, ports: tuple[int, ...] = ()):
        self.network = ipaddress.ip_network(cidr)
        self.ports = ports  # an IP where another process on this host listens on one of these is skipped
        self.allocated: set[str] = set()
        self._size = self.network.num_addresses
        # a random start, so that emulators started at the same moment on one host (parallel test
        # sessions) do not probe and take the same first addresses
        self._cursor = random.randrange(self._size)

    def _usable(self, ip: ipaddress.IPv4Address) -> bool:
        return int(ip) & 0xFF not in (0, 1, 255)

    def allocate(self, zone: str | None = None) -> str:
        """A free IP (``zone`` is for :class:`ZonedPool`'s signature; one pool serves every zone)."""
        for _ in range(self._size):
            ip = self.network.network_address + self._cursor
            self._cursor = (self._cursor + 1) % self._size
            text = str(ip)
            if self._usable(ip) and text not in self.allocated and self._free_on_host(text):
                self.allocated.add(text)
                return text
        raise RuntimeError(f"IP pool {self.network} exhausted")

    def _free_on_host(self, ip: str) -> bool:
        """Not in use by another emulator (or anything else) on this machine: each port can be bound."""
        return all(can_bind(ip, port) for port in self.ports)

    def contains(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in self.network
        except ValueError:
            return False

    def release(self, ip: str) -> None:
        self.allocated.discard(ip)


class ZonedPool:
    """Internal IPs from one subnet per zone (the namespaced network: a bridge per zone).

    ``subnet_of(zone)`` names the zone's subnet (a /24); the pool of each is an :class:`IpPool`.
    """

    def __init__(self, subnet_of: Callable[[str], str]):
        self.subnet_of = subnet_of
        self.pools: dict[str, IpPool] = {}

    def allocate(self, zone: str | None = None) -> str:
        if zone is None:
            raise ValueError("the namespaced network allocates internal IPs per zone: name the zone")
        pool = self.pools.get(zone)
        if pool is None:
            pool = self.pools[zone] = IpPool(self.subnet_of(zone))
        return pool.allocate()

    def contains(self, ip: str) -> bool:
        return any(pool.contains(ip) for pool in self.pools.values())

    def release(self, ip: str) -> None:
        for pool in self.pools.values():
            pool.release(ip)


class Store:
    """``pools``: (internal, ephemeral, static) IP pools; default the loopback ranges above."""

    def __init__(self, base_url: str, pools: tuple[IpPool | ZonedPool, IpPool, IpPool] | None = None):
        self.base_url = base_url
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.instances: dict[tuple[str, str, str], dict] = {}
        self.addresses: dict[tuple[str, str, str], dict] = {}
        self.target_pools: dict[tuple[str, str, str], dict] = {}
        self.forwarding_rules: dict[tuple[str, str, str], dict] = {}
        self.firewalls: dict[tuple[str, str], dict] = {}
        self.http_health_checks: dict[tuple[str, str], dict] = {}
        self.health_checks: dict[tuple[str, str], dict] = {}
        if pools is None:
            pools = (
                IpPool("127.10.0.0/16", ports=VM_PORTS),
                IpPool("127.20.0.0/16", ports=FORWARDED_PORTS),
                IpPool("127.30.0.0/16", ports=FORWARDED_PORTS),
            )
        self.internal_ips, self.ephemeral_ips, self.static_ips = pools
        self.failed_zones: set[str] = set()
        self._rng = random.Random()

    def new_id(self) -> str:
        """A numeric id as GCE gives (unsigned 64-bit, as a decimal string)."""
        return str(self._rng.getrandbits(63) | (1 << 62))

    def link(self, path: str) -> str:
        """A selfLink for ``projects/...`` relative ``path``."""
        return f"{self.base_url}/compute/v1/{path}"

    # --- lookups used by several handlers -------------------------------------------------

    def address_by_ip(self, project: str, region: str, ip: str) -> dict | None:
        for (p, r, _), addr in self.addresses.items():
            if p == project and r == region and addr.get("address") == ip:
                return addr
        return None

    def instance_using_ip(self, ip: str) -> dict | None:
        """The instance whose access config has ``ip`` as natIP, if any."""
        for inst in self.instances.values():
            for nic in inst["networkInterfaces"]:
                for ac in nic.get("accessConfigs", []):
                    if ac.get("natIP") == ip:
                        return inst
        return None

    def forwarding_rule_on_ip(self, ip: str) -> dict | None:
        for rule in self.forwarding_rules.values():
            if rule.get("IPAddress") == ip:
                return rule
        return None

    def instance_by_link(self, link: str) -> dict | None:
        for inst in self.instances.values():
            if inst["selfLink"] == link:
                return inst
        return None


def public(resource: dict) -> dict:
    """The resource as served: a deep copy without internal ``_`` keys."""

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not k.startswith("_")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(resource)
