"""The health check finishes a replacement that removed its replica but failed to add the new one."""

from __future__ import annotations

import time

import httpx
import pytest

from blocks.pki import ClusterPKI
from blocks.store import read_pki
from flows.create_cluster import create_cluster
from flows.health_check import health_check
from haplane.cloud.pki import create_cluster_cas
from haplane.core.topology import LABEL_CLUSTER, ClusterNames
from haplane.testing import REGION, ZONES
from tests.fixtures.cluster import PROJECT

pytestmark = pytest.mark.usefixtures("prefect_api")


def _a_worker_that_cannot_see_etcd_replaces_nothing(cloud, prefect_api, cluster: str) -> None:
    """With credentials etcd and the API servers refuse (as an expired or wrong certificate is), the
    check sees the membership as unknown, not empty: it replaces nothing, says what it could not
    observe, and emits haplane.cluster.unknown -- although a replica really is dead."""
    real = read_pki(cluster)
    ClusterPKI.from_cas(create_cluster_cas(cluster)).save(ClusterNames(cluster).pki_block, overwrite=True)  # another CA
    cloud.admin.clear_calls()
    try:
        blind = health_check(cluster=cluster, backoff_s=0, return_state=True)
    finally:
        real.save(ClusterNames(cluster).pki_block, overwrite=True)
    assert blind.is_completed(), blind.message
    assert "could not be observed" in blind.message and "etcd membership" in blind.message
    assert blind.result()["action"] == "unknown"
    assert cloud.mutating_calls() == []
    deadline = time.monotonic() + 30
    while True:
        events = httpx.post(
            f"{prefect_api.url}/events/filter",
            timeout=10,
            json={"filter": {"event": {"prefix": ["haplane.cluster.unknown"]}}, "limit": 10},
        ).json()["events"]
        if events or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert events and events[0]["resource"]["prefect.resource.id"].endswith(cluster)
    assert "PRIVATE KEY" not in str(events)


def test_health_check_resumes_a_replacement_whose_add_failed(cloud, prefect_api):
    cluster = "heal"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    victim = next(r for r in rows if r["role"] == "follower")
    cloud.admin.kill_vm(PROJECT, victim["zone"], victim["replica"])
    _a_worker_that_cannot_see_etcd_replaces_nothing(cloud, prefect_api, cluster)

    # the new replica's VM cannot be created: the replacement removes the dead one, then fails
    cloud.admin.add_fault(
        "compute.instances.insert", "operation_error", count=3, error_code="ZONE_RESOURCE_POOL_EXHAUSTED"
    )
    first = health_check(cluster=cluster, backoff_s=0, return_state=True)
    assert first.is_failed(), first.message
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert len(vms) == 2 and victim["replica"] not in [v.name for v in vms]

    # nothing unhealthy is left to find, but the cluster is a replica short: the next check resumes
    cloud.admin.clear_faults()
    second = health_check(cluster=cluster, backoff_s=0, return_state=True)
    assert second.is_completed(), second.message
    assert "replaced" in second.message
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert sorted(v.zone for v in vms) == ZONES  # the new replica is where the dead one was

    third = health_check(cluster=cluster, backoff_s=0, return_state=True)
    assert third.is_completed() and "healthy" in third.message, third.message
