"""The fault matrix (long suite): create-cluster (3 replicas) and delete-cluster against an injected
fault on every GCE mutating method they call, resumed as the README says, with the invariants
checked from outside haplane: the real google-cloud-compute client, etcd's own JSON API, the
emulator's call log, and the files Prefect keeps.

create-cluster and delete-cluster are faulted in pairs (one create method, then one delete method
per case); replace-replica of a killed replica (the health check's remediation) per method, with a
watcher that samples linearizable reads through the surviving members throughout.

Each case injects ``count=4`` faults of one mode on one method (enough to exhaust a task's three
retries, or the three operations a step may fail in one run) before the flow it concerns; a run
that fails is run again with the same ``change_id``. Then:

- converged: 3 RUNNING VMs, 3 voting etcd members named like them, no learner (after create);
  nothing of the cluster left in GCE, no spec or PKI block (after delete) — no orphans;
- no mutating call sent twice: no requestId with two calls that were carried out;
- no key material in the Prefect server's home (database, result storage, logs).

The other rows of the README's *Reliability* table (refusals, look-alikes, a worker killed at every
step, an unreadable etcd or PKI, a zone down, a busy cluster) are the quick suites named there.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.replace_replica import replace_replica
from haplane.etcd import EtcdTLS
from haplane.topology import LABEL_CLUSTER, ClusterNames
from tasks.pki import load_cas
from tests.fixtures.cluster import PROJECT
from tests.test_secrets import PEM_MARKER, _leaks

pytestmark = [pytest.mark.long, pytest.mark.usefixtures("prefect_api")]

REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
CREATE_METHODS = ["compute.addresses.insert", "compute.firewalls.insert", "compute.instances.insert",
                  "compute.instances.setMetadata", "compute.httpHealthChecks.insert", "compute.targetPools.insert",
                  "compute.forwardingRules.insert"]
DELETE_METHODS = ["compute.forwardingRules.delete", "compute.targetPools.delete", "compute.httpHealthChecks.delete",
                  "compute.instances.delete", "compute.addresses.delete", "compute.firewalls.delete"]
MODES = ["503", "operation_error"]
# Each case faults one create method, then one delete method (paired, so that every method is hit
# in every mode without a cluster per method and mode).
PAIRS = list(zip(CREATE_METHODS, DELETE_METHODS + [DELETE_METHODS[3]], strict=True))
CASES = [(c, d, mode) for c, d in PAIRS for mode in MODES] + [("compute.instances.insert", "compute.instances.delete",
                                                                 "429")]


def _run_until_done(call, change_id: str, runs: int = 3) -> int:
    """Run the flow; a failed run is run again with the same change id. Returns the runs it took."""
    for attempt in range(1, runs + 1):
        try:
            call(change_id)
            return attempt
        except Exception:  # noqa: BLE001 - resumed below, as the README says
            if attempt == runs:
                raise
    return runs


def _members(cluster: str, ips: list[str]) -> list[dict]:
    """etcd's own member list (JSON gateway, mutual TLS with the operator certificate)."""
    tls = EtcdTLS.from_cas(load_cas(cluster))
    with httpx.Client(verify=tls.ssl_context(), timeout=10) as http:
        for ip in ips:
            try:
                return http.post(f"https://{ip}:2379/v3/cluster/member/list", json={}).json()["members"]
            except httpx.HTTPError:
                continue
    raise AssertionError(f"no etcd member of {cluster} answers")


def _sent_twice(calls: list[dict]) -> list[str]:
    done = Counter(c["requestId"] for c in calls if c.get("requestId") and c["outcome"] == "ok")
    return [rid for rid, n in done.items() if n > 1]


def _leftovers(cloud, cluster: str) -> list[str]:
    gce, names = cloud.gce, ClusterNames(cluster)
    left = [f"VM {i.name}" for i in gce.list_instances(gce.list_zones(REGION), labels={LABEL_CLUSTER: cluster})]
    for kind, name, region in (("address", names.address, REGION), ("target_pool", names.target_pool, REGION),
                               ("forwarding_rule", names.forwarding_rule, REGION),
                               ("health_check", names.health_check, None),
                               *(("firewall", n, None) for n in (names.firewall_etcd_peer, names.firewall_etcd_client,
                                                                names.firewall_apiserver))):
        if gce.description_of(kind, name, region) is not None:
            left.append(f"{kind} {name}")
    return left


def _key_material(home: Path) -> list[str]:
    return [str(p) for p in home.rglob("*") if p.is_file() and _leaks(p.read_bytes(), [PEM_MARKER])]


@pytest.mark.parametrize("create_method,delete_method,mode", CASES,
                         ids=[f"{c.split('.', 1)[1]}+{d.split('.', 1)[1]}-{mode}" for c, d, mode in CASES])
