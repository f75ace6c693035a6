"""The fault matrix's restore cases (long, namespaced network: root): restore-cluster never tears down a
cluster on a view that could be wrong, and saves what the survivors hold before it deletes anything.

One 3-replica cluster (one VM per zone, each in its own network namespace) walks the cases:

- a change id that is a prefix of the live replicas' change label, and the create's own change id: refused
  (quorum holds), nothing sent;
- a connection to another project: refused before anything is looked at there, nothing sent;
- a partitioned minority: one member cut from its peers but reachable, the two others (with quorum) cut from
  the worker, by real nftables rules in the router namespace: unknown, refused, naming the two;
- an election: every peer link cut until the members answer without a leader, healed while the restore
  looks (after its second look): refused (a restore judging on one look would have called it lost);
- then a real loss (two VMs deleted by hand): the restore saves a verified snapshot of the survivor first,
  restores it (newer than the stored one: no key lost), deletes the deleted replicas' keys, and grows back to 3.

After each refusal: 3 VMs running, etcd's own member list names them, every key written is there, no
mutating call was sent. At the end: delete-cluster leaves nothing, and no key material is in Prefect's home.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from blocks.cluster import GceConnection
from blocks.store import snapshot_store
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.restore_cluster import restore_cluster
from flows.snapshot_cluster import snapshot_cluster
from haplane.cloud.etcd import EndpointStatus, EtcdClient, EtcdTLS
from haplane.cloud.gce import request_id
from haplane.cloud.secretstore import SecretStore
from haplane.node.spec import client_url
from haplane.testing import REGION, ZONES
from tasks.pki import load_cas
from tests.fixtures.poll import eventually
from tests.test_fault_matrix import _converged, _key_material, _leftovers, _members, _mutating

pytestmark = [pytest.mark.long, pytest.mark.usefixtures("prefect_api"), pytest.mark.timeout(1500)]

KEYS = 30


def _tls(cluster: str) -> EtcdTLS:
    return EtcdTLS.from_cas(load_cas(cluster))


def _leaderless(cluster: str, ips: list[str]) -> bool:
    """Every given member answers this worker and names no leader."""
    with EtcdClient([client_url(ip) for ip in ips], tls=_tls(cluster), timeout=2) as etcd:
        sts = etcd.statuses()
    return all(isinstance(s, EndpointStatus) and not s.leader_id for s in sts)


def _readable(cluster: str, ip: str) -> bool:
    with EtcdClient([client_url(ip)], tls=_tls(cluster), timeout=2) as etcd:
        return etcd.health(client_url(ip)).healthy


def _nothing_lost(cloud, cluster: str, names: list[str], keys: int = KEYS) -> None:
    """The cluster as it was: its VMs running, etcd's member list naming them, every key written there."""
    vms = _converged(cloud, cluster, 3)
    assert sorted(v.name for v in vms) == sorted(names)
    with EtcdClient([client_url(v.internal_ip) for v in vms], tls=_tls(cluster), timeout=5) as etcd:
        missing = [i for i in range(keys) if etcd.get(f"/k/{i}") != f"v{i}".encode()]
    assert missing == [], f"keys lost: {missing}"


class HealWhenLooking:
    """Heals every cut link while the restore looks at etcd: once its second look has listed the VMs (each
    look lists the region's zones, then each zone's instances, after the observation of the cluster that
    ends with the target pool) and ``delay_s`` more, so the second look saw no leader and a later one a
    leader. (A restore that looked once would have looked there, and judged on that one look.)"""

    def __init__(self, cloud, netns, looks: int = 2, delay_s: float = 1.5) -> None:
        self.cloud, self.netns, self.start = cloud, netns, len(cloud.admin.calls())
        self.looks, self.delay_s = looks, delay_s
        self.healed_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _listed(self) -> bool:
        methods = [c["method"] for c in self.cloud.admin.calls()[self.start :]]
        if "compute.targetPools.get" not in methods:
            return False
        after = methods[methods.index("compute.targetPools.get") :]
        starts = [i for i, m in enumerate(after) if m == "compute.regions.get"]
        return len(starts) >= self.looks and after[starts[self.looks - 1] :].count("compute.instances.list") >= len(
            ZONES
        )

    def _watch(self) -> None:
        while not self.stop.wait(0.02):
            if self._listed():
                self.stop.wait(self.delay_s)
                self.netns.heal_links()
                self.healed_at = time.monotonic()
                return

    def __enter__(self) -> HealWhenLooking:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        self.netns.heal_links()


