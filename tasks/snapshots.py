"""Snapshot tasks: take a verified, sealed snapshot of a cluster's etcd; list, prune and show them.

No task here returns or logs key material: the snapshot key stays in the PKI block and
inside the task that seals or opens a snapshot.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from contextlib import closing
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.cluster import ClusterSpec
from blocks.pki import SNAPSHOT, block_name
from haplane import snapshots as snap
from haplane.etcd import EndpointStatus, EtcdClient, EtcdError, EtcdTLS
from haplane.gce import Gce
from haplane.node import client_url, find_etcd
from haplane.restore import EtcdProbe
from haplane.snapshot_store import SnapshotStore
from haplane.topology import LABEL_CLUSTER
from tasks.steps import Change, checkpoint, probe

# the changes that start with a verified snapshot (create has nothing to save; delete removes the key)
SNAPSHOT_BEFORE = frozenset({"add-replica", "remove-replica", "replace-replica"})


class SnapshotFailed(RuntimeError):
    """A snapshot taken before a change failed: the change is stopped before it starts."""


def snapshot_key(cluster: str, connection: str | None = None, create: bool = True) -> str:
    """The cluster's snapshot key (base64), read from Secret Manager. Made with the cluster's PKI; a
    cluster from before that gets it once, under the cluster lock (:func:`tasks.keys.ensure_keys`, which
    re-reads first: two first snapshots at once make one key). Only for use inside a task; never return it."""
    from tasks.keys import ensure_keys, read_block, read_keys, store_for

    block = read_block(cluster)
    if block is None:
        raise snap.SnapshotError(f"cluster {cluster!r} has no PKI block {block_name(cluster)!r}")
    store = store_for(connection)
    keys = read_keys(block, store, names=(SNAPSHOT,))
    if SNAPSHOT not in keys:
        if not create:
            raise snap.SnapshotError(f"cluster {cluster!r} has no snapshot key in block {block_name(cluster)!r}: "
                                     "it has never been snapshotted, so there is nothing to restore")
        ensure_keys(cluster, connection)
        keys = read_keys(read_block(cluster), store, names=(SNAPSHOT,))
    return keys[SNAPSHOT].get_secret_value()


def store_of(spec: ClusterSpec, storage: str | None = None) -> SnapshotStore:
    return SnapshotStore.load(storage or spec.snapshot_storage)


def retention_of(spec: ClusterSpec) -> snap.Retention:
    return snap.Retention(keep=spec.snapshot_keep, max_age_s=spec.snapshot_max_age_h * 3600.0)


def _leader_first(client: EtcdClient) -> tuple[list[str], int]:
    """Endpoints that answer, the leader's first (its store is the newest); and the voting members."""
    sts = [s for s in client.statuses() if isinstance(s, EndpointStatus)]
    sts.sort(key=lambda s: (not s.is_leader, -s.revision))
    voting = sum(1 for m in client.member_list() if not m.is_learner)
    return [s.endpoint for s in sts], voting


def take_snapshot(gce: Gce, spec: ClusterSpec, tls: EtcdTLS, key_b64: str, store: SnapshotStore) -> snap.SnapshotMeta:
    """Stream a snapshot from the leader, verify it by a trial restore, seal it and store it."""
    instances = gce.list_instances(gce.list_zones(spec.region), labels={LABEL_CLUSTER: spec.cluster})
    endpoints = [client_url(i.internal_ip) for i in instances if i.status == "RUNNING" and i.internal_ip]
    if not endpoints:
        raise snap.SnapshotError(f"cluster {spec.cluster!r} has no running replica to snapshot")
    with closing(EtcdClient(endpoints, tls=tls, timeout=10.0)) as client:
        ordered, voting = _leader_first(client)
        if not ordered:
            raise snap.SnapshotError(f"no etcd member of {spec.cluster!r} answers")
        with tempfile.TemporaryDirectory(prefix="haplane-snapshot-") as tmp:
            path = Path(tmp) / "snapshot.db"
            with closing(EtcdClient(ordered, tls=tls, timeout=10.0)) as ordered_client:
                # a linearizable read first: the member serving the snapshot is caught up with the leader
                if not ordered_client.health(ordered[0]).healthy:
                    raise snap.SnapshotError(f"etcd of {spec.cluster!r} has no quorum: a snapshot now could be stale")
                ordered_client.snapshot(path)
            db = path.read_bytes()
    meta = snap.describe(db, spec.cluster, members=voting)
    checked = snap.verify(db, find_etcd(), expect_revision=meta.revision)
    where = store.save(meta, snap.seal(db, meta, key_b64))
    get_run_logger().info("snapshot %s of %s: revision %d, %d bytes, %d keys restored in a trial etcd; stored at %s",
                          meta.snapshot_id, spec.cluster, meta.revision, meta.size, checked.keys_served, where)
    return snap.SnapshotMeta(**{**meta.__dict__, "where": where})


