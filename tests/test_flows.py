"""The lifecycle flows end to end: emulator, real etcd with mutual TLS, a real Prefect server.

Each test creates its own cluster; a canary key written before every
operation must be read back after it, and the API server must answer
through the endpoint IP with TLS verified against the cluster CA.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from flows.add_replica import add_replica
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.remove_replica import remove_replica
from flows.replace_replica import replace_replica
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.cloud.observe import observe
from haplane.cloud.pki import create_cluster_cas
from haplane.core.plans import SNAPSHOT_BEFORE, PlanRefused, plan_remove
from haplane.core.topology import LABEL_CLUSTER
from haplane.node.spec import client_url
from haplane.testing import REGION, ZONES
from tasks.pki import load_cas
from tests.fixtures.cluster import api_through

pytestmark = pytest.mark.usefixtures("prefect_api")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


class Canary:
    """Writes a key before an operation and reads every key back after it."""

    def __init__(self, cloud, cluster: str):
        self.cloud, self.cluster, self.written = cloud, cluster, {}

    def _client(self) -> EtcdClient:
        cas = load_cas(self.cluster)
        vms = self.cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: self.cluster})
        return EtcdClient([client_url(v.internal_ip) for v in vms if v.status == "RUNNING"], tls=EtcdTLS.from_cas(cas))

    def write(self, label: str) -> None:
        key, value = f"/canary/{label}", uuid.uuid4().hex
        client = self._client()
        try:
            client.put(key, value)
        finally:
            client.close()
        self.written[key] = value.encode()

    def check(self) -> None:
        client = self._client()
        try:
            for key, value in self.written.items():
                assert client.get(key) == value, f"canary {key} lost"
        finally:
            client.close()


def _artifacts(prefect_api, cluster: str) -> dict[str, dict]:
    """The latest artifact of each of the cluster's keys, read through the Prefect API."""
    keys = [f"{cluster}-{k}" for k in ("plan", "replicas", "load-balancer")]
    body = {"artifacts": {"key": {"any_": keys}}, "sort": "CREATED_DESC"}
    found: dict[str, dict] = {}
    for artifact in httpx.post(f"{prefect_api.url}/artifacts/filter", json=body, timeout=10).json():
        found.setdefault(artifact["key"], artifact)
    return found


def _endpoint_ok(cluster: str, rows: list[dict]) -> str:
    endpoint = rows[0]["endpoint IP"]
    resp = api_through(endpoint, load_cas(cluster).ca.cert_pem)
    assert resp.status_code == 200, resp.text
    return endpoint


NOT_STEPS = ("observe ", "zones of ", "report ", "wait ", "remember ")


def _ran_steps(prefect_api, state) -> list[str]:
    """The steps a flow run executed, in order: its task runs, less observations, reports and waits
    (each plan step leaves one task run named by its step id)."""
    body = {
        "flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 200,
    }
    runs = httpx.post(f"{prefect_api.url}/task_runs/filter", json=body, timeout=30).json()
    return [r["name"] for r in runs if not r["name"].startswith(NOT_STEPS)]


def _as_planned(prefect_api, flow, **params):
    """Run ``flow`` dry, then for real with the same change id: the real run executes exactly the
    steps its dry-run plan listed, in order. Returns the real run's result."""
    params.setdefault("change_id", f"{flow.name}-{uuid.uuid4().hex[:6]}")
    plan = flow(**params, dry_run=True)
    assert plan.ids, plan
    state = flow(**params, return_state=True)
    assert state.is_completed(), state.message
    assert _ran_steps(prefect_api, state) == list(plan.ids)
    # a membership change's verified snapshot is the first step of its plan, before any change
    assert (plan.ids[0] == "snapshot-before") == (flow.name in SNAPSHOT_BEFORE), plan.ids[:2]
    return state.result()


