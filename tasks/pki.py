"""PKI tasks: the cluster's CAs (a Prefect block) and each replica's certificates (its VM metadata).

No task here returns key material: the CAs go straight into the ``<cluster>-pki``
block, a replica's leaves straight into its instance metadata.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.exceptions import ObjectNotFound

from blocks import delete_block_document
from blocks.pki import ClusterPKI, block_name
from haplane.etcd import EtcdTLS
from haplane.gce import OpRef
from haplane.node import ApiServerSpec, EtcdSpec, NodeSpec
from haplane.pki import (
    ClusterCAs,
    create_cluster_cas,
    issue_replica_certs,
    new_service_account_key,
    node_tls,
    rotate_service_account_key,
    service_account_tls,
)
from tasks.steps import Change, checkpoint, probe


def load_cas(cluster: str) -> ClusterCAs | None:
    try:
        return ClusterPKI.load(block_name(cluster)).to_cas()
    except (ValueError, ObjectNotFound):
        return None


def operator_tls(cluster: str) -> EtcdTLS | None:
    """The operator's etcd client credentials, for use inside a task (never return them)."""
    cas = load_cas(cluster)
    return EtcdTLS.from_cas(cas) if cas else None


@probe(task_run_name="ensure cluster PKI")
def ensure_cluster_pki(cluster: str) -> str:
    """Create the cluster CA and etcd CA once; later runs keep the saved ones. Returns the block name."""
    name = block_name(cluster)
    if load_cas(cluster) is None:
        ClusterPKI.from_cas(create_cluster_cas(cluster)).save(name, overwrite=False)
        get_run_logger().info("created the cluster CA, the etcd CA and the service-account key in block %s", name)
    else:
        ensure_service_account_key(cluster)
    return name


def ensure_service_account_key(cluster: str) -> None:
    """Give a cluster saved before service-account keys existed its key pair (kept once made)."""
    block = ClusterPKI.load(block_name(cluster))
    if block.service_account_key is None:
        block.with_service_account(new_service_account_key()).save(block_name(cluster), overwrite=True)
        get_run_logger().info("added a service-account key pair to block %s", block_name(cluster))


@checkpoint(retries=0)
def rotate_service_account(change: Change, step: str) -> str:
    """A new service-account signing key in the cluster's block; the old public key stays accepted.
    Checkpointed: a resumed run does not rotate twice. Returns the new key's id (public)."""
    ensure_service_account_key(change.cluster)
    block = ClusterPKI.load(block_name(change.cluster))
    old = block.to_cas().service_account
    assert old is not None
    new = rotate_service_account_key(old)
    block.with_service_account(new).save(block_name(change.cluster), overwrite=True)
    get_run_logger().info("service-account key %s replaces %s (still accepted until the next rotation)",
                          new.kid, old.kid)
    return new.kid


@checkpoint
def submit_deliver_service_account(change: Change, step: str, zone: str, name: str) -> OpRef | None:
    """Write the cluster's current service-account keys into a replica's metadata (the API server
    picks them up: the stand-in re-reads its key files, the startup script restarts kube-apiserver)."""
    cas = load_cas(change.cluster)
    if cas is None or cas.service_account is None:
        raise RuntimeError(f"cluster {change.cluster} has no service-account key in block {block_name(change.cluster)!r}")
    get_run_logger().info("delivering service-account key %s to %s", cas.service_account.kid, name)
    return change.gce().set_metadata(zone, name, NodeSpec(None, None, service_account_tls(cas.service_account)).to_metadata(),
                                     rid=change.rid(step))


@probe(task_run_name="delete cluster PKI")
def delete_cluster_pki(cluster: str) -> None:
    delete_block_document(block_name(cluster), ClusterPKI.get_block_type_slug())


@checkpoint
def submit_configure_replica(change: Change, step: str, zone: str, name: str, endpoint_ip: str,
                             etcd: EtcdSpec, apiserver: ApiServerSpec) -> OpRef | None:
    """Issue the replica's certificates and write them with its etcd and API-server settings into
    its metadata; the VM starts what the metadata describes."""
    gce = change.gce()
    vm = gce.get_instance(zone, name)
    if vm is None:
        raise RuntimeError(f"VM {name} in {zone} does not exist; cannot configure it")
    cas = load_cas(change.cluster)
    if cas is None:
        raise RuntimeError(f"cluster {change.cluster} has no PKI block {block_name(change.cluster)!r}")
    if cas.service_account is None:  # a cluster from before service-account keys: give it one
        ensure_service_account_key(change.cluster)
        cas = load_cas(change.cluster)
    certs = issue_replica_certs(cas, hostname=name, internal_ip=vm.internal_ip, endpoint_ip=endpoint_ip,
                                service_cidr=apiserver.service_cluster_ip_range)
    spec = NodeSpec(etcd=etcd, apiserver=apiserver, tls=node_tls(cas, certs))
    get_run_logger().info("configuring %s: etcd member %s (%s), certificates for %s and %s",
                          name, etcd.name, etcd.initial_cluster_state, vm.internal_ip, endpoint_ip)
    return gce.set_metadata(zone, name, spec.to_metadata(), rid=change.rid(step))