@probe(task_run_name="snapshot {spec.cluster}", timeout_seconds=1800)
def snapshot_now(spec: ClusterSpec, connection: str | None, storage: str | None = None) -> snap.SnapshotMeta:
    """Take, verify, seal and store one snapshot; then prune by the cluster's retention."""
    from blocks.cluster import resolve_gce
    from tasks.pki import operator_tls

    tls = operator_tls(spec.cluster, connection)
    if tls is None:
        raise snap.SnapshotError(f"cluster {spec.cluster!r} has no PKI block {block_name(spec.cluster)!r}")
    store = store_of(spec, storage)
    meta = take_snapshot(resolve_gce(connection), spec, tls, snapshot_key(spec.cluster, connection), store)
    prune(spec, store)
    return meta


def prune(spec: ClusterSpec, store: SnapshotStore) -> list[str]:
    drop = snap.to_prune(store.snapshots(spec.cluster), retention_of(spec), dt.datetime.now(dt.UTC))
    for m in drop:
        store.remove(m)
    if drop:
        get_run_logger().info("pruned %d snapshot(s) of %s: %s", len(drop), spec.cluster,
                              ", ".join(m.snapshot_id for m in drop))
    return [m.snapshot_id for m in drop]


@checkpoint(retries=0, task_run_name="snapshot {change.cluster} before {change.change_id}", timeout_seconds=1800)
def snapshot_for_change(change: Change, step: str, spec: ClusterSpec) -> snap.SnapshotMeta:
    """One verified snapshot per change: a resumed run of the change finds it and does not take another."""
    return snapshot_now.fn(spec, change.connection)


def snapshot_before_change(change: Change, spec: ClusterSpec, action: str, skip: bool) -> str | None:
    """Every membership change starts with a verified snapshot (one per change id: a resumed run does
    not take another); one that fails stops the change
    (nothing changed yet) unless the caller passed ``skip_snapshot=True``. Returns the snapshot id."""
    logger = get_run_logger()
    if skip:
        logger.warning("%s on %s WITHOUT a snapshot first (skip_snapshot=True)", action, spec.cluster)
        return None
    try:
        meta = snapshot_for_change(change, "snapshot-before", spec)
    except Exception as exc:  # any failure: say so and stop before changing anything
        raise SnapshotFailed(
            f"{action} on {spec.cluster!r} stopped before changing anything: the snapshot taken before every "
            f"change failed ({type(exc).__name__}: {exc}). Fix that (see the snapshot task's log), or run again "
            f"with skip_snapshot=True to change the cluster without a fresh snapshot.") from exc
    logger.info("snapshot before %s: %s (revision %d)", action, meta.snapshot_id, meta.revision)
    return meta.snapshot_id


def snapshot_rows(metas: list[snap.SnapshotMeta], now: dt.datetime) -> list[dict[str, str]]:
    return [{"time": m.taken_at[:19].replace("T", " ") + " UTC", "age": _age(m.age_s(now)),
             "revision": str(m.revision), "size": f"{m.size / 1024:.0f} KiB", "members": str(m.members or "-"),
             "haplane": m.haplane_version, "where": m.where} for m in metas]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@probe(task_run_name="publish snapshots of {cluster}")
def publish_snapshots(cluster: str, store: SnapshotStore) -> list[dict[str, str]]:
    """The cluster's snapshots as the table artifact ``<cluster>-snapshots``."""
    rows = snapshot_rows(store.snapshots(cluster), dt.datetime.now(dt.UTC))
    create_table_artifact(rows, key=f"{cluster}-snapshots",
                          description=f"etcd snapshots of {cluster} in {store.label}, newest first")
    return rows


def newest_snapshot_age(cluster: str, spec: ClusterSpec) -> float | None:
    """Seconds since the newest snapshot (None: none, or the storage cannot be read)."""
    try:
        metas = store_of(spec).snapshots(cluster)
    except Exception:  # storage unreachable: the caller reports "unknown"
        return None
    return metas[0].age_s(dt.datetime.now(dt.UTC)) if metas else None


