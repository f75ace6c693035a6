"""Pure rules about a cluster's shape: sizes, zones, and the names of what it owns.

No I/O. The quorum arithmetic lives in :mod:`haplane.core.quorum`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from haplane.core.quorum import check_target_size

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,28}[a-z0-9])?$")
# a change id: a checkpoint path component, a requestId seed and a label value, so nothing that could
# name another folder ("../other/x") or another change after truncation
CHANGE_ID_RE = re.compile(r"^[a-z0-9-]{1,63}$")

LABEL_CLUSTER = "haplane-cluster"
LABEL_ROLE = "haplane-role"
LABEL_MULTIZONE = "haplane-multizone"
LABEL_QUORUM_READS = "haplane-quorum-reads"
LABEL_CHANGE = "haplane-change"
LABEL_UID = "haplane-uid"  # the cluster's identity (haplane.core.ownership)
ROLE_MASTER = "master"


class TopologyError(ValueError):
    """A request that does not fit the cluster's shape; nothing was changed."""


def check_cluster_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise TopologyError(
            f"cluster name {name!r} is not valid: use 1-30 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-'"
        )


def check_change_id(change_id: str) -> str:
    """The one pattern of every flow's ``change_id``: lower-case letters, digits and '-', at most 63."""
    if not isinstance(change_id, str) or not CHANGE_ID_RE.match(change_id):
        raise TopologyError(
            f"change_id {change_id!r} is not valid: use 1-63 lower-case letters, digits or '-' (the id a plan "
            f"artifact shows, e.g. 'add-0b6f...'); nothing was read or changed"
        )
    return change_id


def check_cluster_size(replicas: int) -> None:
    """Intended sizes are 1, 3, 5 or 7 (the seed: a single master, or an odd quorum)."""
    decision = check_target_size(replicas)
    if not decision.allowed:
        raise TopologyError(f"replicas={replicas} refused: {decision.reason}")


def region_of(zone: str) -> str:
    region, sep, letter = zone.rpartition("-")
    if not sep or not region or len(letter) != 1:
        raise TopologyError(f"{zone!r} is not a GCE zone name like 'europe-west1-b'")
    return region


def check_distinct_zones(zones: Iterable[str]) -> list[str]:
    """A zone listed twice is refused, not collapsed: ``[b, b]`` with 3 replicas would put every replica
    in one zone, which is not what the caller asked for."""
    seen: list[str] = []
    for zone in zones:
        if zone in seen:
            raise TopologyError(
                f"zone {zone!r} is listed twice in zones; list each zone once (replicas are "
                f"spread over the listed zones, fewest first)"
            )
        seen.append(zone)
    return seen


def check_multizone(multizone: bool, zones: Iterable[str]) -> None:
    """``multizone=False`` (the seed's MULTIZONE=false: every replica and kubelet in one zone) with several
    zones is a contradiction: refused, naming both ways out, before anything is read or changed."""
    listed = list(dict.fromkeys(zones))
    if not multizone and len(listed) > 1:
        raise TopologyError(
            f"multizone=false keeps the cluster in one zone, but {len(listed)} zones were given "
            f"({', '.join(listed)}): pass one zone, or multizone=true to spread replicas over them"
        )


def check_zones(region: str, zones: Iterable[str], known: Iterable[str]) -> list[str]:
    """Every zone is a known zone of ``region``; returns them deduplicated, in order."""
    known_set = set(known)
    out: list[str] = []
    for zone in zones:
        if zone not in known_set:
            raise TopologyError(
                f"zone {zone!r} is not a zone of region {region!r}; "
                f"choose from {sorted(known_set)} (all replicas of a cluster are in one region)"
            )
        if zone not in out:
            out.append(zone)
    return out


def next_zones(zones: list[str], existing: Iterable[str], count: int) -> list[str]:
    """Zones for ``count`` new replicas: each goes to the zone with the fewest replicas so far.

    Ties go to the zone listed first, so the choice is stable for a given input.
    """
    if not zones:
        raise TopologyError("no zones to place replicas in")
    load = Counter({z: 0 for z in zones})
    load.update(z for z in existing if z in load)
    chosen: list[str] = []
    for _ in range(count):
        zone = min(zones, key=lambda z: (load[z], zones.index(z)))
        chosen.append(zone)
        load[zone] += 1
    return chosen


def label_value(text: str) -> str:
    """``text`` as a GCE label value: lowercase letters, digits, '-' and '_', at most 63 characters."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())[:63]


def replica_name(cluster: str, change_id: str, slot: int | str) -> str:
    """A replica's VM name, fixed by the change that creates it (so a resumed run finds it again)."""
    digest = hashlib.sha256(f"{cluster}/{change_id}/{slot}".encode()).hexdigest()[:5]
    return f"{cluster}-master-{digest}"


def restored_replica_name(cluster: str, change_id: str) -> str:
    """The replica a restore-cluster change boots from its snapshot: a name no other flow's change gives
    (create and add use numbered slots), so a restore given another change's id never takes that change's
    VMs for its own."""
    return replica_name(cluster, change_id, "restore")


@dataclass(frozen=True)
class ClusterNames:
    """Names of the GCE resources a cluster owns (besides its replica VMs)."""

    cluster: str

    @property
    def tag(self) -> str:
        return f"{self.cluster}-master"

    @property
    def address(self) -> str:
        return f"{self.cluster}-master-ip"

    @property
    def health_check(self) -> str:
        return f"{self.cluster}-master-hc"

    @property
    def target_pool(self) -> str:
        return f"{self.cluster}-master-pool"

    @property
    def forwarding_rule(self) -> str:
        return f"{self.cluster}-master-lb"

    @property
    def firewall_etcd_peer(self) -> str:
        return f"{self.cluster}-etcd-peer"

    @property
    def firewall_etcd_client(self) -> str:
        return f"{self.cluster}-etcd-client"

    @property
    def firewall_apiserver(self) -> str:
        return f"{self.cluster}-apiserver"

    @property
    def pki_block(self) -> str:
        return f"{self.cluster}-pki"

    @property
    def spec_block(self) -> str:
        return f"{self.cluster}-spec"

    def labels(self, multizone: bool, quorum_reads: bool) -> dict[str, str]:
        return {
            LABEL_CLUSTER: self.cluster,
            LABEL_ROLE: ROLE_MASTER,
            LABEL_MULTIZONE: str(multizone).lower(),
            LABEL_QUORUM_READS: str(quorum_reads).lower(),
        }
