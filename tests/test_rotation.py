"""Certificate rotation on a running cluster: every leaf re-issued, one replica at a time, no failed write.

A canary writes to etcd (through every member's client URL, as the operator does) the whole
time; the test checks that every certificate of every replica is new, with the same SANs, that
each replica serves its new certificates, and that a rotation killed half-way resumes without
redoing the replicas it had finished.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from cryptography import x509

from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.rotate_certificates import rotate_certificates
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.core.topology import LABEL_CLUSTER
from haplane.node.spec import TLS_PREFIX, client_url
from haplane.testing import REGION, ZONES
from tasks.pki import load_cas

LEAVES = ("apiserver-cert", "etcd-peer-cert", "etcd-server-cert", "apiserver-etcd-client-cert")


# ---------------------------------------------------------------- pure rules


# ---------------------------------------------------------------- end to end


class Canary(threading.Thread):
    """Writes a key every 50 ms until stopped, as an etcd client (clientv3) does: an attempt a
    member refuses while it restarts is retried on the next member; a write counts as *failed*
    only when no member took it within 10 s. Retried attempts are counted and printed."""

    def __init__(self, cluster: str, ips: list[str]):
        super().__init__(daemon=True)
        tls = EtcdTLS.from_cas(load_cas(cluster))
        self.clients = [EtcdClient([client_url(ip)], tls=tls, timeout=3) for ip in ips]
        self.stop_flag, self.writes, self.retried, self.failures = threading.Event(), 0, 0, []

    def _put(self, key: str, value: str) -> None:
        deadline, i, last = time.monotonic() + 10, self.writes, None
        while time.monotonic() < deadline:
            client = self.clients[i % len(self.clients)]
            try:
                client.put(key, value)
                return
            except Exception as exc:  # noqa: BLE001 - the member is restarting: the next one
                last, i = exc, i + 1
                self.retried += 1
                time.sleep(0.05)
        raise RuntimeError(f"no member took {key}: {last}")

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self._put(f"/canary/{self.writes}", str(time.time()))
                self.writes += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(30)
        for c in self.clients:
            c.close()


def _leaves(cloud, cluster: str) -> dict[str, dict[str, x509.Certificate]]:
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    return {
        vm.name: {s: x509.load_pem_x509_certificate(vm.metadata[TLS_PREFIX + s].encode()) for s in LEAVES} for vm in vms
    }


def _sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


@pytest.mark.long  # .ci/run runs it
@pytest.mark.usefixtures("prefect_api")
def test_rotation_renews_every_leaf_one_replica_at_a_time_with_no_failed_write(cloud):
    cluster = f"rot-{uuid.uuid4().hex[:5]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    try:
        before = _leaves(cloud, cluster)
        operator_before = load_cas(cluster).operator.certificate.serial_number
        ips = [vm.internal_ip for vm in cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})]
        canary = Canary(cluster, ips)
        canary.start()
        started = time.monotonic()
        try:
            rows = rotate_certificates(cluster=cluster, change_id=f"rot-{cluster}")
        finally:
            canary.finish()
        print(
            f"rotation of 3 replicas: {time.monotonic() - started:.1f} s, {canary.writes} canary writes, "
            f"{canary.retried} attempts retried on another member, {len(canary.failures)} failed"
        )
        assert canary.writes > 5 and canary.failures == [], canary.failures[:5]
        assert all(r["health"] == "healthy" for r in rows)

        after = _leaves(cloud, cluster)
        for name, certs in before.items():
            for suffix, old in certs.items():
                new = after[name][suffix]
                assert new.serial_number != old.serial_number, f"{name} {suffix} was not re-issued"
                assert new.public_key().public_numbers() != old.public_key().public_numbers()  # a new key pair
                assert _sans(new) == _sans(old) and new.subject == old.subject
        assert load_cas(cluster).operator.certificate.serial_number != operator_before

        # the run again with the same change id: every step is found checkpointed, nothing re-issued
        rotate_certificates(cluster=cluster, change_id=f"rot-{cluster}")
        again = _leaves(cloud, cluster)
        assert {n: {s: c.serial_number for s, c in v.items()} for n, v in again.items()} == {
            n: {s: c.serial_number for s, c in v.items()} for n, v in after.items()
        }
    finally:
        delete_cluster(cluster=cluster)
    assert cloud.processes() == []


@pytest.mark.long
@pytest.mark.usefixtures("prefect_api")
def test_a_rotation_killed_half_way_resumes_without_redoing_a_replica(cloud, prefect_api):
    import os
    import signal
    import subprocess
    import sys

    from haplane.processes import stop_group
    from tasks.cluster import force_unlock
    from tests.fixtures.cluster import PROJECT

    cluster = f"rkill-{uuid.uuid4().hex[:5]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    change_id = f"rot-{cluster}"
    try:
        original = {n: {s: c.serial_number for s, c in v.items()} for n, v in _leaves(cloud, cluster).items()}
        env = prefect_api.env()
        env.update(HAPLANE_GCE_ENDPOINT=cloud.emulator.url, HAPLANE_PROJECT=PROJECT, PREFECT_LOGGING_LEVEL="WARNING")
        code = (
            "from flows.rotate_certificates import rotate_certificates; "
            f"rotate_certificates(cluster={cluster!r}, change_id={change_id!r})"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=os.getcwd(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:  # kill it as soon as the first replica has its new certificates
            deadline, done = time.monotonic() + 120, {}
            while time.monotonic() < deadline and not done and proc.poll() is None:
                now = {n: {s: c.serial_number for s, c in v.items()} for n, v in _leaves(cloud, cluster).items()}
                done = {n: v for n, v in now.items() if v != original[n]}
                time.sleep(0.1)
        finally:
            stop_group(proc, sig=signal.SIGKILL)
        assert done and len(done) < 3, "the rotation was not caught half-way"
        first = next(iter(done))
        force_unlock(cluster)

        rotate_certificates(cluster=cluster, change_id=change_id)
        final = {n: {s: c.serial_number for s, c in v.items()} for n, v in _leaves(cloud, cluster).items()}
        assert final[first] == done[first], "the resumed run re-issued a replica the killed run had finished"
        assert all(final[n][s] != original[n][s] for n in final for s in LEAVES)
    finally:
        delete_cluster(cluster=cluster)
    assert cloud.processes() == []


@pytest.mark.long  # 30 s: .ci/run runs it beside tests/test_cert_lifetimes.py; the README's suite stays under 10 min
def test_health_check_warns_then_rotates_every_leaf_within_the_threshold(cloud, prefect_api):
    """Leaves last a year: with thresholds above a year the health check sees every leaf "close to
    expiry" and must rotate them all, one replica at a time, with no failed write meanwhile."""
    import httpx

    from flows.health_check import health_check

    cluster = f"hrot-{uuid.uuid4().hex[:5]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    try:
        before = {n: {s: c.serial_number for s, c in v.items()} for n, v in _leaves(cloud, cluster).items()}
        health_check(cluster=cluster)  # defaults (30 / 14 days): a new cluster needs nothing
        assert {n: {s: c.serial_number for s, c in v.items()} for n, v in _leaves(cloud, cluster).items()} == before

        health_check(cluster=cluster, warn_days=400, rotate_days=0)  # warn only
        assert {n: {s: c.serial_number for s, c in v.items()} for n, v in _leaves(cloud, cluster).items()} == before

        ips = [vm.internal_ip for vm in cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})]
        canary = Canary(cluster, ips)
        canary.start()
        try:
            rotated = health_check(cluster=cluster, warn_days=400, rotate_days=366)
        finally:
            canary.finish()
        print(
            f"health-check rotation: {canary.writes} canary writes, {canary.retried} attempts retried on "
            f"another member, {len(canary.failures)} failed"
        )
        assert canary.writes > 5 and canary.failures == [], canary.failures[:5]
        after = {n: {s: c.serial_number for s, c in v.items()} for n, v in _leaves(cloud, cluster).items()}
        assert all(after[n][s] != before[n][s] for n in before for s in LEAVES)
        assert (rotated or {}).get("action") == "rotate", rotated

        deadline, names = time.monotonic() + 60, []
        while time.monotonic() < deadline and "haplane.certificates.rotated" not in names:  # events arrive async
            events = httpx.post(
                f"{prefect_api.url}/events/filter",
                json={"filter": {"event": {"prefix": ["haplane.certificates."]}}, "limit": 50},
                timeout=30,
            ).json()["events"]
            names = [e["event"] for e in events if e["resource"].get("haplane.cluster") == cluster]
            time.sleep(1)
        assert "haplane.certificates.expiring" in names and "haplane.certificates.rotated" in names
        arts = httpx.post(
            f"{prefect_api.url}/artifacts/filter",
            json={"artifacts": {"key": {"any_": [f"{cluster}-certificates", f"{cluster}-certificates-expiring"]}}},
            timeout=10,
        ).json()
        assert {a["key"] for a in arts} == {f"{cluster}-certificates", f"{cluster}-certificates-expiring"}
        table = next(a for a in arts if a["key"] == f"{cluster}-certificates")["data"]
        assert "service-account key" in table and "etcd-peer" in table and "PRIVATE" not in table
    finally:
        delete_cluster(cluster=cluster)
    assert cloud.processes() == []
