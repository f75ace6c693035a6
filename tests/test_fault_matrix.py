"""The fault matrix (long suite): create-cluster (3 replicas) and delete-cluster against an injected
fault on every GCE mutating method they call, resumed as the README says, with the invariants
checked from outside haplane: the real google-cloud-compute client, etcd's own JSON API, the
emulator's call log, and the files Prefect keeps.

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

import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from haplane.etcd import EtcdTLS
from haplane.topology import LABEL_CLUSTER, ClusterNames
from tasks.pki import load_cas
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
CASES = ([("create", m, mode) for m in CREATE_METHODS for mode in MODES]
         + [("delete", m, mode) for m in DELETE_METHODS for mode in MODES]
         + [("create", "compute.instances.insert", "429"), ("delete", "compute.instances.delete", "429")])


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


@pytest.mark.parametrize("flow,method,mode", CASES, ids=[f"{f}-{m.split('.', 1)[1]}-{mode}" for f, m, mode in CASES])
def test_fault(flow, method, mode, cloud, prefect_api):
    cluster = f"fm-{uuid.uuid4().hex[:6]}"
    create_id, delete_id = f"create-{cluster}", f"delete-{cluster}"
    if flow == "create":
        cloud.admin.add_fault(method, mode, count=4)
    _run_until_done(lambda cid: create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3,
                                               change_id=cid), create_id)
    cloud.admin.clear_faults()
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert len(vms) == 3 and all(v.status == "RUNNING" for v in vms), vms
    members = _members(cluster, [v.internal_ip for v in vms])
    assert sorted(m["name"] for m in members) == sorted(v.name for v in vms)
    assert not [m for m in members if m.get("isLearner")]
    assert _sent_twice(cloud.admin.calls()) == []

    if flow == "delete":
        cloud.admin.add_fault(method, mode, count=4)
    _run_until_done(lambda cid: delete_cluster(cluster=cluster, change_id=cid), delete_id)
    cloud.admin.clear_faults()
    assert _leftovers(cloud, cluster) == []
    assert load_cas(cluster) is None
    assert _sent_twice(cloud.admin.calls()) == []
    faulted = [c for c in cloud.admin.calls() if c["method"] == method and c["outcome"].startswith("fault")]
    if mode != "operation_error":
        assert faulted, f"the fault on {method} was never hit"
    assert _key_material(Path(prefect_api.home)) == []