@pytest.mark.long  # ~30 s; .ci/run runs it with the long suites (README suite under 10 min)
def test_seed_way_create_one_then_add_two_then_shrink_back(cloud, prefect_api):
    cluster = _name("seed")
    rows = _as_planned(
        prefect_api, create_cluster, cluster=cluster, region=REGION, zones=ZONES, replicas=1, load_balancer="as-needed"
    )
    assert len(rows) == 1 and rows[0]["role"] == "leader" and rows[0]["health"] == "healthy"
    endpoint = _endpoint_ok(cluster, rows)
    # one replica: it carries the static endpoint IP itself, no load balancer
    assert rows[0]["external IP"] == endpoint
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb") is None
    canary = Canary(cloud, cluster)

    canary.write("before-add-1")
    rows = _as_planned(prefect_api, add_replica, cluster=cluster, zone="europe-west1-c")
    canary.check()
    assert len(rows) == 2 and all(r["health"] == "healthy" for r in rows)
    assert {r["zone"] for r in rows} == {"europe-west1-b", "europe-west1-c"}
    # 1 -> 2: the first replica's IP became the load balancer's; it now has a new ephemeral IP
    assert _endpoint_ok(cluster, rows) == endpoint
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb").ip == endpoint
    assert all(r["external IP"] not in ("-", endpoint) for r in rows)

    canary.write("before-add-2")
    rows = _as_planned(prefect_api, add_replica, cluster=cluster)  # no zone: the one with the fewest replicas
    canary.check()
    assert sorted(r["zone"] for r in rows) == ZONES
    assert sorted(r["role"] for r in rows) == ["follower", "follower", "leader"]
    _endpoint_ok(cluster, rows)

    canary.write("before-remove-by-zone")
    rows = _as_planned(prefect_api, remove_replica, cluster=cluster, zone="europe-west1-d")
    canary.check()
    assert sorted(r["zone"] for r in rows) == ["europe-west1-b", "europe-west1-c"]
    _endpoint_ok(cluster, rows)

    canary.write("before-remove-by-name")
    victim = next(r["replica"] for r in rows if r["zone"] == "europe-west1-c")
    rows = _as_planned(prefect_api, remove_replica, cluster=cluster, zone="europe-west1-c", replica_name=victim)
    canary.check()
    # 2 -> 1: the load balancer is gone and its IP is back on the last replica
    assert [r["replica"] for r in rows] != [victim] and len(rows) == 1
    assert rows[0]["external IP"] == endpoint
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb") is None
    assert cloud.gce.get_target_pool(REGION, f"{cluster}-master-pool") is None
    _endpoint_ok(cluster, rows)

    _as_planned(prefect_api, delete_cluster, cluster=cluster)
    assert cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster}) == []
    assert cloud.gce.get_address(REGION, f"{cluster}-master-ip") is None
    assert all(cloud.gce.get_firewall(f"{cluster}-{n}") is None for n in ("etcd-peer", "etcd-client", "apiserver"))
    assert load_cas(cluster) is None  # its PKI block is gone too
    assert cloud.processes() == []


