"""The observed cluster, as plain data. Pure: standard library only.

:mod:`haplane.cloud.observe` fills it from GCE and etcd; the rules in
:mod:`haplane.core.plans`, :mod:`haplane.core.quorum` and :mod:`haplane.core.remediation`
decide on it. It knows what it does not know: etcd membership, a member's
etcd health and an API server's readiness each have an explicit *unknown*
state (:class:`Unknown`, with the reason and what to check), distinct from
"no members", "unhealthy" and "not ready". A rule that would destroy
something refuses when anything it depends on is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

MISSING = "MISSING"  # vm_status of an etcd member whose VM is gone
ZONE_OUT = "UNKNOWN"  # vm_status of an etcd member whose VM is unseen because its zone's API does not answer
UNPLACED = "?"  # zone of a ZONE_OUT member when several zones are out: which one it is in is unknown


class LbChange(StrEnum):
    """What a plan does to the load balancer (target pool + forwarding rule on the endpoint IP)."""

    NONE = "none"
    CREATE = "create"  # 1 -> 2 (or create with more than one replica)
    EXTEND = "extend"  # add a replica to the pool
    SHRINK = "shrink"  # take a replica out of the pool
    DELETE = "delete"  # 2 -> 1: the endpoint IP goes back to the last replica


class Role(StrEnum):
    NONE = "none"
    LEARNER = "learner"
    FOLLOWER = "follower"
    LEADER = "leader"


@dataclass(frozen=True)
class Unknown:
    """Something that could not be observed: never to be read as "absent" or "unhealthy"."""

    what: str  # "etcd membership of c", "etcd health of c-master-1", ...
    reason: str  # what went wrong when looking
    check: str = ""  # what a person should check

    @property
    def text(self) -> str:
        return f"{self.what} could not be observed ({self.reason})" + (f"; check {self.check}" if self.check else "")

    def __str__(self) -> str:
        return self.text


# the control-plane components every replica runs with --leader-elect=true: name -> its Lease in kube-system
COMPONENTS: dict[str, str] = {"controller-manager": "kube-controller-manager", "scheduler": "kube-scheduler"}


@dataclass(frozen=True)
class LeaderLease:
    """A component's ``coordination.k8s.io/v1`` Lease as read from etcd: who leads it, till when."""

    component: str  # "controller-manager" | "scheduler"
    holder: str | None = None  # the replica (hostname of holderIdentity ``<hostname>_<uuid>``); None: no Lease
    identity: str | None = None
    renew_time: str | None = None  # ISO 8601
    duration_s: float = 15.0
    expired: bool = True  # renewTime + leaseDurationSeconds is past (or there is no Lease)

    @property
    def leader(self) -> str | None:
        """The replica leading the component now, or None (no Lease, or it lapsed)."""
        return None if self.expired else self.holder

    @property
    def text(self) -> str:
        if self.holder is None:
            return f"{COMPONENTS[self.component]}: no Lease, no leader"
        state = "lapsed, no leader" if self.expired else "leader"
        return f"{COMPONENTS[self.component]}: {self.holder} ({state}; renewed {self.renew_time})"