def last_revision_seen(gce: Gce, spec: ClusterSpec, tls: EtcdTLS) -> int | None:
    """The highest store revision any surviving member reports (None: no member answers)."""
    instances = gce.list_instances(gce.list_zones(spec.region), labels={LABEL_CLUSTER: spec.cluster})
    endpoints = [client_url(i.internal_ip) for i in instances if i.status == "RUNNING" and i.internal_ip]
    if not endpoints:
        return None
    try:
        with closing(EtcdClient(endpoints, tls=tls, timeout=3.0)) as client:
            revs = [s.revision for s in client.statuses() if isinstance(s, EndpointStatus)]
    except EtcdError:
        return None
    return max(revs) if revs else None


@probe(task_run_name="check the snapshot to restore", timeout_seconds=1800)
def check_restorable(spec: ClusterSpec, snapshot_id: str | None, storage: str | None = None,
                     connection: str | None = None) -> snap.SnapshotMeta:
    """The chosen (or newest) snapshot, fetched, decrypted and restored into a throw-away etcd: a restore
    that cannot work is refused here, before anything is removed."""
    store = store_of(spec, storage)
    metas = store.snapshots(spec.cluster)
    if not metas:
        raise snap.SnapshotError(f"no snapshot of {spec.cluster!r} in {store.label}: nothing to restore from; "
                                 "nothing was changed")
    if snapshot_id is None:
        meta = metas[0]
    else:
        meta = next((m for m in metas if m.snapshot_id == snapshot_id), None)
        if meta is None:
            raise snap.SnapshotError(f"no snapshot {snapshot_id!r} of {spec.cluster!r} in {store.label}; there are: "
                                     + ", ".join(m.snapshot_id for m in metas[:10]))
    try:
        sealed_meta, db = snap.unseal(store.load_sealed(meta), snapshot_key(spec.cluster, connection, create=False),
                                   spec.cluster)
        if sealed_meta.snapshot_id != meta.snapshot_id or sealed_meta.sha256 != meta.sha256:
            raise snap.SnapshotInvalid(f"{meta.where} holds snapshot {sealed_meta.snapshot_id}, not {meta.snapshot_id}")
        checked = snap.verify(db, find_etcd(), expect_revision=meta.revision)
    except snap.SnapshotError as exc:
        raise snap.SnapshotInvalid(f"snapshot {meta.snapshot_id} at {meta.where} cannot be restored: {exc}. "
                                   f"Nothing was changed; pick another with snapshot=<id>") from None
    get_run_logger().info("snapshot %s decrypts and restores (%d keys in a trial etcd)", meta.snapshot_id,
                          checked.keys_served)
    return meta


@probe(task_run_name="is etcd quorum of {spec.cluster} lost")
def probe_quorum(spec: ClusterSpec, connection: str | None) -> EtcdProbe:
    """Ask every running replica's etcd: status (alive, credentials accepted, leader) and a linearizable read."""
    from blocks.cluster import resolve_gce
    from tasks.pki import operator_tls

    gce = resolve_gce(connection)
    instances = gce.list_instances(gce.list_zones(spec.region), labels={LABEL_CLUSTER: spec.cluster})
    endpoints = [client_url(i.internal_ip) for i in instances if i.status == "RUNNING" and i.internal_ip]
    tls = operator_tls(spec.cluster, connection)
    if not endpoints or tls is None:
        why = () if tls else (f"no operator certificate: the PKI block {block_name(spec.cluster)} is missing",)
        return EtcdProbe(running_vms=len(endpoints), unreachable=why, vms=len(instances))
    answering, with_leader, readable, unreachable = [], [], [], []
    with closing(EtcdClient(endpoints, tls=tls, timeout=3.0)) as client:
        for st in client.statuses():
            if isinstance(st, EndpointStatus):
                answering.append(st.endpoint)
                if st.leader_id:
                    with_leader.append(st.endpoint)
                if client.health(st.endpoint).healthy:
                    readable.append(st.endpoint)
            else:
                unreachable.append(f"{st.endpoint}: {st.reason}")
    return EtcdProbe(running_vms=len(endpoints), answering=tuple(answering), with_leader=tuple(with_leader),
                     readable=tuple(readable), unreachable=tuple(unreachable), vms=len(instances))
