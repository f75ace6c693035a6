"""Snapshots of real etcd (mutual TLS): streamed, verified by a trial restore, sealed, stored in a
prefect-gcp GcsBucket served by a real GCS API emulator (and in a LocalFileSystem), pruned."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from prefect.filesystems import LocalFileSystem
from prefect_gcp.cloud_storage import GcsBucket

from haplane import snapshots as snap
from haplane.etcd import json_stream
from haplane.node import find_etcd
from haplane.snapshot_store import SnapshotStore, fetch_url

pytestmark = pytest.mark.timeout(180)


def _take(cluster, path) -> bytes:
    client = cluster.client()
    client.snapshot(path)
    return path.read_bytes()


def test_json_stream_splits_objects_however_they_arrive():
    objs = [{"result": {"blob": "QUJD", "remaining_bytes": "3"}}, {"result": {"blob": "REVG"}}]
    text = "".join(json.dumps(o) for o in objs)  # back to back, no newline
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert list(json_stream(chunks)) == objs
    with pytest.raises(ValueError, match="inside a JSON object"):
        list(json_stream([text[:-3]]))


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


def test_local_file_system_store_and_retention(tmp_path):
    store = SnapshotStore(LocalFileSystem(basepath=str(tmp_path / "snaps")), "local")
    now = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    metas = []
    for hours in (0, 1, 2, 30, 200):
        taken = now - dt.timedelta(hours=hours)
        m = snap.SnapshotMeta(
            cluster="c",
            snapshot_id=snap.snapshot_id(taken, 100 - hours),
            revision=100 - hours,
            taken_at=taken.isoformat(),
            sha256="0" * 64,
            size=1,
        )
        store.save(m, b"sealed")
        metas.append(m)
    listed = store.snapshots("c")
    assert [m.revision for m in listed] == [100, 99, 98, 70, -100]
    assert listed[0].where.startswith("file://")

    drop = snap.to_prune(listed, snap.Retention(keep=3, max_age_s=48 * 3600), now)
    assert [m.revision for m in drop] == [70, -100]  # beyond 3, and the one older than 48 h
    drop = snap.to_prune(listed, snap.Retention(keep=10, max_age_s=1800), now)
    assert [m.revision for m in drop] == [99, 98, 70, -100]  # the newest is kept however old
    for m in drop:
        store.remove(m)
    assert [m.revision for m in store.snapshots("c")] == [100]
    with pytest.raises(ValueError):
        snap.Retention(keep=0)