def test_create_three_at_once_and_replace_a_killed_replica(shared_cloud, prefect_api):
    cloud = shared_cloud
    cluster = _name("three")
    rows = _as_planned(prefect_api, create_cluster, cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    assert sorted(r["zone"] for r in rows) == ZONES
    assert all(r["health"] == "healthy" for r in rows)
    endpoint = _endpoint_ok(cluster, rows)
    assert cloud.gce.get_forwarding_rule(REGION, f"{cluster}-master-lb").ip == endpoint
    # the run left its plan, its replica table and the load balancer's progress for the UI
    artifacts = _artifacts(prefect_api, cluster)
    assert artifacts[f"{cluster}-load-balancer"]["data"] == 100.0
    assert "create-cluster" in artifacts[f"{cluster}-plan"]["data"]
    table = artifacts[f"{cluster}-replicas"]["data"]
    assert sorted(row["replica"] for row in json.loads(table)) == sorted(r["replica"] for r in rows)
    assert "PRIVATE KEY" not in json.dumps(artifacts)
    canary = Canary(cloud, cluster)
    canary.write("before-replace")
    _unknown_is_not_absent(cloud, cluster)

    victim = next(r for r in rows if r["role"] == "follower")
    cloud.admin.kill_vm("haplane-test", victim["zone"], victim["replica"])
    rows = _as_planned(prefect_api, replace_replica, cluster=cluster, replica_name=victim["replica"])
    canary.check()
    assert victim["replica"] not in [r["replica"] for r in rows]
    assert len(rows) == 3 and all(r["health"] == "healthy" for r in rows)
    assert sorted(r["zone"] for r in rows) == ZONES  # the new one is in the failed one's zone
    _endpoint_ok(cluster, rows)
    # one plan artifact for the replace run, with both halves (a page showing the latest shows all of it)
    plan = _artifacts(prefect_api, cluster)[f"{cluster}-plan"]
    assert "replace-replica" in plan["data"], plan["data"]
    assert "(`remove/" in plan["data"] and "(`add/" in plan["data"], plan["data"]
    of_run = httpx.post(
        f"{prefect_api.url}/artifacts/filter",
        timeout=10,
        json={"artifacts": {"key": {"any_": [f"{cluster}-plan"]}, "flow_run_id": {"any_": [plan["flow_run_id"]]}}},
    ).json()
    assert len(of_run) == 1
    delete_cluster(cluster=cluster)
    assert cloud.processes(cluster) == []
    _assert_no_private_keys_in_prefect(prefect_api)


def _unknown_is_not_absent(cloud, cluster: str) -> None:
    """A worker that cannot read etcd (its client certificate is not the cluster's, as when it expired)
    or the PKI block sees the membership as unknown, not empty, and no removal is planned on it."""
    cas = load_cas(cluster)
    foreign = EtcdTLS.from_cas(create_cluster_cas("someone-else"))
    views = [
        observe(cloud.gce, cluster, REGION, foreign, cas.ca.cert_pem),
        observe(cloud.gce, cluster, REGION, None, None, pki_problem=f"the PKI block {cluster}-pki could not be read"),
    ]
    for state in views:
        assert len(state.vms) == 3 and state.membership_unknown is not None
        assert all(r.etcd_unknown is not None and not r.etcd_ok for r in state.replicas)
        with pytest.raises(PlanRefused, match="etcd membership .* could not be observed"):
            plan_remove(state, state.replicas[0].zone, None)
    assert "member list failed" in views[0].membership_unknown.reason
    assert all(r.api_ready for r in views[0].replicas)  # the API servers answered: ready is known
    assert all(r.api_unknown is not None for r in views[1].replicas)  # no CA to verify them with
    seen = observe(cloud.gce, cluster, REGION, EtcdTLS.from_cas(cas), cas.ca.cert_pem)
    assert seen.membership_unknown is None and len(seen.voting) == 3 and seen.unknowns == ()


def _assert_no_private_keys_in_prefect(prefect_api) -> None:
    """No private key in the persisted task results, the run logs or the events of the workspace."""
    results = [f for f in (prefect_api.home / "storage").rglob("*") if f.is_file()]
    assert results, "no persisted results found: checkpoints are not being written"
    for f in results:
        assert b"PRIVATE KEY" not in f.read_bytes(), f"a private key is in the result {f}"
    offset = 0
    while True:
        logs = httpx.post(f"{prefect_api.url}/logs/filter", json={"offset": offset, "limit": 200}, timeout=30).json()
        assert not [entry for entry in logs if "PRIVATE KEY" in entry["message"]]
        if len(logs) < 200:
            break
        offset += 200
    events = httpx.post(f"{prefect_api.url}/events/filter", json={"limit": 200}, timeout=30).json()
    assert "PRIVATE KEY" not in json.dumps(events)
