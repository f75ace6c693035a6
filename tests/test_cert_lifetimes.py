"""Leaves that last minutes, rotated by the scheduled health check before they expire.

Pure: the lifetime setting and its refusals, thresholds in minutes. End to end (long): a cluster
created with ``leaf_lifetime_minutes=3``; the health check runs every 10 s (as its schedule would)
with ``warn_minutes=2.5, rotate_minutes=2``; it rotates every leaf before the first one expires, one
replica at a time, while a canary writes through the endpoint (the load balancer's IP, TLS verified
against the cluster CA) with no failed write; after the original leaves' expiry the cluster still
takes writes, and the original operator certificate is refused. A rotation must fit in the rotate threshold (here
about 25 s for 3 replicas on a quiet machine, over a minute under heavy load): 3-minute leaves
rotated with 2 minutes left leave room; 2-minute leaves rotated with 72 s left did not, under load.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from cryptography import x509

from haplane.testing import REGION, ZONES

LEAVES = ("apiserver-cert", "etcd-peer-cert", "etcd-server-cert", "apiserver-etcd-client-cert")


# ---------------------------------------------------------------- pure


# ---------------------------------------------------------------- end to end


def _leaves(cloud, cluster: str) -> dict[str, dict[str, x509.Certificate]]:
    from haplane.core.topology import LABEL_CLUSTER
    from haplane.node.spec import TLS_PREFIX

    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    return {
        vm.name: {s: x509.load_pem_x509_certificate(vm.metadata[TLS_PREFIX + s].encode()) for s in LEAVES} for vm in vms
    }


def _serials(leaves: dict[str, dict[str, x509.Certificate]]) -> dict[str, dict[str, int]]:
    return {n: {s: c.serial_number for s, c in v.items()} for n, v in leaves.items()}


def task_runs_of(flow_run_id) -> list[tuple[str, float, float]]:
    """(name, start, end) of a flow run's task runs, by start (wall clock)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
    return sorted(
        ((r.name, r.start_time.timestamp(), r.end_time.timestamp()) for r in runs if r.start_time and r.end_time),
        key=lambda r: r[1],
    )


def assert_one_replica_at_a_time(runs: list[tuple[str, float, float]], replicas: set[str]) -> list[str]:
    """Each replica's new leaves are delivered only after the one before serves its own: returns the order."""
    order, ready_at = [], 0.0
    for name, start, end in runs:
        if name.startswith("leaves/served/"):  # the plan's wait after each replica's new leaves
            ready_at = end
        elif name.startswith("leaves/") and name.count("/") == 1:
            assert start >= ready_at, f"{name} started before the previous replica served its new certificates"
            order.append(name.split("/", 1)[1])
    assert set(order) == replicas and len(order) == len(replicas), order
    return order


def rotation_runs(since: float) -> list:
    """rotate-certificates flow runs started after ``since`` (wall clock), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["rotate-certificates"])),
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=dt.datetime.fromtimestamp(since, dt.UTC))
            ),
        )
    return sorted(runs, key=lambda r: r.start_time)


@pytest.mark.long  # about 4 minutes: the leaves must live long enough to rotate, then expire
@pytest.mark.timeout(900)
def test_health_check_rotates_leaves_of_a_few_minutes_before_expiry_with_no_failed_write(cloud, prefect_api):
    from flows.create_cluster import create_cluster
    from flows.delete_cluster import delete_cluster
    from flows.health_check import health_check
    from haplane.cloud.etcd import EtcdClient, EtcdTLS, EtcdUnavailable
    from haplane.core.topology import LABEL_CLUSTER
    from haplane.node.spec import client_url
    from haplane.testing.canary import EndpointCanary
    from tasks.pki import load_cas

    cluster = f"short-{uuid.uuid4().hex[:5]}"
    started = time.time()
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, leaf_lifetime_minutes=3)
    try:
        original = _leaves(cloud, cluster)
        cas = load_cas(cluster)
        assert cas.lifetimes.leaf_minutes == 3
        certs = [c for v in original.values() for c in v.values()] + [cas.operator.certificate]
        for c in certs:
            assert abs((c.not_valid_after_utc - c.not_valid_before_utc) - dt.timedelta(minutes=3)) < dt.timedelta(
                seconds=2
            )
        expiry = min(c.not_valid_after_utc for c in certs).timestamp()
        old_operator = EtcdTLS.from_cas(cas)
        ips = [vm.internal_ip for vm in cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})]
        endpoint = rows[0]["endpoint IP"]

        checks: list[tuple[float, float, dict, dict]] = []  # (start, end, result, leaf serials after)
        canary = EndpointCanary(endpoint, cas.ca_bundle(), period=0.2, retry_s=10.0)
        with canary:
            while time.time() < expiry + 15:  # the schedule: a check every 10 s, past the first expiry
                t0 = time.time()
                result = health_check(cluster=cluster, warn_minutes=2.5, rotate_minutes=2)
                checks.append((t0, time.time(), result or {}, _serials(_leaves(cloud, cluster))))
                time.sleep(max(0.0, 10 - (time.time() - t0)))
        after_expiry = [s for s in canary.samples if s.t > expiry + 1]
        print(
            f"\n{len(checks)} health checks; actions {[c[2].get('action') for c in checks]}; canary: "
            f"{len(canary.samples)} writes through {endpoint}, {sum(s.attempts - 1 for s in canary.samples)} "
            f"retried, {len(canary.failed_writes)} failed; {len(after_expiry)} after the first expiry"
        )

        assert canary.failed_writes == [], [(s.t, s.error) for s in canary.failed_writes[:5]]
        assert len(after_expiry) > 10 and all(s.write_ok for s in after_expiry)
        actions = [c[2].get("action") for c in checks]
        assert "rotate" in actions, actions
        assert all(a in ("warn", "rotate", "nothing") for a in actions), actions  # nothing failed or deferred
        first = next(c for c in checks if c[2].get("action") == "rotate")
        assert first[1] < expiry, "the rotation finished after the first leaf had expired"
        assert all(first[3][n][s] != _serials(original)[n][s] for n in original for s in LEAVES), (
            "a leaf was not re-issued by the first rotation"
        )
        runs = rotation_runs(started)
        assert runs, "no rotate-certificates run was recorded"
        order = assert_one_replica_at_a_time(task_runs_of(runs[0].id), set(original))
        print(
            f"first rotation: {first[1] - first[0]:.1f} s, order {order}, finished {expiry - first[1]:.0f} s "
            f"before the first leaf's expiry"
        )

        # past the original expiry: etcd takes writes with the renewed operator certificate, and refuses
        # the original one (it has expired: the rotation is what keeps the cluster working)
        assert time.time() > expiry
        fresh = EtcdTLS.from_cas(load_cas(cluster))
        with EtcdClient([client_url(ip) for ip in ips], tls=fresh, timeout=5) as etcd:
            etcd.put("/after-expiry", "ok")
        with pytest.raises(EtcdUnavailable), EtcdClient([client_url(ips[0])], tls=old_operator, timeout=5) as etcd:
            etcd.put("/with-the-expired-operator-certificate", "refused")
    finally:
        delete_cluster(cluster=cluster)
    assert cloud.processes() == []
