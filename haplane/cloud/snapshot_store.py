"""Where sealed snapshots are kept: a Prefect storage block (loaded by :func:`blocks.store.snapshot_store`).

* prefect-gcp's ``GcsBucket`` (real use): objects ``<bucket_folder>/<cluster>/<id>.snap`` and a
  ``.json`` beside each with its metadata, written with google-cloud-storage through the block's
  ``GcpCredentials``. With ``STORAGE_EMULATOR_HOST`` set (a local GCS API emulator) the client is
  anonymous, as google-cloud-storage itself is against an emulator.
* Prefect's ``LocalFileSystem`` (one machine): files under its ``basepath``.

A block is named ``<type-slug>/<name>`` (``gcs-bucket/prod-snapshots``, ``local-file-system/snaps``).
Without a name, snapshots go to ``$HAPLANE_SNAPSHOT_DIR`` or ``$PREFECT_HOME/haplane-snapshots``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from haplane import settings
from haplane.cloud.snapshots import SnapshotError
from haplane.core.snapshot_meta import SnapshotMeta

SNAP_SUFFIX = ".snap"
META_SUFFIX = ".json"


def default_dir() -> Path:
    explicit = settings.snapshot_dir()
    if explicit is not None:
        return explicit
    home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    return Path(home) / "haplane-snapshots"


class SnapshotStore:
    """Objects of one storage block: put, get, list, delete, and a URL a VM can fetch from."""

    def __init__(self, block: Any, label: str) -> None:
        self.block = block
        self.label = label
        self._gcs = type(block).__name__ == "GcsBucket"
        self._bucket = None

    # -- the two kinds of block

    def _gcs_bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(
                    credentials=AnonymousCredentials(), project=self.block.gcp_credentials.project or "haplane"
                )
            else:
                client = self.block.gcp_credentials.get_cloud_storage_client()
            self._bucket = client.bucket(self.block.bucket)
        return self._bucket

    def _gcs_name(self, path: str) -> str:
        folder = (self.block.bucket_folder or "").strip("/")
        return f"{folder}/{path}" if folder else path

    def _local(self, path: str) -> Path:
        return Path(self.block.basepath or ".").expanduser() / path

    def put(self, path: str, data: bytes) -> None:
        if self._gcs:
            self._gcs_bucket().blob(self._gcs_name(path)).upload_from_string(data)
        else:
            target = self._local(path)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(target)

    def get(self, path: str) -> bytes:
        try:
            if self._gcs:
                return self._gcs_bucket().blob(self._gcs_name(path)).download_as_bytes()
            return self._local(path).read_bytes()
        except Exception as e:  # NotFound, OSError
            raise SnapshotError(f"cannot read {self.url(path)}: {type(e).__name__}: {e}") from None

    def list(self, folder: str) -> list[str]:
        """Paths (relative to the block) of the objects in ``folder``."""
        if self._gcs:
            prefix = self._gcs_name(folder.strip("/") + "/")
            strip = len(self._gcs_name(""))
            return sorted(b.name[strip:] for b in self._gcs_bucket().list_blobs(prefix=prefix))
        base = self._local(folder)
        if not base.is_dir():
            return []
        return sorted(
            f"{folder.strip('/')}/{p.name}" for p in base.iterdir() if p.is_file() and not p.name.endswith(".part")
        )

    def delete(self, path: str) -> None:
        if self._gcs:
            from google.api_core.exceptions import NotFound

            try:
                self._gcs_bucket().blob(self._gcs_name(path)).delete()
            except NotFound:
                pass
        else:
            self._local(path).unlink(missing_ok=True)

    def url(self, path: str) -> str:
        if self._gcs:
            return f"gs://{self.block.bucket}/{self._gcs_name(path)}"
        return self._local(path).resolve().as_uri()

    # -- snapshots

    @staticmethod
    def snap_path(cluster: str, sid: str) -> str:
        return f"{cluster}/{sid}{SNAP_SUFFIX}"

    def save(self, meta: SnapshotMeta, sealed: bytes) -> str:
        """The sealed snapshot first, then its metadata (a listing never shows a half-written one)."""
        path = self.snap_path(meta.cluster, meta.snapshot_id)
        self.put(path, sealed)
        self.put(path[: -len(SNAP_SUFFIX)] + META_SUFFIX, meta.to_json().encode())
        return self.url(path)

    def snapshots(self, cluster: str) -> list[SnapshotMeta]:
        """The cluster's snapshots, newest first (from their metadata objects)."""
        out = []
        names = self.list(cluster)
        present = set(names)
        for name in names:
            if not name.endswith(META_SUFFIX):
                continue
            snap = name[: -len(META_SUFFIX)] + SNAP_SUFFIX
            if snap not in present:
                continue
            try:
                out.append(SnapshotMeta.from_json(self.get(name), where=self.url(snap)))
            except (ValueError, TypeError, SnapshotError):
                continue  # an unreadable metadata object is not a snapshot we can offer
        return sorted(out, key=lambda m: m.taken_at, reverse=True)

    def load_sealed(self, meta: SnapshotMeta) -> bytes:
        return self.get(self.snap_path(meta.cluster, meta.snapshot_id))

    def remove(self, meta: SnapshotMeta) -> None:
        """Metadata first (it stops being offered), then the data."""
        path = self.snap_path(meta.cluster, meta.snapshot_id)
        self.delete(path[: -len(SNAP_SUFFIX)] + META_SUFFIX)
        self.delete(path)


def fetch_url(url: str) -> bytes:
    """Bytes at a ``file://`` or ``gs://`` URL (what a restoring VM is given)."""
    if url.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(url).path)).read_bytes()
    if url.startswith("gs://"):
        from google.cloud import storage

        bucket, _, name = url[len("gs://") :].partition("/")
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(credentials=AnonymousCredentials(), project="haplane")
        else:
            client = storage.Client()  # the VM's service account
        return client.bucket(bucket).blob(name).download_as_bytes()
    raise SnapshotError(f"cannot fetch {url!r}: only file:// and gs:// URLs")
