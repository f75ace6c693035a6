"""Snapshot tasks: take a verified, sealed snapshot of a cluster's etcd; list, prune and show them.

No task here returns or logs key material: the snapshot key stays in the PKI block and
inside the task that seals or opens a snapshot.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
import time
from contextlib import closing
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.cluster import ClusterSpec
from blocks.store import snapshot_store
from haplane.cloud import snapshots as snap
from haplane.cloud.etcd import EndpointStatus, EtcdClient, EtcdTLS
from haplane.cloud.gce import Gce
from haplane.cloud.observe import etcd_look
from haplane.cloud.snapshot_store import SnapshotStore
from haplane.core.ownership import owned
from haplane.core.restore import ELECTIONS_SPANNED, Look, QuorumEvidence, settled
from haplane.core.topology import LABEL_CLUSTER, LABEL_UID, ClusterNames
from haplane.node.spec import client_url, find_etcd
from haplane.node.spec import election_s as node_election_s
from tasks.pki import operator_tls, snapshot_key
from tasks.steps import Change, checkpoint, probe

# the changes that start with a verified snapshot (create has nothing to save; delete removes the key)


class SnapshotFailed(RuntimeError):
    """A snapshot taken before a change failed: the change is stopped before it starts."""


def store_of(spec: ClusterSpec, storage: str | None = None) -> SnapshotStore:
    return snapshot_store(storage or spec.snapshot_storage)


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
    get_run_logger().info(
        "snapshot %s of %s: revision %d, %d bytes, %d keys restored in a trial etcd; stored at %s",
        meta.snapshot_id,
        spec.cluster,
        meta.revision,
        meta.size,
        checked.keys_served,
        where,
    )
    return snap.SnapshotMeta(**{**meta.__dict__, "where": where})


@probe(task_run_name="snapshot {spec.cluster}", timeout_seconds=1800)
def snapshot_now(spec: ClusterSpec, connection: str | None, storage: str | None = None) -> snap.SnapshotMeta:
    """Take, verify, seal and store one snapshot; then prune by the cluster's retention."""
    from blocks.cluster import resolve_gce

    tls = operator_tls(spec.cluster, connection)
    if tls is None:
        raise snap.SnapshotError(f"cluster {spec.cluster!r} has no PKI block {ClusterNames(spec.cluster).pki_block!r}")
    store = store_of(spec, storage)
    meta = take_snapshot(resolve_gce(connection), spec, tls, snapshot_key(spec.cluster, connection), store)
    prune(spec, store)
    return meta


def prune(spec: ClusterSpec, store: SnapshotStore) -> list[str]:
    drop = snap.to_prune(store.snapshots(spec.cluster), retention_of(spec), dt.datetime.now(dt.UTC))
    for m in drop:
        store.remove(m)
    if drop:
        get_run_logger().info(
            "pruned %d snapshot(s) of %s: %s", len(drop), spec.cluster, ", ".join(m.snapshot_id for m in drop)
        )
    return [m.snapshot_id for m in drop]


@checkpoint(retries=0, timeout_seconds=1800)
def snapshot_for_change(change: Change, step: str, spec: ClusterSpec) -> dict:
    """One verified snapshot per change: a resumed run of the change finds it and does not take another.
    Returns the snapshot's metadata as plain JSON (a checkpoint holds JSON, not classes: see tasks/results.py)."""
    return dataclasses.asdict(snapshot_now.fn(spec, change.connection))


def snapshot_before_change(
    change: Change, spec: ClusterSpec, action: str, skip: bool, step: str = "snapshot-before"
) -> str | None:
    """Every membership change starts with a verified snapshot (one per change id: a resumed run does
    not take another); one that fails stops the change
    (nothing changed yet) unless the caller passed ``skip_snapshot=True``. Returns the snapshot id."""
    logger = get_run_logger()
    if skip:
        logger.warning("%s on %s WITHOUT a snapshot first (skip_snapshot=True)", action, spec.cluster)
        return None
    try:
        meta = snap.SnapshotMeta(**snapshot_for_change(change, step, spec))
    except Exception as exc:  # any failure: say so and stop before changing anything
        raise SnapshotFailed(
            f"{action} on {spec.cluster!r} stopped before changing anything: the snapshot taken before every "
            f"change failed ({type(exc).__name__}: {exc}). Fix that (see the snapshot task's log), or run again "
            f"with skip_snapshot=True to change the cluster without a fresh snapshot."
        ) from exc
    logger.info("snapshot before %s: %s (revision %d)", action, meta.snapshot_id, meta.revision)
    return meta.snapshot_id


