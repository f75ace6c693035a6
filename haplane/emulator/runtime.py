"""The boundary between the emulator's Compute API (state, operations) and what its VMs run.

The API layer owns resources and decides *when* things happen; a
:class:`Runtime` makes them happen on this machine: processes for a VM
(etcd, the API-server stand-in, the plain-HTTP health endpoint) and the
loopback forwarding that makes external IPs and load-balancer IPs answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class VmView:
    """What the runtime needs to know about one instance."""

    project: str
    zone: str
    name: str
    internal_ip: str
    external_ips: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()  # network tags: what firewall rules' targetTags / sourceTags match

    @property
    def key(self) -> str:
        return f"{self.project}/{self.zone}/{self.name}"


class Runtime(Protocol):
    def start(self, vm: VmView) -> None:
        """The instance became RUNNING: boot what its metadata describes (nothing for a bare VM)."""

    def update(self, vm: VmView) -> None:
        """Metadata or access configs changed: start what is now described, re-point external IPs."""

    def stop(self, vm: VmView) -> None:
        """The instance was stopped: its processes end, its disk (data dir) is kept."""

    def delete(self, vm: VmView) -> None:
        """The instance was deleted: processes end, data is removed, its IPs stop answering."""

    def kill(self, vm: VmView) -> None:
        """Admin fault: every process of the VM dies and is not restarted; GCE still says RUNNING."""

    def healthy(self, vm: VmView) -> bool:
        """The target pool's legacy HTTP health check against this VM."""

    def processes(self, vm: VmView) -> dict[str, dict]:
        """Process state of the VM: {"etcd": {"running": bool, "pid": int|None, ...}, ...}."""

    def set_forwarding(self, ip: str, backends: Callable[[], list[VmView]]) -> None:
        """A forwarding rule on ``ip``: traffic goes to the healthy VMs that ``backends()`` lists."""

    def clear_forwarding(self, ip: str) -> None:
        """The forwarding rule on ``ip`` was deleted."""

    def set_firewalls(self, firewalls: list[dict]) -> None:
        """The project's firewall resources changed (a network that enforces them applies these)."""

    def partition_zone(self, zone: str) -> bool:
        """Admin fault: cut the zone's network, its VMs keep running; False if this runtime cannot."""

    def reconnect_zone(self, zone: str) -> None:
        """Undo :meth:`partition_zone`."""

    def close(self) -> None:
        """Stop everything this runtime started."""


class NullRuntime:
    """Runs nothing: every VM is bare. For API-only tests."""

    def start(self, vm: VmView) -> None: ...
    def update(self, vm: VmView) -> None: ...
    def stop(self, vm: VmView) -> None: ...
    def delete(self, vm: VmView) -> None: ...
    def kill(self, vm: VmView) -> None: ...

    def healthy(self, vm: VmView) -> bool:
        return False

    def processes(self, vm: VmView) -> dict[str, dict]:
        return {}

    def set_forwarding(self, ip: str, backends: Callable[[], list[VmView]]) -> None: ...
    def clear_forwarding(self, ip: str) -> None: ...
    def set_firewalls(self, firewalls: list[dict]) -> None: ...

    def partition_zone(self, zone: str) -> bool:
        return False

    def reconnect_zone(self, zone: str) -> None: ...
    def close(self) -> None: ...
