"""The one place a cluster's blocks are written: under the cluster lock, re-read just before writing.

A block is saved whole. Two writers that each read it, change a field and save it lose one another's
change (a health check recording a zone outage, a flow recording the endpoint mode). So every save of
a cluster's blocks goes through :func:`update_under_lock`: it takes the cluster's lock
(:func:`haplane.cloud.locks.cluster_lock`; re-entrant, so a flow that holds it already just goes on), reads the
block again, applies the caller's change to what it read, and saves that.

:func:`update_spec` is that for the spec block ``<cluster>-spec``; a save carrying secrets (the PKI
block) passes a ``write`` that goes through :func:`haplane.core.scrub.call_carrying_secrets`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from blocks.cluster import ClusterSpec
from haplane.cloud.locks import cluster_lock
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


def read_spec(cluster: str) -> ClusterSpec | None:
    """The cluster's spec as saved now (None: there is none)."""
    try:
        return ClusterSpec.load(ClusterNames(cluster).spec_block)
    except ValueError as exc:
        if "Unable to find" in str(exc):  # how Prefect's Block.load says a block does not exist
            return None
        raise


def update_spec(
    cluster: str, change: Callable[[ClusterSpec | None], ClusterSpec], wait_s: float | None = None
) -> ClusterSpec:
    """Save ``change(spec as saved now)`` as the cluster's spec, under its lock (``change`` gets None when
    there is no spec yet, and returns the spec to save: a copy with its fields changed)."""
    block = ClusterNames(cluster).spec_block
    return update_under_lock(
        cluster, lambda: read_spec(cluster), lambda spec: spec.save(block, overwrite=True), change, wait_s
    )
