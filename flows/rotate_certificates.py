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
- **The CAs**, with ``rotate_ca`` (new cluster and etcd CAs; slower, three passes over the replicas):
  1. new CAs in the PKI block, then every replica trusts them beside the old ones (``ca.crt`` and
     ``etcd-ca.crt`` hold both), one replica at a time, each checked to accept a client of the new
     etcd CA before the next;
  2. the new CAs sign from then on: the operator's certificate, then every replica's leaves as above;
  3. every replica drops the old CAs, one at a time, each checked to refuse a client of the old etcd
     CA; then the old CAs' certificates and private keys are deleted from the block. Until that last
     step they are kept, so a killed CA rotation can always be resumed.

Resumable: each step is checkpointed under the change id; run again with the
same ``change_id`` to finish a rotation that was killed half-way (replicas
already done are not done again). While a CA rotation is under way, every other
rotation is refused until it is finished.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from blocks.store import load_spec
from flows.params import ChangeId, ClusterName, Connection, documented
from haplane.core.model import ClusterState, ReplicaState
from haplane.core.rotation import check_rotation, rotation_order
from tasks.cluster import cluster_lock, observe_cluster, publish_report, wait_api_ready
from tasks.etcd import wait_quorum
from tasks.keys import ensure_keys
from tasks.operations import Step, apply
from tasks.pki import (
    finish_ca_rotation_task,
    load_certs,
    renew_operator_cert,
    rotate_service_account,
    start_ca_rotation,
    submit_deliver_service_account,
    submit_deliver_trust,
    submit_reissue_leaves,
    switch_to_new_cas,
    wait_etcd_trust,
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
    leaves: Annotated[
        bool, Field(description="Re-issue every replica's certificates and keys, one replica at a time")
    ] = True,
    operator: Annotated[bool, Field(description="Renew the operator's etcd client certificate")] = True,
    service_account_key: Annotated[
        bool, Field(description="Rotate the service-account signing key (the previous public key stays accepted)")
    ] = True,
    rotate_ca: Annotated[
        bool,
        Field(
            description="Also replace the cluster CA and the etcd CA: new CAs trusted beside the old ones on every "
            "replica, then every leaf re-issued from them, then the old CAs dropped and deleted (three "
            "passes, one replica at a time). Needs leaves and operator"
        ),
    ] = False,
    connection: Connection = None,
    change_id: ChangeId = None,
) -> list[dict[str, str]]:
    logger = get_run_logger()
    if rotate_ca and not (leaves and operator):
        raise ValueError(
            "rotate_ca re-issues every certificate from the new CAs: leave leaves and operator true "
            "(nothing was rotated)"
        )
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"rotate-{flow_run.get_id()}", connection)
    with cluster_lock(cluster):
        ensure_keys(cluster, connection)  # a cluster saved the old way is migrated; an unreadable key refuses here
        cas = load_certs(cluster)
        if cas is None:
            raise RuntimeError(f"cluster {cluster} has no PKI block: nothing to rotate")
        check_rotation(cas.ca_rotation, change.change_id, rotate_ca)
        state = settled_state(cluster, spec.region, connection)
        order = rotation_order(state)
        ips = [r.internal_ip for r in order]
        if rotate_ca:
            start_ca_rotation(change, "ca/start")
            logger.info("the new CAs go to every replica's trust bundle, beside the old ones")
            for r in order:
                _trust(change, r, ips, drop_previous=False)
            switch_to_new_cas(change, "ca/switch")
            renew_operator_cert(change, "ca/operator")
        if leaves:
            for i, r in enumerate(order, 1):
                logger.info("re-issuing the certificates of %s (%d of %d)", r.name, i, len(order))
                apply(
                    change,
                    Step(
                        submit_reissue_leaves,
                        f"leaves/{r.name}",
                        f"new certificates for {r.name}",
                        (r.zone, r.name, state.endpoint_ip),
                    ),
                )
                wait_serving_new_certs(change, r.zone, r.name)
                wait_quorum(cluster, ips, expect_voting=len(order), connection=connection)
        if rotate_ca:
            logger.info("every leaf is signed by the new CAs: every replica drops the old ones")
            for r in order:
                _trust(change, r, ips, drop_previous=True)
            finish_ca_rotation_task(change, "ca/finish")
        elif operator:
            renew_operator_cert(change, "operator")
        if service_account_key:
            kid = rotate_service_account(change, "service-account/rotate")
            logger.info("delivering service-account key %s to %d replicas, one at a time", kid, len(order))
            for r in order:  # kube-apiserver restarts on new key files: never all replicas at once
                apply(
                    change,
                    Step(
                        submit_deliver_service_account,
                        f"service-account/deliver/{r.name}",
                        f"service-account key to {r.name}",
                        (r.zone, r.name),
                    ),
                )
                wait_api_ready(
                    cluster,
                    r.name,
                    r.internal_ip,
                    step=f"service-account/api-ready/{r.name}",
                    timeout=120.0,
                    connection=connection,
                )
    return publish_report(observe_cluster(cluster, spec.region, connection), f"rotated by run {flow_run.get_id()}")


def _trust(change: Change, r: ReplicaState, ips: list[str], *, drop_previous: bool) -> None:
    """One replica's trust bundle changed (both CAs, or the new ones alone), then checked: its etcd
    accepts the new CA's clients (and refuses the old one's once dropped), its API server is ready,
    and etcd has its full quorum, before the next replica."""
    phase = "drop" if drop_previous else "trust"
    what = "trusts the new CAs alone" if drop_previous else "trusts the new CAs beside the old ones"
    apply(
        change, Step(submit_deliver_trust, f"ca/{phase}/{r.name}", f"{r.name} {what}", (r.zone, r.name, drop_previous))
    )
    wait_etcd_trust(change, r.zone, r.name, dropped=drop_previous)
    wait_api_ready(
        change.cluster,
        r.name,
        r.internal_ip,
        step=f"ca/{phase}/api-ready/{r.name}",
        timeout=120.0,
        connection=change.connection,
    )
    wait_quorum(change.cluster, ips, expect_voting=len(ips), connection=change.connection)
