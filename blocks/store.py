"""The one store of a cluster's blocks: their names, loading, saving under the cluster lock, deleting.

Nothing else loads or saves a cluster's spec block (``<cluster>-spec``) or PKI block
(``<cluster>-pki``), or a snapshot storage block, by name: a name is written in one place
(:class:`haplane.core.topology.ClusterNames`: ``spec_block``, ``pki_block``, which the plans' step
descriptions use too), and a load's "there is none" is told from a failure here alone.

A block is saved whole. Two writers that each read it, change a field and save it lose one another's
change (a health check recording a zone outage, a flow recording the endpoint mode). So every save of
a cluster's blocks goes through :func:`update_under_lock`: it takes the cluster's lock
(:func:`haplane.cloud.locks.cluster_lock`; re-entrant, so a flow that holds it already just goes on), reads the
block again, applies the caller's change to what it read, and saves that.

:func:`update_spec` is that for the spec block; the PKI block's one writer (:func:`tasks.keys.save_pki`, which
also writes the keys to Secret Manager) takes the lock, reads with :func:`read_pki` and saves with
:func:`write_pki`, through :func:`haplane.core.scrub.call_carrying_secrets`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from blocks import delete_block_document
from blocks.cluster import ClusterSpec
from blocks.pki import ClusterPKI
from haplane.cloud.locks import cluster_lock
from haplane.cloud.snapshot_store import SnapshotStore
from haplane.core.scrub import call_carrying_secrets
from haplane.core.topology import ClusterNames

B = TypeVar("B")


def update_under_lock(
    cluster: str,
    read: Callable[[], B],
    write: Callable[[B], None],
    change: Callable[[B], B],
    wait_s: float | None = None,
) -> B:
    """Under the cluster's lock: ``write(change(read()))``; returns what was written. Raises
    :class:`haplane.cloud.locks.ClusterBusy` (nothing written) when another run keeps the lock ``wait_s`` s
    (None: ``haplane.cloud.locks.LOCK_WAIT_S``)."""
    with cluster_lock(cluster, wait_s):
        updated = change(read())
        write(updated)
        return updated


def _absent(exc: Exception) -> bool:
    return "Unable to find" in str(exc)  # how Prefect's Block.load says a block does not exist


# ---------------------------------------------------------------- the spec block


def read_spec(cluster: str) -> ClusterSpec | None:
    """The cluster's spec as saved now (None: there is none)."""
    try:
        return ClusterSpec.load(ClusterNames(cluster).spec_block)
    except ValueError as exc:
        if _absent(exc):
            return None
        raise


def load_spec(cluster: str) -> ClusterSpec:
    """The cluster's spec; a cluster without one is refused, naming the block and what to do."""
    spec = read_spec(cluster)
    if spec is None:
        raise ValueError(
            f"cluster {cluster!r} is unknown: no block {ClusterNames(cluster).spec_block!r} "
            "(create it with create-cluster)"
        )
    return spec


def spec_blocks() -> list[dict]:
    """The data of every cluster's spec block (no secrets in them): what ``haplane watch`` watches."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        docs = client.read_block_documents_by_type(ClusterSpec.get_block_type_slug(), include_secrets=False)
    return [dict(d.data) for d in docs]


def update_spec(
    cluster: str, change: Callable[[ClusterSpec | None], ClusterSpec], wait_s: float | None = None
) -> ClusterSpec:
    """Save ``change(spec as saved now)`` as the cluster's spec, under its lock (``change`` gets None when
    there is no spec yet, and returns the spec to save: a copy with its fields changed)."""
    block = ClusterNames(cluster).spec_block
    return update_under_lock(
        cluster, lambda: read_spec(cluster), lambda spec: spec.save(block, overwrite=True), change, wait_s
    )


def delete_spec(cluster: str) -> bool:
    """Delete the cluster's spec block; returns whether there was one."""
    return delete_block_document(ClusterNames(cluster).spec_block, ClusterSpec.get_block_type_slug())


# ---------------------------------------------------------------- the PKI block


def read_pki(cluster: str) -> ClusterPKI | None:
    """The cluster's PKI block as saved now (None: there is none)."""
    from prefect.exceptions import ObjectNotFound

    try:
        return ClusterPKI.load(ClusterNames(cluster).pki_block)
    except ObjectNotFound:
        return None
    except ValueError as exc:
        if _absent(exc):
            return None
        raise


def write_pki(block: ClusterPKI, overwrite: bool) -> None:
    """Save the PKI block (only :func:`tasks.keys.save_pki` calls this, under the cluster lock after a
    re-read), through the secret-scrubbing wrapper: a failure's message never quotes the document."""
    name = ClusterNames(block.cluster).pki_block
    call_carrying_secrets(f"saving block {name}", (), block.save, name, overwrite=overwrite)


def delete_pki(cluster: str) -> bool:
    """Delete the cluster's PKI block; returns whether there was one."""
    return delete_block_document(ClusterNames(cluster).pki_block, ClusterPKI.get_block_type_slug())


# ---------------------------------------------------------------- snapshot storage


def snapshot_store(storage: str | None) -> SnapshotStore:
    """Where the cluster's snapshots are kept: the storage block ``<type-slug>/<name>`` (None: the local
    default directory)."""
    from prefect.filesystems import LocalFileSystem

    from haplane.cloud.snapshot_store import default_dir
    from haplane.cloud.snapshots import SnapshotError

    if not storage:
        return SnapshotStore(LocalFileSystem(basepath=str(default_dir())), f"local {default_dir()}")
    if "/" not in storage:
        raise SnapshotError(
            f"storage {storage!r}: name a block as '<type>/<name>', e.g. "
            "'gcs-bucket/prod-snapshots' or 'local-file-system/snapshots'"
        )
    from prefect.blocks.core import Block

    try:
        import prefect_gcp.cloud_storage  # noqa: F401  (registers the gcs-bucket block type)
    except ImportError:
        pass
    try:
        block = Block.load(storage)
    except (ValueError, Exception) as e:  # ObjectNotFound, or an unknown type slug
        raise SnapshotError(
            f"cannot load the snapshot storage block {storage!r}: {e}; create it in the "
            "Prefect UI (Blocks) or pass another storage="
        ) from None
    return SnapshotStore(block, storage)
