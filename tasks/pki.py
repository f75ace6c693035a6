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
from haplane.pki import ClusterCAs, create_cluster_cas, issue_replica_certs, node_tls
from haplane.secrets import call_carrying_secrets
from tasks.steps import Change, checkpoint, probe


def load_cas(cluster: str) -> ClusterCAs | None:
    try:
        return ClusterPKI.load(block_name(cluster)).to_cas()
    except (ValueError, ObjectNotFound):
        return None


def read_cas(cluster: str) -> tuple[ClusterCAs | None, str | None]:
    """The cluster's CAs, or None and why they could not be read (absent, or unreadable)."""
    name = block_name(cluster)
    try:
        return ClusterPKI.load(name).to_cas(), None
    except ObjectNotFound:
        return None, f"the PKI block {name} does not exist"
    except ValueError as exc:
        if "Unable to find" in str(exc):  # how Prefect's Block.load says a block does not exist
            return None, f"the PKI block {name} does not exist"
        return None, f"the PKI block {name} could not be read (ValueError)"
    except Exception as exc:  # noqa: BLE001 - any failure to read it is "unknown", never "no PKI"
        # the type only: a message could quote the block's content
        return None, f"the PKI block {name} could not be read ({type(exc).__name__})"


def operator_tls(cluster: str) -> EtcdTLS | None:
    """The operator's etcd client credentials, for use inside a task (never return them)."""
    cas = load_cas(cluster)
    return EtcdTLS.from_cas(cas) if cas else None


@probe(task_run_name="{step}")
def ensure_cluster_pki(cluster: str, step: str = "pki") -> str:
    """Create the cluster CA and etcd CA once; later runs keep the saved ones. Returns the block name."""
    name = block_name(cluster)
    if load_cas(cluster) is None:
        # the request carries the CA keys: an error must not carry it onwards
        call_carrying_secrets(f"saving block {name}", (), ClusterPKI.from_cas(create_cluster_cas(cluster)).save,
                              name, overwrite=False)
        get_run_logger().info("created the cluster CA and etcd CA in block %s", name)
    return name


@probe(task_run_name="{step}")
def delete_cluster_pki(cluster: str, step: str = "pki") -> None:
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
    certs = issue_replica_certs(cas, hostname=name, internal_ip=vm.internal_ip, endpoint_ip=endpoint_ip,
                                service_cidr=apiserver.service_cluster_ip_range)
    spec = NodeSpec(etcd=etcd, apiserver=apiserver, tls=node_tls(cas, certs))
    get_run_logger().info("configuring %s: etcd member %s (%s), certificates for %s and %s",
                          name, etcd.name, etcd.initial_cluster_state, vm.internal_ip, endpoint_ip)
    return gce.set_metadata(zone, name, spec.to_metadata(), rid=change.rid(step))