def test_restore_refuses_every_view_that_could_be_wrong_then_saves_the_survivor_first(ns_cloud, prefect_api):
    cloud = ns_cloud
    netns = cloud.emulator.runtime.network
    cluster = f"rf-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    create_id = f"create-{cluster}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, change_id=create_id)
    names = sorted(r["replica"] for r in rows)
    ip = {r["replica"]: r["internal IP"] for r in rows}
    zone = {r["replica"]: r["zone"] for r in rows}
    with EtcdClient([client_url(i) for i in ip.values()], tls=_tls(cluster), timeout=5) as etcd:
        for i in range(KEYS):
            etcd.put(f"/k/{i}", f"v{i}")
    stored = snapshot_cluster(cluster=cluster)
    timings = {"create+snapshot": time.monotonic() - started}

    def refused(match: str, **kw) -> str:
        before = len(cloud.admin.calls())
        t0 = time.monotonic()
        with pytest.raises(Exception, match=match) as refusal:  # noqa: PT011 - the message is what a person reads
            restore_cluster(cluster=cluster, **kw)
        timings[kw.get("change_id") or kw.get("connection") or "refusal"] = time.monotonic() - t0
        assert _mutating(cloud.admin.calls()[before:]) == [], "a refused restore sent a mutating call"
        return str(refusal.value)

    # A prefix of every live replica's change label, and the create's own change id (as its plan artifact
    # shows it): neither makes those replicas the restore's own, so quorum is checked, and it holds.
    refused("still has etcd quorum", change_id="create")
    refused("still has etcd quorum", change_id=create_id)
    _nothing_lost(cloud, cluster, names)

    # A connection to another project: what GCE shows there is not the cluster.
    GceConnection(project="someone-else", endpoint=cloud.emulator.url).save("elsewhere", overwrite=True)
    refused(
        "lives in project .* but the connection points at project 'someone-else'.*nothing was changed",
        connection="elsewhere",
    )
    assert [c for c in cloud.admin.calls() if "someone-else" in c["path"] and c["verb"] != "GET"] == []

    # A partitioned minority: a is cut from its peers but answers the worker (without a leader); b and c
    # keep quorum but the worker cannot reach them.
    a, b, c = names
    netns.cut_links([(ip[a], ip[b]), (ip[a], ip[c]), (netns.host_ip, ip[b]), (netns.host_ip, ip[c])])
    try:
        eventually(lambda: _leaderless(cluster, [ip[a]]), 30, f"{a} answers without a leader")
        why = refused("cannot tell whether .* lost etcd quorum", change_id="restore-minority")
        assert f"{b} (unreachable" in why and f"{c} (unreachable" in why and "partition" in why, why
    finally:
        netns.heal_links()
    eventually(lambda: _readable(cluster, ip[a]), 60, f"{a} serves reads again after the partition")
    _nothing_lost(cloud, cluster, names)

    # An election: every peer link cut until all three answer without a leader; healed while the restore
    # looks, so a leader is elected while it looks.
    netns.cut_links([(ip[a], ip[b]), (ip[a], ip[c]), (ip[b], ip[c])])
    eventually(lambda: _leaderless(cluster, list(ip.values())), 30, "every member answers without a leader")
    with HealWhenLooking(cloud, netns) as healer:
        why = refused("still has etcd quorum|cannot tell whether", change_id="restore-election")
    assert healer.healed_at is not None, "the restore never looked at etcd"
    print(f"election case refused with: {why[:300]}")
    eventually(lambda: all(_readable(cluster, i) for i in ip.values()), 60, "every member serves reads again")
    _nothing_lost(cloud, cluster, names)

    # A real loss: two VMs deleted by hand after more writes than the stored snapshot holds. The survivor's
    # store is saved (verified) before anything is deleted and, being newer, restored: no key is lost.
    with EtcdClient([client_url(i) for i in ip.values()], tls=_tls(cluster), timeout=5) as etcd:
        for i in range(KEYS, 2 * KEYS):
            etcd.put(f"/k/{i}", f"v{i}")
    for gone in (a, b):
        cloud.gce.wait(cloud.gce.delete_instance(zone[gone], gone, rid=request_id(cluster, "by-hand", gone)))
    secrets = SecretStore.for_gce(cloud.gce)
    assert secrets.list(cluster, a), "the deleted replica's keys should still be in Secret Manager"
    t0 = time.monotonic()
    rows = restore_cluster(cluster=cluster, change_id="restore-real")
    timings["restore"] = time.monotonic() - t0
    assert len(rows) == 3 and all(r["health"] == "healthy" for r in rows), rows
    new = sorted(r["replica"] for r in rows)
    assert set(new).isdisjoint(names)
    _nothing_lost(cloud, cluster, new, keys=2 * KEYS)
    assert sorted(m["name"] for m in _members(cluster, [r["internal IP"] for r in rows])) == new
    for old in names:  # the deleted replicas' and the removed survivor's private keys went with them
        assert secrets.list(cluster, old) == [], f"{old}'s keys are left in Secret Manager"
    saved = [m for m in snapshot_store(None).snapshots(cluster) if m.snapshot_id != stored["snapshot"]]
    assert saved and saved[0].revision > stored["revision"], "no snapshot of the survivor was saved"

    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == [] and load_cas(cluster) is None
    assert _key_material(Path(prefect_api.home)) == []
    print(
        "restore fault cases, seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f"; in all {time.monotonic() - started:.1f}"
    )