def snapshot_rows(metas: list[snap.SnapshotMeta], now: dt.datetime) -> list[dict[str, str]]:
    return [
        {
            "time": m.taken_at[:19].replace("T", " ") + " UTC",
            "age": _age(m.age_s(now)),
            "revision": str(m.revision),
            "size": f"{m.size / 1024:.0f} KiB",
            "members": str(m.members or "-"),
            "haplane": m.haplane_version,
            "where": m.where,
        }
        for m in metas
    ]


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
    create_table_artifact(
        rows, key=f"{cluster}-snapshots", description=f"etcd snapshots of {cluster} in {store.label}, newest first"
    )
    return rows


def newest_snapshot_age(cluster: str, spec: ClusterSpec) -> float | None:
    """Seconds since the newest snapshot (None: none, or the storage cannot be read)."""
    try:
        metas = store_of(spec).snapshots(cluster)
    except Exception:  # storage unreachable: the caller reports "unknown"
        return None
    return metas[0].age_s(dt.datetime.now(dt.UTC)) if metas else None


@probe(task_run_name="check the snapshot to restore", timeout_seconds=1800)
def check_restorable(
    spec: ClusterSpec, snapshot_id: str | None, storage: str | None = None, connection: str | None = None
) -> snap.SnapshotMeta:
    """The chosen (or newest) snapshot, fetched, decrypted and restored into a throw-away etcd: a restore
    that cannot work is refused here, before anything is removed."""
    store = store_of(spec, storage)
    metas = store.snapshots(spec.cluster)
    if not metas:
        raise snap.SnapshotError(
            f"no snapshot of {spec.cluster!r} in {store.label}: nothing to restore from; nothing was changed"
        )
    if snapshot_id is None:
        meta = metas[0]
    else:
        meta = next((m for m in metas if m.snapshot_id == snapshot_id), None)
        if meta is None:
            raise snap.SnapshotError(
                f"no snapshot {snapshot_id!r} of {spec.cluster!r} in {store.label}; there are: "
                + ", ".join(m.snapshot_id for m in metas[:10])
            )
    try:
        sealed_meta, db = snap.unseal(
            store.load_sealed(meta), snapshot_key(spec.cluster, connection, create=False), spec.cluster
        )
        if sealed_meta.snapshot_id != meta.snapshot_id or sealed_meta.sha256 != meta.sha256:
            raise snap.SnapshotInvalid(f"{meta.where} holds snapshot {sealed_meta.snapshot_id}, not {meta.snapshot_id}")
        checked = snap.verify(db, find_etcd(), expect_revision=meta.revision)
    except snap.SnapshotError as exc:
        raise snap.SnapshotInvalid(
            f"snapshot {meta.snapshot_id} at {meta.where} cannot be restored: {exc}. "
            f"Nothing was changed; pick another with snapshot=<id>"
        ) from None
    get_run_logger().info(
        "snapshot %s decrypts and restores (%d keys in a trial etcd)", meta.snapshot_id, checked.keys_served
    )
    return meta


def look_at_etcd(
    gce: Gce, spec: ClusterSpec, tls: EtcdTLS | None, uid: str | None, ignore: tuple[str, ...] = ()
) -> tuple[tuple[tuple[str, str], ...], Look, dict[str, str]]:
    """One look at the etcd of every running VM of the cluster (its own: uid-stamped), by VM name: status
    (alive, credentials accepted, leader, store revision), a linearizable read, and the member list each
    member itself last knew. Returns (the VMs with their GCE status, the look, name -> internal IP)."""
    instances = [
        i
        for i in gce.list_instances(gce.list_zones(spec.region), labels={LABEL_CLUSTER: spec.cluster})
        if owned(i.labels.get(LABEL_UID), uid) and i.name not in ignore
    ]
    vms = tuple((i.name, i.status) for i in instances)
    running = {client_url(i.internal_ip): i.name for i in instances if i.status == "RUNNING" and i.internal_ip}
    ips = {i.name: i.internal_ip for i in instances if i.internal_ip}
    at = time.monotonic()
    if not running or tls is None:
        why = (
            ()
            if tls
            else tuple(
                f"{n}: no operator certificate (the PKI block {ClusterNames(spec.cluster).pki_block} is missing)"
                for n in running.values()
            )
        )
        return vms, Look(at_s=at, unreachable=why), ips
    with closing(EtcdClient(list(running), tls=tls, timeout=2.0)) as client:
        return vms, etcd_look(client, running, at), ips


