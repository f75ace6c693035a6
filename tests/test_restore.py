"""Disaster recovery end to end: the emulator's VMs run real etcd with mutual TLS, snapshots go to a
prefect-gcp GcsBucket on a real GCS API emulator, flows run on a real Prefect server.

Keys are written, a snapshot taken, more keys written, two of three replica VMs deleted (their data
gone): restore-cluster brings the cluster back at 3 replicas with the same CA and endpoint, the keys up to
the snapshot present and the later ones absent. A corrupted snapshot is refused with nothing changed.
Every membership change takes and verifies a snapshot first; one that fails stops the change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import ssl
import time
import uuid

import httpx
import pytest
from prefect_gcp.cloud_storage import GcsBucket

from blocks.cluster import ClusterSpec
from blocks.store import snapshot_store
from flows.add_replica import add_replica
from flows.create_cluster import create_cluster
from flows.health_check import health_check
from flows.restore_cluster import restore_cluster
from flows.snapshot_cluster import snapshot_cluster
from haplane.cloud import snapshots as snap
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.cloud.gce import request_id
from haplane.core.plans import PlanRefused
from haplane.core.topology import LABEL_CLUSTER, ClusterNames
from haplane.node.spec import client_url, find_etcd
from haplane.testing import REGION, ZONES
from tasks.pki import load_cas
from tasks.snapshots import SnapshotFailed, snapshot_key
from tests.fixtures.cluster import api_through

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.timeout(900)]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


def _etcd(cloud, cluster: str) -> EtcdClient:
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    return EtcdClient(
        [client_url(v.internal_ip) for v in vms if v.status == "RUNNING"],
        tls=EtcdTLS.from_cas(load_cas(cluster)),
        timeout=5,
    )


def _use_storage(cluster: str, storage: str) -> None:
    block = ClusterNames(cluster).spec_block
    spec = ClusterSpec.load(block)
    spec.snapshot_storage = storage
    spec.save(block, overwrite=True)


def _artifact(prefect_api, key: str) -> dict:
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    found = httpx.post(f"{prefect_api.url}/artifacts/filter", json=body, timeout=10).json()
    assert found, f"no artifact {key}"
    return found[0]


@pytest.mark.long  # about a minute: .ci/run runs it with the long suites
def test_restore_after_losing_two_of_three_replicas(cloud, gcs, prefect_api):
    cluster = _name("dr")
    gcs.create_bucket("haplane-dr")
    GcsBucket(bucket="haplane-dr", bucket_folder="etcd", gcp_credentials=gcs.credentials()).save("dr", overwrite=True)
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    assert len(rows) == 3
    _use_storage(cluster, "gcs-bucket/dr")
    ca_before = load_cas(cluster).ca.cert_pem
    endpoint = rows[0]["endpoint IP"]

    with _etcd(cloud, cluster) as etcd:
        for i in range(20):
            etcd.put(f"/before/{i}", f"v{i}")
    taken = snapshot_cluster(cluster=cluster)
    assert taken["where"].startswith(f"gs://haplane-dr/etcd/{cluster}/")
    table = _artifact(prefect_api, f"{cluster}-snapshots")
    assert table["type"] == "table" and taken["snapshot"][:8] in table["data"] and "gs://haplane-dr" in table["data"]
    with _etcd(cloud, cluster) as etcd:
        for i in range(10):
            last = etcd.put(f"/after/{i}", f"w{i}")

    # the cluster has quorum: nothing to restore, nothing changed
    calls = len(cloud.mutating_calls())
    with pytest.raises(PlanRefused, match="still has etcd quorum"):
        restore_cluster(cluster=cluster)
    assert len(cloud.mutating_calls()) == calls

    # two of three VMs deleted by hand: their etcd data is gone, quorum is lost
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    for vm in vms[:2]:
        cloud.gce.wait(cloud.gce.delete_instance(vm.zone, vm.name, rid=request_id(cluster, "by-hand", vm.name)))
    lost_at = time.monotonic()
    with _etcd(cloud, cluster) as etcd:
        assert not etcd.health(etcd.endpoints[0]).healthy

    # the health check reports lost quorum with the newest snapshot's age, and never restores by itself
    calls = len(cloud.mutating_calls())
    health_check(cluster=cluster)
    assert len(cloud.mutating_calls()) == calls
    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:
        events = httpx.post(
            f"{prefect_api.url}/events/filter",
            timeout=10,
            json={"filter": {"event": {"name": ["haplane.cluster.quorum-lost"]}}, "limit": 50},
        ).json()["events"]
        found = [e for e in events if e["resource"]["prefect.resource.id"] == f"haplane.cluster.{cluster}"]
        time.sleep(0.5)
    assert found, "no haplane.cluster.quorum-lost event"
    assert 0 < found[0]["payload"]["newest_snapshot_age_s"] < 600

    # a newer snapshot that is corrupted (truncated) is refused, before anything is removed
    store = snapshot_store("gcs-bucket/dr")
    good = store.snapshots(cluster)[0]
    sealed = store.load_sealed(good)
    later = dt.datetime.now(dt.UTC)
    bad = dataclasses.replace(
        good,
        snapshot_id=snap.snapshot_id(later, good.revision + 5),
        taken_at=later.isoformat(),
        revision=good.revision + 5,
        where="",
    )
    store.save(bad, sealed[: len(sealed) // 2])
    calls = len(cloud.mutating_calls())
    with pytest.raises(snap.SnapshotInvalid, match="cannot be restored.*Nothing was changed"):
        restore_cluster(cluster=cluster)
    assert len(cloud.mutating_calls()) == calls
    assert len(cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})) == 1

    started = time.monotonic()
    rows = restore_cluster(cluster=cluster, snapshot=good.snapshot_id)
    restore_s = time.monotonic() - started

    assert len(rows) == 3 and all(r["health"] == "healthy" for r in rows), rows
    assert {r["replica"] for r in rows}.isdisjoint({v.name for v in vms})  # every replica is new
    assert load_cas(cluster).ca.cert_pem == ca_before
    assert rows[0]["endpoint IP"] == endpoint
    assert api_through(endpoint, ca_before).status_code == 200  # same endpoint IP, same CA
    with _etcd(cloud, cluster) as etcd:
        assert len([m for m in etcd.member_list() if not m.is_learner]) == 3
        assert all(etcd.get(f"/before/{i}") == f"v{i}".encode() for i in range(20))
        assert all(etcd.get(f"/after/{i}") is None for i in range(10))
        one = etcd.endpoints[0]
    # still mutual TLS: a client without a certificate of the etcd CA is refused at the handshake
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            f"{one}/v3/kv/range",
            json={"key": "AA=="},
            timeout=5,
            verify=ssl.create_default_context(cadata=load_cas(cluster).etcd_ca.cert_pem),
        )

    # the snapshot key went to Secret Manager, readable by the restored VM's service account: no
    # instance metadata holds it, nor any readback, log or artifact
    key = snapshot_key(cluster, create=False)
    instances = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    restored = next(v for v in instances if "haplane-etcd-restore" in v.metadata)
    assert restored.service_accounts
    assert all("haplane-snapshot-key" not in v.metadata and key not in json.dumps(v.metadata) for v in instances)
    ref = json.loads(restored.metadata["haplane-secrets"])["snapshot-key"]
    assert ref.startswith(f"projects/{cloud.gce.project}/secrets/{restored.name}-snapshot-key/versions/")
    logs = httpx.post(f"{prefect_api.url}/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_DESC"}, timeout=30).text
    arts = httpx.post(f"{prefect_api.url}/artifacts/filter", json={"limit": 200}, timeout=30).text
    assert key not in logs and key not in arts

    plan = _artifact(prefect_api, f"{cluster}-restore")["data"]
    # the replicas' Leases (controller-manager, scheduler, master leases) keep writing after the test's last
    # write: the revision the plan last saw is at least the test's
    seen = re.search(r"last seen (\d+)", plan)
    assert f"revision {good.revision}" in plan and seen and int(seen.group(1)) >= last, plan
    print(
        f"\nrestore figures: snapshot revision {good.revision}, last revision seen {last}: "
        f"{last - good.revision} revision(s) lost; snapshot {good.age_s(dt.datetime.now(dt.UTC)):.0f} s old; "
        f"restore-cluster took {restore_s:.1f} s (quorum lost {time.monotonic() - lost_at:.1f} s in all)"
    )


def test_a_snapshot_is_taken_before_a_change_and_a_failed_one_stops_it(shared_cloud, prefect_api):
    cloud = shared_cloud
    cluster = _name("pre")
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=1)
    store = snapshot_store(None)  # the default: $PREFECT_HOME/haplane-snapshots
    assert store.snapshots(cluster) == []

    # storage that cannot be used: the change stops before changing anything
    _use_storage(cluster, "gcs-bucket/no-such-block")
    calls = len(cloud.mutating_calls(cluster))
    with pytest.raises(SnapshotFailed, match="stopped before changing anything.*skip_snapshot=True"):
        add_replica(cluster=cluster)
    assert len(cloud.mutating_calls(cluster)) == calls
    assert len(cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})) == 1

    _use_storage(cluster, None)
    with _etcd(cloud, cluster) as etcd:
        rev = etcd.put("/before-change", "x")
    rows = add_replica(cluster=cluster)
    assert len(rows) == 2
    taken = store.snapshots(cluster)
    assert len(taken) == 1 and taken[0].revision >= rev and taken[0].members == 1
    # it was verified and sealed: it opens with the cluster's key and restores
    _, db = snap.unseal(store.load_sealed(taken[0]), snapshot_key(cluster, create=False), cluster)
    assert snap.verify(db, find_etcd()).keys_served >= 1
