"""Private keys in Secret Manager: delete-keys (one replica's, after its VM is deleted or found gone) and
delete-cluster-keys (every secret of the cluster: delete-cluster, once GCE holds nothing of it)."""

from __future__ import annotations

from prefect import get_run_logger

from haplane.cloud.secretstore import SecretStore
from haplane.core.steps import StepKind
from tasks.kinds import Kind
from tasks.steps import Change, probe


@probe(task_run_name="{step}")
def delete_replica_secrets(change: Change, replica: str, step: str) -> int:
    """Destroy a removed replica's private keys (every secret labelled with it). Returns how many."""
    store = SecretStore.for_gce(change.gce())
    gone = sum(store.delete(n) for n in store.list(change.cluster, replica))
    get_run_logger().info("deleted %d secrets of %s", gone, replica)
    return gone


@probe(task_run_name="{step}")
def delete_cluster_secrets(change: Change, step: str) -> int:
    """Destroy every secret labelled with the cluster (its replicas' keys, any a lost VM left behind)."""
    store = SecretStore.for_gce(change.gce())
    gone = sum(store.delete(n) for n in store.list(change.cluster))
    get_run_logger().info("deleted %d secrets of cluster %s", gone, change.cluster)
    return gone


KINDS = (
    Kind(StepKind.DELETE_KEYS, act=lambda run, s, a: delete_replica_secrets(run.change, a["name"], step=s.id) and None),
    Kind(StepKind.DELETE_CLUSTER_KEYS, act=lambda run, s, a: delete_cluster_secrets(run.change, step=s.id) and None),
)
