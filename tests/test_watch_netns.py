"""haplane watch on the namespaced network (root, long): a watcher cut off from a cluster says the cluster
is unknown, and judges no replica, even one that really died meanwhile; once it can look again it does.

The cut is real: the cluster's firewalls for etcd's client port and the API server's port are deleted
(GCE's implied deny-ingress then drops the worker's packets), while the members still reach each other.
"""

from __future__ import annotations

import uuid

import pytest

from blocks.store import spec_blocks
from deployments.watch import cluster_locked, gce_factory, pki_reader
from haplane.cloud.gce import request_id
from haplane.core.topology import ClusterNames
from haplane.testing import REGION, ZONES
from haplane.watch import ALIVE, CLUSTER_UNKNOWN, RECOVERED, UNHEALTHY, Watcher
from tests.fixtures.cluster import PROJECT

pytestmark = [pytest.mark.long, pytest.mark.timeout(900), pytest.mark.usefixtures("prefect_api")]


def test_a_watcher_cut_off_from_a_cluster_reports_unknown_never_failed(ns_cloud):
    from flows.create_cluster import create_cluster

    cluster = f"wn-{uuid.uuid4().hex[:4]}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    assert [r["health"] for r in rows] == ["healthy"] * 3
    emitted = []
    watcher = Watcher(
        gce_factory(None),
        lambda: [d for d in spec_blocks() if d["cluster"] == cluster],
        pki_reader(None),
        cluster_locked,
        emit=lambda e: e.name != ALIVE and emitted.append(e),  # the heartbeat aside
        period=1,
    )
    watcher.tick()
    assert emitted == [], "a healthy cluster: no event"

    gce, names = ns_cloud.gce, ClusterNames(cluster)
    saved = {
        n: (gce.get_firewall(n), gce.description_of("firewall", n) or "")
        for n in (names.firewall_etcd_client, names.firewall_apiserver)
    }
    for n in saved:
        gce.wait(gce.delete_firewall(n, rid=request_id(cluster, "cut", n)))
    victim = sorted(gce.list_instances(ZONES, labels={"haplane-cluster": cluster}), key=lambda i: i.name)[0]
    ns_cloud.admin.kill_vm(PROJECT, victim.zone, victim.name)  # really dead, but unseen
    try:
        watcher.tick()
        watcher.tick()
        assert [e.name for e in emitted] == [CLUSTER_UNKNOWN], [(e.name, e.payload) for e in emitted]
        assert "could not be observed" in emitted[0].payload["reason"]
    finally:
        for n, (fw, description) in saved.items():
            gce.wait(
                gce.insert_firewall(
                    n,
                    ports=list(fw.ports),
                    source_ranges=list(fw.source_ranges),
                    source_tags=list(fw.source_tags),
                    target_tags=list(fw.target_tags),
                    description=description,
                    rid=request_id(cluster, "heal", n),
                )
            )
        for w in watcher.watched.values():
            w.close()
    emitted.clear()
    watcher.watched[cluster].pki_read = -1e9  # reconnect now, not after the PKI refresh period
    watcher.tick()
    assert [(e.name, e.replica) for e in emitted] == [(UNHEALTHY, victim.name)], emitted
    assert RECOVERED not in {e.name for e in emitted}
    for w in watcher.watched.values():
        w.close()
