"""Snapshots of real etcd (mutual TLS): streamed, verified by a trial restore, sealed, stored in a
prefect-gcp GcsBucket served by a real GCS API emulator (and in a LocalFileSystem), pruned."""

from __future__ import annotations

import pytest
from prefect_gcp.cloud_storage import GcsBucket

from haplane.cloud import snapshots as snap
from haplane.cloud.snapshot_store import SnapshotStore, fetch_url
from haplane.node.spec import find_etcd

pytestmark = pytest.mark.timeout(180)


def _take(cluster, path) -> bytes:
    client = cluster.client()
    client.snapshot(path)
    return path.read_bytes()


def test_snapshot_verified_sealed_and_stored_in_gcs(etcd_cluster_factory, tmp_path, gcs):
    cluster = etcd_cluster_factory(3, cluster="snap")
    client = cluster.client()
    for i in range(50):
        client.put(f"/k/{i}", f"v{i}")
    last = client.put("/k/last", "x")
    db = _take(cluster, tmp_path / "s.db")

    meta = snap.describe(db, "snap", members=3)
    assert meta.revision == last and meta.size == len(db)
    checked = snap.verify(db, find_etcd(), expect_revision=last)
    assert checked.keys_served == 51  # a real etcd started on the restored data answers with every key

    gcs.create_bucket("haplane-snapshots")
    block = GcsBucket(bucket="haplane-snapshots", bucket_folder="prod", gcp_credentials=gcs.credentials())
    store = SnapshotStore(block, "gcs-bucket/test")
    key = snap.new_key()
    sealed = snap.seal(db, meta, key)
    assert db[:4096] not in sealed  # encrypted at rest
    where = store.save(meta, sealed)
    assert where == f"gs://haplane-snapshots/prod/snap/{meta.snapshot_id}.snap"

    listed = store.snapshots("snap")
    assert [m.snapshot_id for m in listed] == [meta.snapshot_id] and listed[0].where == where
    assert listed[0].revision == last and listed[0].members == 3
    got_meta, got_db = snap.unseal(store.load_sealed(listed[0]), key, cluster="snap")
    assert got_db == db and got_meta.sha256 == meta.sha256
    assert fetch_url(where) == sealed  # what a restoring VM fetches

    store.remove(listed[0])
    assert store.snapshots("snap") == []


def test_corrupted_truncated_or_foreign_snapshots_are_refused(etcd_cluster_factory, tmp_path):
    cluster = etcd_cluster_factory(1, cluster="bad")
    cluster.client().put("/a", "1")
    db = _take(cluster, tmp_path / "s.db")
    meta = snap.describe(db, "bad", members=1)
    key = snap.new_key()
    sealed = snap.seal(db, meta, key)

    flipped = bytearray(sealed)
    flipped[len(sealed) // 2] ^= 0x01
    with pytest.raises(snap.SnapshotInvalid, match="does not decrypt"):
        snap.unseal(bytes(flipped), key)
    with pytest.raises(snap.SnapshotInvalid, match="truncated"):
        snap.unseal(sealed[: len(sealed) - 1000], key)
    with pytest.raises(snap.SnapshotInvalid, match="truncated"):
        snap.unseal(sealed[:40], key)
    with pytest.raises(snap.SnapshotInvalid, match="does not decrypt"):
        snap.unseal(sealed, snap.new_key())
    with pytest.raises(snap.SnapshotInvalid, match="of cluster 'bad', not 'other'"):
        snap.unseal(sealed, key, cluster="other")
    with pytest.raises(snap.SnapshotInvalid, match="not a haplane snapshot"):
        snap.unseal(b"garbage" * 100, key)
    # a plain snapshot cut short fails etcd's own sha256 trailer, before anything restores it
    with pytest.raises(snap.SnapshotInvalid, match="trailer"):
        snap.verify(db[:-100], find_etcd())
