"""A sealed snapshot's format, sealing and opening one: the one implementation, for the workers and for a VM.

The format::

    MAGIC | u32 header length (big-endian) | header JSON | 12-byte nonce | AES-256-GCM ciphertext + tag

with everything before the nonce authenticated. The header is the snapshot's metadata
(:class:`haplane.core.snapshot_meta.SnapshotMeta` as JSON).

Standard library and ``cryptography`` only, and no import of haplane: the startup script of a real GCE
VM (:mod:`haplane.node.startup`) embeds this file's source verbatim and runs it with the VM's python3
and Debian's python3-cryptography, as ``python3 - SEALED KEYFILE OUT SHA256 SNAPSHOT_ID``: open SEALED
with the base64 key in KEYFILE, check it is snapshot SNAPSHOT_ID whose plain sha256 is SHA256, and
write it to OUT (a new file, mode 0600). Any failure exits non-zero naming the problem, and writes
nothing. The emulator's VMs open it with :func:`open_sealed` too (:mod:`haplane.node.restore_boot`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"HAPLANE-ETCD-SNAPSHOT-1\n"
NONCE_BYTES = 12
KEY_BYTES = 32
TAG_BYTES = 16
SHA256_TRAILER = 32
MAX_HEADER = 65536


class SnapshotError(RuntimeError):
    """A snapshot could not be taken, stored or read."""


class SnapshotInvalid(SnapshotError):
    """A snapshot file is corrupted, truncated, from another cluster, or does not restore."""


def key_bytes(key_b64: str) -> bytes:
    """The snapshot key (base64) as the 32 bytes AES-256-GCM takes."""
    key = base64.b64decode(key_b64)
    if len(key) != KEY_BYTES:
        raise SnapshotError(f"the snapshot key must be {KEY_BYTES} bytes (base64), not {len(key)}")
    return key


def seal(db: bytes, header_json: bytes, key_b64: str) -> bytes:
    """``db`` encrypted with the key, behind its header (authenticated with it)."""
    prefix = MAGIC + struct.pack(">I", len(header_json)) + header_json
    nonce = os.urandom(NONCE_BYTES)
    return prefix + nonce + AESGCM(key_bytes(key_b64)).encrypt(nonce, db, prefix)


def split(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """The parts of a sealed snapshot: the authenticated prefix (magic, length, header), the nonce, and
    the ciphertext with its tag."""
    if not blob.startswith(MAGIC):
        raise SnapshotInvalid("not a haplane snapshot (bad magic): the file is corrupted or of another kind")
    if len(blob) < len(MAGIC) + 4:
        raise SnapshotInvalid("snapshot truncated inside its header")
    (n,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4 + n
    if n > MAX_HEADER or len(blob) < start + NONCE_BYTES + TAG_BYTES:
        raise SnapshotInvalid("snapshot truncated: shorter than its header says")
    return blob[:start], blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :]


def header(blob: bytes) -> dict:
    """The clear-text metadata of a sealed snapshot (not yet authenticated: use :func:`open_sealed`)."""
    prefix = split(blob)[0]
    try:
        meta = json.loads(prefix[len(MAGIC) + 4 :])
    except ValueError as e:
        raise SnapshotInvalid(f"snapshot header is not valid metadata ({e})") from None
    if not isinstance(meta, dict):
        raise SnapshotInvalid("snapshot header is not valid metadata (not a JSON object)")
    return meta


def check_trailer(db: bytes) -> None:
    """etcd appends sha256(file) to a snapshot: a truncated or altered file fails here."""
    if len(db) <= SHA256_TRAILER:
        raise SnapshotInvalid(f"snapshot too short ({len(db)} bytes) to be an etcd snapshot")
    if hashlib.sha256(db[:-SHA256_TRAILER]).digest() != db[-SHA256_TRAILER:]:
        raise SnapshotInvalid("etcd snapshot's sha256 trailer does not match: truncated or corrupted")


def open_sealed(blob: bytes, key_b64: str) -> tuple[dict, bytes]:
    """Decrypt and check a sealed snapshot: authentic, complete, its size and sha256 as its header
    records, etcd's own trailer intact. Returns the header and the plain snapshot."""
    meta = header(blob)
    prefix, nonce, body = split(blob)
    try:
        db = AESGCM(key_bytes(key_b64)).decrypt(nonce, body, prefix)
    except InvalidTag:
        raise SnapshotInvalid(
            f"snapshot {meta.get('snapshot_id')} does not decrypt with cluster {meta.get('cluster')!r}'s "
            "snapshot key: it is truncated or corrupted (or was sealed with another key)"
        ) from None
    if len(db) != meta.get("size") or hashlib.sha256(db).hexdigest() != meta.get("sha256"):
        raise SnapshotInvalid(f"snapshot {meta.get('snapshot_id')}: size or sha256 differ from its metadata")
    check_trailer(db)
    return meta, db


def main(argv: list[str]) -> None:
    """``SEALED KEYFILE OUT SHA256 SNAPSHOT_ID`` (what the startup script runs before etcd's first start)."""
    sealed, key_file, out, want_sha, want_id = argv

    def fail(why: str) -> None:
        sys.exit(f"haplane-node: ERROR: snapshot {want_id}: {why}; not restoring")

    with open(sealed, "rb") as f:
        blob = f.read()
    with open(key_file) as f:
        key = f.read().strip()
    try:
        meta, db = open_sealed(blob, key)
    except SnapshotError as e:
        fail(str(e))
    sha = hashlib.sha256(db).hexdigest()
    if sha != want_sha:
        fail(f"bad hash: its sha256 is {sha}, the restore asks for {want_sha}")
    if meta.get("snapshot_id") != want_id:
        fail(f"it is snapshot {meta.get('snapshot_id')}, not the one the restore asks for")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(db)
    print(f"haplane-node: snapshot {want_id} opened, sha256 {sha} checked", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
