"""Snapshots without etcd: the JSON stream and the local store's retention (snapshots of a real etcd are tests/test_snapshots.py)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from prefect.filesystems import LocalFileSystem

from haplane.cloud import snapshots as snap
from haplane.cloud.etcd import json_stream
from haplane.cloud.snapshot_store import SnapshotStore


def test_json_stream_splits_objects_however_they_arrive():
    objs = [{"result": {"blob": "QUJD", "remaining_bytes": "3"}}, {"result": {"blob": "REVG"}}]
    text = "".join(json.dumps(o) for o in objs)  # back to back, no newline
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert list(json_stream(chunks)) == objs
    with pytest.raises(ValueError, match="inside a JSON object"):
        list(json_stream([text[:-3]]))


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
