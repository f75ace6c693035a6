"""rotate-certificates: new keys for a running cluster, replica by replica, without downtime.

The service-account key: a new signing key is saved in the cluster's PKI block
(the previous public key stays accepted, so tokens signed before the rotation
keep working until the next one), then delivered to every replica; every API
server signs with the new key from then on and accepts both.

Resumable: each step is checkpointed under the change id; run again with the
same ``change_id`` to finish a rotation that was killed half-way.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from flows.params import ClusterName, Connection, documented
from tasks.cluster import cluster_lock, load_spec, observe_cluster, publish_report
from tasks.operations import Step, apply_all
from tasks.pki import rotate_service_account, submit_deliver_service_account
from tasks.steps import Change


@flow(name="rotate-certificates", log_prints=True)
@documented
def rotate_certificates(
    cluster: ClusterName,
    service_account_key: Annotated[bool, Field(
        description="Rotate the service-account signing key (the previous public key stays accepted)")] = True,
    connection: Connection = None,
    change_id: Annotated[str | None, Field(description="Repeat to resume a failed run")] = None,
) -> list[dict[str, str]]:
    logger = get_run_logger()
    spec = load_spec(cluster)
    change = Change(cluster, change_id or f"rotate-{flow_run.get_id()}", connection)
    with cluster_lock(cluster):
        state = observe_cluster(cluster, spec.region, connection)
        running = [r for r in state.replicas if r.vm_status == "RUNNING"]
        if service_account_key:
            kid = rotate_service_account(change, "service-account/rotate")
            logger.info("delivering service-account key %s to %d replicas", kid, len(running))
            apply_all(change, [Step(submit_deliver_service_account, f"service-account/deliver/{r.name}",
                                    f"service-account key to {r.name}", (r.zone, r.name)) for r in running])
    return publish_report(observe_cluster(cluster, spec.region, connection), f"rotated by run {flow_run.get_id()}")
