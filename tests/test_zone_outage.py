"""A zone outage survived, on the emulator with real etcd and a real Prefect server.

3 replicas over 3 zones; one zone fails (its API answers 503, its VMs' processes die). The health
check waits out its grace period, then moves that zone's replica to another zone: the etcd member
is removed first, its VM is recorded as stranded, the replacement is added. Throughout, the API
answers through the endpoint (a probe every 100 ms) and etcd keeps quorum (a write every 200 ms
through the surviving members succeeds). The zone is restored and the stranded VM comes back with
its old etcd data: it never rejoins, and the next check deletes it.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from blocks.store import load_spec
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.health_check import health_check
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.emulator.resources import vm_view
from haplane.node.spec import client_url, peer_url
from haplane.testing import REGION, ZONES
from tasks.pki import load_cas
from tests.fixtures.cluster import PROJECT
from tests.test_endpoint_flows import EndpointProbe, wait_answering

pytestmark = pytest.mark.usefixtures("prefect_api")


class EtcdWriter:
    """Puts a key every ``interval`` s through ``ips`` (a write needs quorum); records each outcome."""

    def __init__(self, cluster: str, ips: list[str], interval: float = 0.2):
        self.client = EtcdClient([client_url(ip) for ip in ips], tls=EtcdTLS.from_cas(load_cas(cluster)), timeout=2)
        self.interval, self.results = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.client.put(f"/canary/zone/{n}", str(n))
                self.results.append(True)
            except Exception:  # noqa: BLE001 - any failure to write is what is counted
                self.results.append(False)
            self._stop.wait(self.interval)

    def __enter__(self) -> EtcdWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def _members(cluster: str, ips: list[str]) -> list:
    client = EtcdClient([client_url(ip) for ip in ips], tls=EtcdTLS.from_cas(load_cas(cluster)), timeout=3)
    try:
        return client.member_list()
    finally:
        client.close()


def test_a_failed_zone_has_its_replica_moved_and_its_stranded_vm_deleted(cloud, monkeypatch):
    monkeypatch.setenv("HAPLANE_GCE_READ_RETRY_S", "1")  # a zone that does not answer is seen as such at once
    cluster = f"zone-{uuid.uuid4().hex[:5]}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    endpoint, ca = rows[0]["endpoint IP"], load_cas(cluster).ca.cert_pem
    wait_answering(endpoint, ca)
    dead_zone = "europe-west1-c"
    victim = next(r for r in rows if r["zone"] == dead_zone)["replica"]
    victim_ip = next(r for r in rows if r["zone"] == dead_zone)["internal IP"]
    survivors = [r["internal IP"] for r in rows if r["zone"] != dead_zone]

    with EndpointProbe(endpoint, ca) as probe, EtcdWriter(cluster, survivors) as writer:
        failed_at = time.monotonic()
        cloud.admin.fail_zone(dead_zone)
        # within the grace period: the outage is recorded, nothing is moved
        state = health_check(cluster=cluster, zone_grace_s=3600, return_state=True)
        assert state.is_completed() and "grace period" in state.message, state.message
        assert dead_zone in load_spec(cluster).zones_out
        # past it: the member goes, the VM is recorded as stranded, the replacement comes up elsewhere
        state = health_check(cluster=cluster, zone_grace_s=0, return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        assert result["action"] == "zone-move", result
        new = result["result"]
        spec = load_spec(cluster)
        assert [(s.name, s.zone, s.replacement) for s in spec.stranded] == [(victim, dead_zone, new)]
        members = _members(cluster, survivors)
        assert peer_url(victim_ip) not in [u for m in members for u in m.peer_urls]
        assert len(members) == 3 and not any(m.is_learner for m in members)
        new_vm = next(v for z in ZONES if z != dead_zone for v in cloud.gce.list_instances([z]) if v.name == new)
        assert new_vm.zone != dead_zone
        # a check while the zone is still out does nothing more
        state = health_check(cluster=cluster, zone_grace_s=0, return_state=True)
        assert state.result()["action"] in ("zone-nothing", "nothing"), state.result()

        # the zone answers again, and the stranded VM boots with its old etcd data
        cloud.admin.restore_zone(dead_zone)
        inst = cloud.emulator.ctx.store.instances[(PROJECT, dead_zone, victim)]
        cloud.emulator.runtime.start(vm_view(inst))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # its etcd runs (and is refused by its former peers)
            members = _members(cluster, survivors + [new_vm.internal_ip])
            assert peer_url(victim_ip) not in [u for m in members for u in m.peer_urls], "the stranded VM rejoined"
            time.sleep(0.5)
        state = health_check(cluster=cluster, zone_grace_s=0, return_state=True)
        assert state.result()["action"] == "zone-delete-stale", state.result()
        assert cloud.gce.get_instance(dead_zone, victim) is None
        assert load_spec(cluster).stranded == [] and load_spec(cluster).zones_out == {}
        # and the cluster is healthy on three replicas: the usual check finds nothing
        state = health_check(cluster=cluster, zone_grace_s=0, return_state=True)
        assert state.result()["action"] == "nothing", state.result()

    assert len(writer.results) > 20 and all(writer.results), (
        f"{writer.results.count(False)} of {len(writer.results)} etcd writes failed: quorum was lost"
    )
    # The API answered through the endpoint at every probe. When the dead zone held etcd's leader,
    # /readyz (a linearizable read) says 503 during the one election that follows (etcd's election
    # timeout is 1 s): that is the only readiness gap allowed.
    # A connection the load balancer sent to the dead zone before its health check noticed
    # (GCE's network LB does the same: checkIntervalSec 2 x unhealthyThreshold 2, + timeoutSec 1) is
    # the only miss allowed; after that window every probe is answered.
    detect_s = 2 * 2 + 1
    late = [t - failed_at for t in probe.unanswered_at if t > failed_at + detect_s]
    print(
        f"endpoint probes: {len(probe.results)}, unanswered {probe.unanswered} "
        f"(within {detect_s} s of the failure: {probe.unanswered - len(late)})"
    )
    assert len(probe.results) > 50 and not late, (
        f"{len(late)} of {len(probe.results)} probes got no answer through the endpoint after the LB's "
        f"health check had {detect_s} s to notice the dead zone (at +{', '.join(f'{x:.1f}' for x in late)} s)"
    )
    assert probe.longest_gap() < 3.0, f"/readyz was not ready for {probe.longest_gap():.2f} s"
    delete_cluster(cluster=cluster)
    assert cloud.processes() == []
