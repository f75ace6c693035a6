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

One plan (:func:`haplane.core.rotation.plan_rotation`, pure: from the observed cluster and the options,
replicas in the order :func:`haplane.core.rotation.rotation_order` decides), published as the
``<cluster>-plan`` artifact and run by the one executor: every action and every wait of the rotation
is a step of it. Resumable: each step is checkpointed under the change id; run again with the
same ``change_id`` to finish a rotation that was killed half-way (replicas
already done are not done again). While a CA rotation is under way, every other
rotation is refused until it is finished.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from blocks.store import load_spec
from flows.params import ChangeId, ClusterName, Connection, documented
from haplane.core.model import ClusterState
from haplane.core.plans import with_preamble
from haplane.core.rotation import RotationOptions, plan_rotation
from tasks.cluster import cluster_lock, observe_cluster, publish_plan, publish_report
from tasks.execute import Run, execute
from tasks.keys import check_keys
from tasks.pki import load_certs
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
    options = RotationOptions(leaves, operator, service_account_key, rotate_ca)
    options.check()
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"rotate-{flow_run.get_id()}", connection)
    with cluster_lock(cluster):
        keys = check_keys(cluster, connection)  # an unreadable key refuses here, before any call
        cas = load_certs(cluster)
        if cas is None:
            raise RuntimeError(f"cluster {cluster} has no PKI block: nothing to rotate")
        state = settled_state(cluster, spec.region, connection)
        # a cluster saved the old way has its keys moved to Secret Manager by the plan's first step
        plan = with_preamble(plan_rotation(state, options, cas.ca_rotation, change.change_id), keys)
        publish_plan(plan, change)
        execute(Run(change, spec), plan)
    return publish_report(observe_cluster(cluster, spec.region, connection), f"rotated by run {flow_run.get_id()}")