def test_create_delete_fault(create_method, delete_method, mode, cloud, prefect_api):
    cluster = f"fm-{uuid.uuid4().hex[:6]}"
    cloud.admin.add_fault(create_method, mode, count=4)
    _run_until_done(lambda cid: create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3,
                                               change_id=cid), f"create-{cluster}")
    cloud.admin.clear_faults()
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert len(vms) == 3 and all(v.status == "RUNNING" for v in vms), vms
    members = _members(cluster, [v.internal_ip for v in vms])
    assert sorted(m["name"] for m in members) == sorted(v.name for v in vms)
    assert not [m for m in members if m.get("isLearner")]
    assert _sent_twice(cloud.admin.calls()) == []

    cloud.admin.add_fault(delete_method, mode, count=4)
    _run_until_done(lambda cid: delete_cluster(cluster=cluster, change_id=cid), f"delete-{cluster}")
    cloud.admin.clear_faults()
    assert _leftovers(cloud, cluster) == []
    assert load_cas(cluster) is None
    assert _sent_twice(cloud.admin.calls()) == []
    outcomes = {c["method"]: c["outcome"] for c in cloud.admin.calls() if c["outcome"].startswith("fault")}
    if mode != "operation_error":
        assert create_method in outcomes and delete_method in outcomes, "a fault was never hit"
    assert _key_material(Path(prefect_api.home)) == []


class QuorumWatcher:
    """Samples a linearizable read through each given member (etcd's JSON gateway) every 0.2 s and
    records the longest stretch in which none of them could serve one: quorum lost, beyond an
    election (etcd's election timeout is 1 s)."""

    def __init__(self, cluster: str, ips: list[str]) -> None:
        self.tls, self.ips = EtcdTLS.from_cas(load_cas(cluster)), ips
        self.stop, self.samples, self.worst, self.errors = threading.Event(), 0, 0.0, 0
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        key = base64.b64encode(b"/canary").decode()
        failing_since = None
        with httpx.Client(verify=self.tls.ssl_context(), timeout=2) as http:
            while not self.stop.is_set():
                ok = False
                for ip in self.ips:
                    try:
                        r = http.post(f"https://{ip}:2379/v3/kv/range", json={"key": key})
                        ok = ok or r.status_code == 200
                    except httpx.HTTPError:
                        pass
                self.samples += 1
                now = time.monotonic()
                if ok:
                    failing_since = None
                else:
                    self.errors += 1
                    failing_since = failing_since or now
                    self.worst = max(self.worst, now - failing_since)
                self.stop.wait(0.2)

    def __enter__(self) -> QuorumWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


REPLACE_METHODS = ["compute.targetPools.removeInstance", "compute.instances.delete", "compute.instances.insert",
                   "compute.instances.setMetadata", "compute.targetPools.addInstance"]
REPLACE_CASES = [(m, mode) for m in REPLACE_METHODS for mode in MODES if mode == "operation_error" or "Pools" not in m]


@pytest.mark.parametrize("method,mode", REPLACE_CASES,
                         ids=[f"replace-{m.split('.', 1)[1]}-{mode}" for m, mode in REPLACE_CASES])
def test_replace_fault(method, mode, cloud, prefect_api):
    """replace-replica of a killed replica (the health check's remediation) with a fault: quorum is
    never lost (watched throughout from outside), the run converges after a resume, nothing orphaned."""
    cluster = f"fr-{uuid.uuid4().hex[:6]}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    victim = next(r for r in rows if r["zone"] == ZONES[1])
    survivors = [r["internal IP"] for r in rows if r is not victim]
    cloud.admin.kill_vm(PROJECT, ZONES[1], victim["replica"])
    cloud.admin.clear_calls()
    cloud.admin.add_fault(method, mode, count=4)
    with QuorumWatcher(cluster, survivors) as watcher:
        _run_until_done(lambda cid: replace_replica(cluster=cluster, replica_name=victim["replica"], change_id=cid),
                        f"replace-{cluster}")
    cloud.admin.clear_faults()
    assert watcher.samples > 5 and watcher.worst < 10.0, \
        f"no linearizable read for {watcher.worst:.1f} s ({watcher.errors} of {watcher.samples} samples failed)"
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert len(vms) == 3 and victim["replica"] not in {v.name for v in vms}
    assert all(v.status == "RUNNING" for v in vms)
    members = _members(cluster, [v.internal_ip for v in vms])
    assert sorted(m["name"] for m in members) == sorted(v.name for v in vms)
    assert not [m for m in members if m.get("isLearner")]
    pool = cloud.gce.get_target_pool(REGION, ClusterNames(cluster).target_pool)
    assert sorted(link.rsplit("/", 1)[-1] for link in pool.instances) == sorted(v.name for v in vms)
    assert _sent_twice(cloud.admin.calls()) == []
    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == []
    assert _key_material(Path(prefect_api.home)) == []
