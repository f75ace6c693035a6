"""Kill the flow's process at every step of add_replica, run it again, and get the same end state
with no mutating GCE call sent twice.

The kill is real: the flow runs in its own process (``python -c ...``) and gets
SIGKILL while it waits on an operation the emulator holds (a "hang" fault on the
step's method). By then the step's submit is checkpointed in Prefect's result
store; the next run, with the same change id, must wait on that same operation
instead of sending the call again.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest

from flows.add_replica import add_replica
from flows.create_cluster import create_cluster
from haplane.core.topology import LABEL_CLUSTER
from haplane.testing import REGION, ZONES
from tasks.cluster import force_unlock
from tasks.pki import load_cas
from tests.fixtures.cluster import PROJECT, api_through
from tests.fixtures.kills import flow_process, kill, wait_until_waiting_on

pytestmark = pytest.mark.usefixtures("prefect_api")


# Every GCE call add_replica makes going 1 -> 2, in order. A hang on each one kills the flow
# after the step before it has completed: VM insert; after the etcd learner add (setMetadata);
# after the promotion (health check); the pool; taking the IP off; the load balancer; the new IP.
ADD_STEPS = [
    "compute.instances.insert",
    "compute.instances.setMetadata",
    "compute.httpHealthChecks.insert",
    "compute.targetPools.insert",
    "compute.instances.deleteAccessConfig",
    "compute.forwardingRules.insert",
    "compute.instances.addAccessConfig",
]


@pytest.mark.long  # one of the kill suites (tests/test_kill_matrix.py): .ci/run runs it; the README's suite stays under 10 min
def test_add_replica_killed_at_every_step_resumes_without_repeating_a_call(cloud, prefect_api):
    cluster = "resume-add"
    create_cluster(
        cluster=cluster, region=REGION, zones=ZONES, replicas=1, load_balancer="as-needed"
    )  # the seed's 1 -> 2 move
    endpoint = cloud.gce.get_address(REGION, f"{cluster}-master-ip").address
    cloud.admin.clear_calls()
    code = f"from flows.add_replica import add_replica; add_replica(cluster={cluster!r}, zone='europe-west1-c', change_id='grow-1')"

    killed = []
    for method in ADD_STEPS:
        cloud.admin.add_fault(method, "hang")
        since = datetime.datetime.now(datetime.UTC).isoformat()
        proc = flow_process(prefect_api, cloud, code)
        try:
            call = wait_until_waiting_on(cloud, prefect_api, method, proc, since)
        finally:
            kill(proc)
        killed.append(call["requestId"])
        cloud.admin.clear_faults()  # the held operation now completes on its own
        assert force_unlock(cluster)  # as the operator would, instead of waiting out the dead run's lease

    final = flow_process(prefect_api, cloud, code)
    try:
        out, _ = final.communicate(timeout=240)
    finally:
        kill(final)
    assert final.returncode == 0, out

    # the same end state as an uninterrupted add: two healthy replicas behind the load balancer
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert sorted(v.zone for v in vms) == ["europe-west1-b", "europe-west1-c"]
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb").ip == endpoint
    assert all(v.external_ip and v.external_ip != endpoint for v in vms)
    assert api_through(endpoint, load_cas(cluster).ca.cert_pem).status_code == 200

    # no mutating call twice: every request id once, none answered as a duplicate
    mutating = cloud.mutating_calls()
    ids = [c["requestId"] for c in mutating]
    assert len(ids) == len(set(ids)), [c for c in mutating if ids.count(c["requestId"]) > 1]
    # each call carried out once: the held ones ("fault:hang") completed when released, the rest at once
    assert [c["outcome"] for c in mutating] == ["fault:hang"] * len(ADD_STEPS), mutating
    assert [c["method"] for c in mutating] == ADD_STEPS
    assert set(killed) <= set(ids)


def test_failed_operations_are_submitted_again_and_a_failed_run_resumes(cloud, prefect_api):
    """An operation that ends in error is submitted again with a fresh requestId (GCE answers a
    repeated one with the failed operation); a run that gave up is resumed with
    ``prefect flow-run retry`` (same flow run, so the same default change id)."""
    cluster = "resume-err"
    create_cluster(
        cluster=cluster, region=REGION, zones=ZONES, replicas=1, load_balancer="as-needed"
    )  # the seed's 1 -> 2 move
    endpoint = cloud.gce.get_address(REGION, f"{cluster}-master-ip").address
    cloud.admin.clear_calls()

    cloud.admin.add_fault("compute.forwardingRules.insert", "operation_error", count=3, error_code="QUOTA_EXCEEDED")
    state = add_replica(cluster=cluster, zone="europe-west1-c", return_state=True)
    assert state.is_failed() and "QUOTA_EXCEEDED" in state.message
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb") is None

    cloud.admin.clear_faults()
    cloud.admin.add_fault("compute.forwardingRules.insert", "operation_error", count=1, error_code="INTERNAL_ERROR")
    env = prefect_api.env()
    env.update(HAPLANE_GCE_ENDPOINT=cloud.emulator.url, HAPLANE_PROJECT=PROJECT)
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    retry = subprocess.run(
        [
            prefect,
            "flow-run",
            "retry",
            str(state.state_details.flow_run_id),
            "--entrypoint",
            "flows/add_replica.py:add_replica",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert retry.returncode == 0, retry.stdout + retry.stderr

    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb").ip == endpoint
    assert api_through(endpoint, load_cas(cluster).ca.cert_pem).status_code == 200
    mutating = cloud.mutating_calls()
    rules = [c for c in mutating if c["method"] == "compute.forwardingRules.insert"]
    assert len(rules) == 5  # 3 failed in the first run; in the retry, 1 fresh failure, then success
    ids = [c["requestId"] for c in mutating]
    assert len(ids) == len(set(ids)), [(c["method"], c["outcome"]) for c in mutating if ids.count(c["requestId"]) > 1]
    assert [c["method"] for c in mutating if c["method"] != "compute.forwardingRules.insert"] == [
        m for m in ADD_STEPS if m != "compute.forwardingRules.insert"
    ]
