"""snapshot-cluster: a verified, encrypted etcd snapshot of one cluster (scheduled per cluster).

Streams a snapshot from the etcd leader (``etcdctl snapshot save`` semantics), checks etcd's sha256
trailer and revision, restores it into a throw-away etcd that must answer, seals it with the
cluster's key (AES-256-GCM, the key in the cluster's PKI block) and stores it with its metadata in
the cluster's storage block (a GcsBucket, or a LocalFileSystem); then prunes by the retention
policy and shows the cluster's snapshots as the ``<cluster>-snapshots`` table artifact.
add-replica, remove-replica and replace-replica take one the same way before they change anything.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from blocks.store import load_spec
from flows.params import ClusterName, Connection, documented
from tasks.snapshots import publish_snapshots, snapshot_now, store_of


@flow(name="snapshot-cluster", log_prints=True)
@documented
def snapshot_cluster(
    cluster: ClusterName,
    connection: Connection = None,
    storage: Annotated[
        str | None,
        Field(
            description="Storage block '<type>/<name>' (e.g. gcs-bucket/prod-"
            "snapshots); empty: the cluster's (its spec block)"
        ),
    ] = None,
) -> dict[str, str | int]:
    spec = load_spec(cluster)
    meta = snapshot_now(spec, connection, storage)
    publish_snapshots(cluster, store_of(spec, storage))
    return {
        "snapshot": meta.snapshot_id,
        "revision": meta.revision,
        "size": meta.size,
        "where": meta.where,
        "taken_at": meta.taken_at,
    }