@probe(task_run_name="is etcd quorum of {spec.cluster} lost")
def observe_quorum(
    spec: ClusterSpec, connection: str | None, ignore: tuple[str, ...] = (), looks: int = 6, snapshot_voters: int = 0
) -> tuple[QuorumEvidence, dict[str, str]]:
    """Look at every running replica's etcd ``looks`` times, spread over :data:`ELECTIONS_SPANNED` election
    timeouts (one look may fall in an election), for :func:`haplane.core.restore.quorum_view`; with the internal IP
    of each VM. ``ignore``: a restore's own replicas. Stops early once a member serves a read."""
    from blocks.cluster import resolve_gce
    from tasks.cluster import gce_footprint
    from tasks.steps import cluster_uid

    gce, tls, uid = resolve_gce(connection), operator_tls(spec.cluster, connection), cluster_uid(spec.cluster)
    election_s = node_election_s(spec.etcd_heartbeat_ms)
    interval = ELECTIONS_SPANNED * election_s / max(1, looks - 1)
    taken: list[Look] = []
    vms: tuple[tuple[str, str], ...] = ()
    ips: dict[str, str] = {}
    for i in range(looks):
        if i:
            time.sleep(max(0.0, taken[-1].at_s + interval - time.monotonic()))
        vms, look, ips = look_at_etcd(gce, spec, tls, uid, ignore)
        taken.append(look)
        evidence = QuorumEvidence(
            vms=vms,
            footprint_seen=True,
            looks=tuple(taken),
            snapshot_voters=snapshot_voters,
            election_s=election_s,
            ignore=ignore,
        )
        if settled(evidence):  # a read served, or too few seen without a leader: more looks cannot make it lost
            break
    seen = bool(vms) or bool(gce_footprint(spec.cluster, spec.region, connection, ours_only=True))
    return QuorumEvidence(
        vms=vms,
        footprint_seen=seen,
        looks=tuple(taken),
        snapshot_voters=snapshot_voters,
        election_s=election_s,
        ignore=ignore,
    ), ips


@checkpoint(retries=0, task_run_name="{step}", timeout_seconds=1800)
def save_member_snapshot(change: Change, step: str, spec: ClusterSpec, name: str, ip: str) -> dict:
    """A snapshot of one member's local store (etcd serves it without quorum: what a member of a cluster
    that lost quorum holds), verified by a trial restore, sealed and stored like any other. Checkpointed:
    a resumed run finds it. Plain JSON (no key material): where it is, its id, sha256 and revision."""

    tls = operator_tls(spec.cluster, change.connection)
    if tls is None:
        raise snap.SnapshotError(f"cluster {spec.cluster!r} has no PKI block {ClusterNames(spec.cluster).pki_block!r}")
    with tempfile.TemporaryDirectory(prefix="haplane-snapshot-") as tmp:
        path = Path(tmp) / "snapshot.db"
        with closing(EtcdClient([client_url(ip)], tls=tls, timeout=10.0)) as client:
            voting = sum(1 for m in client.local_members(client_url(ip)) if not m.is_learner)
            client.snapshot(path)
        db = path.read_bytes()
    meta = snap.describe(db, spec.cluster, members=voting)
    checked = snap.verify(db, find_etcd(), expect_revision=meta.revision)
    where = store_of(spec).save(meta, snap.seal(db, meta, snapshot_key(spec.cluster, change.connection)))
    get_run_logger().info(
        "snapshot %s of %s's own store (member %s): revision %d, %d keys restored in a trial etcd; stored at %s",
        meta.snapshot_id,
        spec.cluster,
        name,
        meta.revision,
        checked.keys_served,
        where,
    )
    return {"where": where, "snapshot_id": meta.snapshot_id, "sha256": meta.sha256, "revision": meta.revision}
