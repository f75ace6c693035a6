"""Endpoint modes end to end: emulator, real etcd with mutual TLS, a real Prefect server.

A probe thread reads the API server's /readyz through the endpoint IP every 100 ms (TLS verified
against the cluster CA) while the cluster scales: in ``always`` mode it never misses; in
``as-needed`` mode (the seed's) the 1 -> 2 IP move takes it down, and the flow reports how long.
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid

import httpx
import pytest

from flows.add_replica import add_replica
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.remove_replica import remove_replica
from flows.set_load_balancer import set_load_balancer
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.core.plans import Plan
from haplane.node.spec import client_url
from haplane.testing import REGION, ZONES
from tasks.pki import load_cas
from tests.test_flows import Canary

pytestmark = pytest.mark.usefixtures("prefect_api")


class EndpointProbe:
    """GET https://<endpoint>:6443/readyz every ``interval`` s in a thread; records each answer."""

    def __init__(self, ip: str, ca_pem: str, interval: float = 0.1):
        self.ip, self.interval = ip, interval
        self.ctx = ssl.create_default_context(cadata=ca_pem)
        self.results: list[tuple[float, bool]] = []  # (time, answered 200)
        self.unanswered = 0  # probes that got no HTTP answer at all (connection refused, reset, timeout)
        self.unanswered_at: list[float] = []  # when each of them was sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(verify=self.ctx, timeout=2.0) as http:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    ok = http.get(f"https://{self.ip}:6443/readyz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                    self.unanswered += 1
                    self.unanswered_at.append(t)
                self.results.append((t, ok))
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def __enter__(self) -> EndpointProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def failures(self) -> int:
        return sum(1 for _, ok in self.results if not ok)

    def longest_gap(self) -> float:
        """The longest time between the last answer before a miss and the first answer after it."""
        longest, last_ok = 0.0, None
        for t, ok in self.results:
            if ok:
                if last_ok is not None:
                    longest = max(longest, t - last_ok - self.interval)
                last_ok = t
        return max(0.0, longest)


def wait_answering(ip: str, ca_pem: str, timeout: float = 60.0) -> None:
    ctx = ssl.create_default_context(cadata=ca_pem)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"https://{ip}:6443/readyz", verify=ctx, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the endpoint {ip} never answered"
        time.sleep(0.2)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


def test_always_mode_endpoint_answers_throughout_one_two_three_two_one(shared_cloud):
    cloud = shared_cloud
    cluster = _name("always")
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=1)  # "always" is the default
    endpoint, ca = rows[0]["endpoint IP"], load_cas(cluster).ca.cert_pem
    # one replica behind the load balancer: its own external IP is ephemeral, the endpoint is the rule's
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb").ip == endpoint
    assert rows[0]["external IP"] not in ("-", endpoint)
    wait_answering(endpoint, ca)
    _canary_write_through(cluster, endpoint, ca, rows[0]["internal IP"])
    canary = Canary(cloud, cluster)
    with EndpointProbe(endpoint, ca) as probe:
        for step, change in enumerate(
            [
                lambda: add_replica(cluster=cluster, zone="europe-west1-c"),
                lambda: add_replica(cluster=cluster),
                lambda: remove_replica(cluster=cluster, zone="europe-west1-d"),
                lambda: remove_replica(cluster=cluster, zone="europe-west1-c"),
            ]
        ):
            canary.write(f"step-{step}")
            rows = change()
            canary.check()
            assert all(r["health"] == "healthy" for r in rows), rows
            # the address never moved: it stays on the forwarding rule
            assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb").ip == endpoint
    assert len(rows) == 1 and rows[0]["zone"] == "europe-west1-b"
    assert len(probe.results) > 50
    assert probe.failures == 0, f"the endpoint missed {probe.failures} of {len(probe.results)} probes"
    # the IP moved nowhere: no access config was deleted or added on any VM
    methods = [c["method"] for c in cloud.mutating_calls(cluster)]
    assert not [m for m in methods if m.endswith(("deleteAccessConfig", "addAccessConfig"))], methods
    delete_cluster(cluster=cluster)
    assert cloud.processes(cluster) == []


def _canary_write_through(cluster: str, endpoint: str, ca: str, internal_ip: str) -> None:
    """The API server's canary write (the availability benchmark's) lands in etcd; HTTPS only."""
    value = uuid.uuid4().hex
    resp = httpx.post(
        f"https://{endpoint}:6443/haplane/canary",
        json={"key": "t", "value": value},
        verify=ssl.create_default_context(cadata=ca),
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    client = EtcdClient([client_url(internal_ip)], tls=EtcdTLS.from_cas(load_cas(cluster)))
    try:
        assert client.get("/haplane/canary/t") == value.encode()
    finally:
        client.close()
    plain = httpx.post(f"http://{internal_ip}:8080/haplane/canary", json={"key": "t", "value": "x"}, timeout=5)
    assert plain.status_code == 404  # the plain-HTTP health port does not take writes


def test_as_needed_mode_moves_the_ip_and_conversion_both_ways(cloud):
    cluster = _name("conv")
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=1, load_balancer="as-needed")
    endpoint, ca = rows[0]["endpoint IP"], load_cas(cluster).ca.cert_pem
    assert rows[0]["external IP"] == endpoint  # the seed's: the single replica carries the IP
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb") is None

    # the plan says up front that converting a 1-replica cluster takes the endpoint down once
    plan = set_load_balancer(cluster=cluster, mode="always", dry_run=True)
    assert isinstance(plan, Plan) and "one time" in plan.downtime
    # the forwarding rule takes 1 s here (instant otherwise), so the window is wider than the probe's
    # 100 ms interval on any machine
    cloud.admin.set_latency(seconds={"forwarding_rule_insert": 1.0})
    try:
        with EndpointProbe(endpoint, ca) as probe:
            rows = set_load_balancer(cluster=cluster, mode="always")
            wait_answering(endpoint, ca)
    finally:
        cloud.admin.set_latency(seconds={"forwarding_rule_insert": 0.0})
    assert probe.failures > 0  # the one-time downtime, seen from outside
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb").ip == endpoint
    assert rows[0]["external IP"] not in ("-", endpoint) and rows[0]["health"] == "healthy"

    # now 1 -> 2 is a pool change only
    with EndpointProbe(endpoint, ca) as probe:
        rows = add_replica(cluster=cluster, zone="europe-west1-c")
    assert len(rows) == 2 and probe.failures == 0

    # back to as-needed at 2 replicas: only the spec; 2 -> 1 then hands the IP back (the seed's move)
    plan = set_load_balancer(cluster=cluster, mode="as-needed", dry_run=True)
    assert plan.downtime == "" and plan.ids == ("spec",)
    set_load_balancer(cluster=cluster, mode="as-needed")
    rows = remove_replica(cluster=cluster, zone="europe-west1-c")
    assert len(rows) == 1 and rows[0]["external IP"] == endpoint
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb") is None
    wait_answering(endpoint, ca)
    delete_cluster(cluster=cluster)
    assert cloud.processes() == []
