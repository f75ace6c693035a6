"""rotate-certificates: new keys for a running cluster, replica by replica, without downtime.

- **Leaves**, one replica at a time (followers first, the etcd leader last): a new
  key pair and certificate for each of the replica's etcd peer, etcd server, API
  server and API server's etcd client, with the same SANs; keys to Secret
  Manager, certificates to metadata; the replica's etcd and API server reload on
  them; the flow waits until the replica serves its new certificates and etcd
  has its full quorum healthy before it goes on to the next replica.
- **The operator's etcd client certificate** (in the cluster's PKI block).
- **The service-account key**: a new signing key in the PKI block, delivered to
  every replica, one at a time (kube-apiserver restarts on it); the previous public key stays accepted until the next rotation,
  so tokens signed before keep working.

The cluster's CAs are not rotated by this flow.

Resumable: each step is checkpointed under the change id; run again with the
same ``change_id`` to finish a rotation that was killed half-way (replicas
already done are not done again).
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from flows.params import ClusterName, Connection, documented
from haplane.model import ClusterState
from haplane.rotation import rotation_order
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_report, wait_api_ready
from tasks.etcd import wait_quorum
from tasks.operations import Step, apply
from tasks.pki import (
    renew_operator_cert,
    rotate_service_account,
    submit_deliver_service_account,
    submit_reissue_leaves,
    wait_serving_new_certs,
)
from tasks.steps import Change, probe


@probe(task_run_name="let {cluster} settle")
def settled_state(cluster: str, region: str, connection: str | None, timeout: float = 90.0) -> ClusterState:
    """The cluster once every replica is healthy, or as it is after ``timeout``: a resumed rotation
    finds the replica it was rotating still reloading, and must not take that for a failure."""
    deadline = time.monotonic() + timeout
    while True:
        state = observe_cluster.fn(cluster, region, connection)
        if all(r.healthy for r in state.replicas) or time.monotonic() > deadline:
            return state
        time.sleep(2.0)


@flow(name="rotate-certificates", log_prints=True)
@documented
def rotate_certificates(
    cluster: ClusterName,
    leaves: Annotated[bool, Field(
        description="Re-issue every replica's certificates and keys, one replica at a time")] = True,
    operator: Annotated[bool, Field(description="Renew the operator's etcd client certificate")] = True,
    service_account_key: Annotated[bool, Field(
        description="Rotate the service-account signing key (the previous public key stays accepted)")] = True,
    connection: Connection = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
) -> list[dict[str, str]]:
    logger = get_run_logger()
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"rotate-{flow_run.get_id()}", connection)
    with cluster_lock(cluster):
        state = settled_state(cluster, spec.region, connection)
        order = rotation_order(state)
        ips = [r.internal_ip for r in order]
        if leaves:
            for i, r in enumerate(order, 1):
                logger.info("re-issuing the certificates of %s (%d of %d)", r.name, i, len(order))
                apply(change, Step(submit_reissue_leaves, f"leaves/{r.name}", f"new certificates for {r.name}",
                                   (r.zone, r.name, state.endpoint_ip)))
                wait_serving_new_certs(change, r.zone, r.name)
                wait_quorum(cluster, ips, expect_voting=len(order))
        if operator:
            renew_operator_cert(change, "operator")
        if service_account_key:
            kid = rotate_service_account(change, "service-account/rotate")
            logger.info("delivering service-account key %s to %d replicas, one at a time", kid, len(order))
            for r in order:  # kube-apiserver restarts on new key files: never all replicas at once
                apply(change, Step(submit_deliver_service_account, f"service-account/deliver/{r.name}",
                                   f"service-account key to {r.name}", (r.zone, r.name)))
                wait_api_ready(cluster, r.name, r.internal_ip, step=f"service-account/api-ready/{r.name}",
                               timeout=120.0)
    return publish_report(observe_cluster(cluster, spec.region, connection), f"rotated by run {flow_run.get_id()}")
