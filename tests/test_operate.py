"""Operating haplane from Prefect: a real server, a real process worker, deployments, the REST API, schedules.

The module shares one emulator (real etcd per VM) and one worker. In order:
the workspace is set up by ``deployments.setup`` (the code behind ``haplane setup-workspace``);
create-cluster is started over the REST API with httpx and an idempotency key, exactly as
the README shows; bad parameters are refused before a run exists; then ``haplane
setup-workspace --cluster`` (run again: idempotent) schedules the health check, a replica
is killed, and the scheduled check replaces it on its own.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from haplane.testing import REGION, ZONES
from tests.fixtures.cluster import PROJECT
from tests.fixtures.prefect import auth_headers

pytestmark = pytest.mark.usefixtures("prefect_api")

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CLUSTER = f"ops-{uuid.uuid4().hex[:4]}"


# ------------------------------------------------------------------ the README's API recipe


def start_deployment(api: str, name: str, parameters: dict, idempotency_key: str) -> dict:
    """Start deployment ``flow/deployment`` with parameters over the Prefect REST API (README, "Operate")."""
    with httpx.Client(base_url=api, timeout=30, headers=auth_headers()) as http:
        deployment = http.get(f"/deployments/name/{name}").raise_for_status().json()
        # a 503 (the server's database busy) is retried, as Prefect's own client does; the idempotency
        # key makes a retry of a request that did create the run return that run
        for attempt in range(6):
            run = http.post(
                f"/deployments/{deployment['id']}/create_flow_run",
                json={"parameters": parameters, "idempotency_key": idempotency_key},
            )
            if run.status_code != 503:
                break
            time.sleep(2**attempt)
        run.raise_for_status()
        return run.json()


def wait_run(api: str, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10, headers=auth_headers()).json()
        if run["state_type"] in FINAL:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout:.0f}s: {run['state_type']}")


def artifacts(api: str, **flt) -> list[dict]:
    body = {"artifacts": flt, "sort": "CREATED_DESC"}
    return (
        httpx.post(f"{api}/artifacts/filter", json=body, timeout=10, headers=auth_headers()).raise_for_status().json()
    )


def flow_runs(api: str, flow: str, **flt) -> list[dict]:
    body = {"flows": {"name": {"any_": [flow]}}, "flow_runs": flt, "sort": "EXPECTED_START_TIME_DESC"}
    return (
        httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10, headers=auth_headers()).raise_for_status().json()
    )


def run_log(api: str, run_id: str) -> str:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    return "\n".join(
        r["message"] for r in httpx.post(f"{api}/logs/filter", json=body, timeout=10, headers=auth_headers()).json()
    )


# ------------------------------------------------------------------ in-process checks (no worker)


def test_health_check_skips_while_another_check_of_the_cluster_runs(ops_cloud):
    from flows.health_check import health_check
    from tasks.health import health_lock

    with health_lock("busy-one") as held:
        assert held
        state = health_check(cluster="busy-one", return_state=True)
    assert state.is_completed()
    assert "another health check" in state.message


# ------------------------------------------------------------------ through the worker


def test_workspace_has_pool_deployments_blocks_and_automation(prefect_api, workspace):
    api = prefect_api.url
    pool = httpx.get(f"{api}/work_pools/haplane", timeout=10, headers=auth_headers()).json()
    assert pool["type"] == "process"
    names = {
        d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10, headers=auth_headers()).json()
    }
    assert {
        "create-cluster",
        "add-replica",
        "remove-replica",
        "replace-replica",
        "set-load-balancer",
        "delete-cluster",
        "rotate-certificates",
        "health-check",
        "snapshot-cluster",
        "restore-cluster",
    } <= names
    types = {
        b["slug"] for b in httpx.post(f"{api}/block_types/filter", json={}, timeout=10, headers=auth_headers()).json()
    }
    assert {"haplane-gce-connection", "haplane-cluster-spec", "haplane-cluster-pki"} <= types
    autos = httpx.post(f"{api}/automations/filter", json={}, timeout=10, headers=auth_headers()).json()
    assert "haplane-health-check-on-request" in {a["name"] for a in autos}
    schema = httpx.get(
        f"{api}/deployments/name/create-cluster/create-cluster", timeout=10, headers=auth_headers()
    ).json()
    assert schema["enforce_parameter_schema"] is True
    props = schema["parameter_openapi_schema"]["properties"]
    assert "description" in props["cluster"] and "pattern" in str(props["cluster"])
    # the endpoint mode is a choice in the run form, "always" by default
    modes = schema["parameter_openapi_schema"]["definitions"]["EndpointMode"]
    assert modes["enum"] == ["always", "as-needed"] and props["load_balancer"]["default"] == "always"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"replicas": 2}, "replicas"),
        ({"cluster": "Bad_Name"}, "cluster"),
        ({"zones": ["nowhere"]}, "zones"),
        ({"load_balancer": "sometimes"}, "load_balancer"),
    ],
)
def test_bad_parameters_are_refused_before_a_run_starts(prefect_api, workspace, bad, words):
    params = {"cluster": "ok", "region": REGION, "zones": ZONES, "replicas": 3} | bad
    with pytest.raises(httpx.HTTPStatusError) as refused:
        start_deployment(prefect_api.url, "create-cluster/create-cluster", params, f"bad-{words}")
    assert refused.value.response.status_code == 409
    assert f"Validation failed for field '{words}" in refused.value.response.text, refused.value.response.text


def test_create_cluster_over_the_api_with_an_idempotency_key(prefect_api, prefect_worker, ops_cloud):
    api = prefect_api.url
    params = {"cluster": CLUSTER, "region": REGION, "zones": ZONES, "replicas": 3}
    key = f"create-{CLUSTER}"
    first = start_deployment(api, "create-cluster/create-cluster", params, key)
    again = start_deployment(api, "create-cluster/create-cluster", params, key)
    assert again["id"] == first["id"], "the idempotency key must not start a second run"
    run = wait_run(api, first["id"])
    assert run["state_type"] == "COMPLETED", run_log(api, first["id"])[-3000:]
    found = {a["key"]: a for a in artifacts(api, flow_run_id={"any_": [first["id"]]})}
    assert f"{CLUSTER}-plan" in found and found[f"{CLUSTER}-plan"]["data"].count("insert VM") == 3
    table = found[f"{CLUSTER}-replicas"]
    assert table["type"] == "table" and table["data"].count('"healthy"') == 3


@pytest.fixture
def health_schedules_paused_after(prefect_api):
    """Leave no health-check schedule running for the modules after this one."""
    yield
    # the shared one and each cluster's own
    with httpx.Client(base_url=prefect_api.url, timeout=10, headers=auth_headers()) as http:
        for deployment in http.post("/deployments/filter", json={"flows": {"name": {"any_": ["health-check"]}}}).json():
            for s in http.get(f"/deployments/{deployment['id']}/schedules").json():
                http.patch(f"/deployments/{deployment['id']}/schedules/{s['id']}", json={"active": False})


@pytest.mark.usefixtures("health_schedules_paused_after")
def test_scheduled_health_check_replaces_a_killed_replica(prefect_api, prefect_worker, ops_cloud):
    api = prefect_api.url
    rows = ops_cloud.gce.list_instances(ZONES, labels={"haplane-cluster": CLUSTER})
    assert len(rows) == 3, "needs the cluster from the previous test"
    victim = sorted(rows, key=lambda i: i.name)[0]
    ops_cloud.admin.kill_vm(PROJECT, victim.zone, victim.name)

    # The documented command, run again (idempotent), now with the cluster and a short interval.
    env = prefect_api.env() | {"HAPLANE_GCE_ENDPOINT": ops_cloud.emulator.url, "HAPLANE_PROJECT": PROJECT}
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "haplane"),
            "setup-workspace",
            "--cluster",
            CLUSTER,
            "--health-interval",
            "10",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exists" in out.stdout and f"health check of {CLUSTER!r} every 10 s" in out.stdout

    deadline = time.monotonic() + 200
    replaced = None
    while time.monotonic() < deadline and replaced is None:
        for run in flow_runs(api, "replace-replica", tags={"all_": ["haplane-remediation", f"cluster:{CLUSTER}"]}):
            if run["state_type"] == "COMPLETED":
                replaced = run
            assert run["state_type"] not in ("FAILED", "CRASHED"), run_log(api, run["id"])[-3000:]
        time.sleep(2)
    assert replaced is not None, "the scheduled health check did not replace the killed replica"
    assert f"replica:{victim.name}" in replaced["tags"]
    parent = httpx.get(f"{api}/task_runs/{replaced['parent_task_run_id']}", timeout=10, headers=auth_headers()).json()
    check = httpx.get(f"{api}/flow_runs/{parent['flow_run_id']}", timeout=10, headers=auth_headers()).json()
    assert check["deployment_id"] and check["parameters"]["cluster"] == CLUSTER
    check = wait_run(api, check["id"])  # the finished run: its end_time is what the next check follows

    # the replica table now shows the new replica, healthy, in the killed one's zone
    table = artifacts(api, key={"any_": [f"{CLUSTER}-replicas"]})[0]
    assert victim.name not in table["data"] and table["data"].count('"healthy"') == 3
    health = artifacts(api, key={"any_": [f"{CLUSTER}-health"]})
    assert any("replace" in a["data"] and victim.name in a["data"] for a in health)

    # events: unhealthy, then replaced (the server stores events asynchronously: poll)
    rid = f"haplane.cluster.{CLUSTER}.replica.{victim.name}"
    wanted = {("haplane.replica.unhealthy", rid), ("haplane.replica.replaced", rid)}
    deadline = time.monotonic() + 30
    while True:
        events = httpx.post(
            f"{api}/events/filter",
            json={"filter": {"event": {"prefix": ["haplane."]}}, "limit": 50},
            timeout=10,
            headers=auth_headers(),
        ).json()["events"]
        seen = {(e["event"], e["resource"]["prefect.resource.id"]) for e in events}
        if wanted <= seen or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert wanted <= seen, seen
    assert not any("PRIVATE KEY" in str(e["payload"]) for e in events)

    # with nothing wrong, the next check changes nothing
    before = len(ops_cloud.mutating_calls())
    started = time.monotonic()
    later = None
    while time.monotonic() - started < 60 and later is None:
        for run in flow_runs(api, "health-check", state={"type": {"any_": ["COMPLETED"]}}):
            if run["start_time"] and run["start_time"] > check["end_time"]:
                later = run
                break
        time.sleep(2)
    assert later is not None, "no later scheduled health check ran"
    assert "healthy" in later["state"]["message"]
    assert len(ops_cloud.mutating_calls()) == before