@dataclass(frozen=True)
class ReplicaState:
    name: str
    zone: str
    vm_status: str  # GCE status; MISSING for an etcd member whose VM is gone
    internal_ip: str = ""
    external_ip: str | None = None
    change: str | None = None  # the change that created it (label)
    member_id: int | None = None  # None: not a member -- only meaningful when membership is known
    learner: bool = False
    started: bool = False  # the member has started (it has a name and client URLs)
    etcd_ok: bool = False  # a linearizable read through this member succeeded
    leader: bool = False
    api_ready: bool = False
    cert_not_after: str | None = None
    problems: tuple[str, ...] = ()
    etcd_unknown: Unknown | None = None  # its etcd health could not be observed
    api_unknown: Unknown | None = None  # its API server's readiness could not be observed
    # components (see COMPONENTS) its API server reports not running (componentstatuses)
    components_down: tuple[str, ...] = ()
    components_unknown: Unknown | None = None  # its API server answered /readyz but not componentstatuses
    leads: tuple[str, ...] = ()  # components whose Lease it holds now
    etcd_version: str | None = None  # the etcd server version the member itself reports (/version); None: unread
    kubernetes_version: str | None = None  # the kube-apiserver version its VM asked for (metadata)
    vm_unknown: Unknown | None = None  # its VM could not be looked at (ZONE_OUT: its zone's API does not answer)

    @property
    def healthy(self) -> bool:
        """Known to be healthy (an unknown is never healthy, nor known unhealthy)."""
        return (
            self.vm_status == "RUNNING"
            and self.etcd_ok
            and not self.learner
            and self.api_ready
            and not self.components_down
            and self.components_unknown is None
        )

    @property
    def unknowns(self) -> tuple[Unknown, ...]:
        vm = self.vm_unknown
        if vm is None and self.vm_status == ZONE_OUT:  # unseen in a zone that does not answer: never "not running"
            vm = Unknown(f"the VM of {self.name}", "its zone's API does not answer")
        return tuple(u for u in (vm, self.etcd_unknown, self.api_unknown, self.components_unknown) if u is not None)

    @property
    def role(self) -> str:
        if self.member_id is None:
            return Role.NONE.value
        if self.learner:
            return Role.LEARNER.value
        return (Role.LEADER if self.leader else Role.FOLLOWER).value


@dataclass(frozen=True)
class ClusterState:
    cluster: str
    region: str
    replicas: tuple[ReplicaState, ...]
    endpoint_ip: str | None = None
    address_status: str | None = None
    load_balancer: bool = False
    target_pool: bool = False
    pool_members: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    membership_unknown: Unknown | None = None  # etcd's member list could not be read
    unavailable_zones: tuple[str, ...] = ()  # zones whose API did not answer (observed with tolerate_zones)
    look_alikes: tuple[str, ...] = ()  # VMs with the cluster's label but not its uid (haplane.core.ownership)
    leases: tuple[LeaderLease, ...] = ()  # one per component, read from etcd (empty: not read)
    leases_unknown: Unknown | None = None  # the Leases could not be read

    def leaderless(self) -> tuple[LeaderLease, ...]:
        """Components with no leader: no Lease, or one not renewed within its duration (known only)."""
        return tuple(lease for lease in self.leases if lease.leader is None)

    etcd_cluster_version: str | None = None  # etcd's cluster version (/version "etcdcluster"); None: unread

    @property
    def names(self):  # -> haplane.core.topology.ClusterNames (pure, imported late to keep this module standalone)
        from haplane.core.topology import ClusterNames

        return ClusterNames(self.cluster)

    def replica(self, name: str) -> ReplicaState | None:
        return next((r for r in self.replicas if r.name == name), None)

    @property
    def vms(self) -> tuple[ReplicaState, ...]:
        return tuple(r for r in self.replicas if r.vm_status != MISSING)

    @property
    def voting(self) -> tuple[ReplicaState, ...]:
        return tuple(r for r in self.replicas if r.member_id is not None and not r.learner)

    @property
    def leader(self) -> ReplicaState | None:
        return next((r for r in self.replicas if r.leader), None)

    @property
    def unknowns(self) -> tuple[Unknown, ...]:
        """Everything that could not be observed, the membership first."""
        out = [self.membership_unknown] if self.membership_unknown else []
        for r in self.replicas:
            out += [u for u in r.unknowns if u not in out]
        return tuple(out)

    @property
    def etcd_unknowns(self) -> tuple[Unknown, ...]:
        """What the quorum rules depend on and could not be observed: membership, members' health."""
        out = [self.membership_unknown] if self.membership_unknown else []
        out += [r.etcd_unknown for r in self.replicas if r.etcd_unknown and r.etcd_unknown not in out]
        return tuple(out)
