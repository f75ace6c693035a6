"""haplane watch end to end (long): a real Prefect server, a process worker, the watcher as its own process.

One cluster of three replicas (instant profile) shared by the steps, in order:

1. its scheduled check is an hour away; a replica is killed: the watcher's ``haplane.replica.unhealthy``
   event, the cluster's automation and the health check replace it, and the check's run shows the
   automation (and through it the event) that started it;
2. the watcher is stopped: ``haplane-watcher-down`` fires (no heartbeat), and the scheduled backstop
   (a short schedule here) still replaces a killed replica.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from haplane.processes import stop_group
from haplane.testing import REGION, ZONES
from tests.fixtures.cluster import PROJECT

pytestmark = [pytest.mark.long, pytest.mark.timeout(900), pytest.mark.usefixtures("prefect_api")]

CLUSTER = f"w-{uuid.uuid4().hex[:4]}"
SILENCE_S = 15.0  # the watcher-down automation's window here (3 minutes by default)


def events(api: str, name: str, prefix: str = "", since: float | None = None) -> list[dict]:
    flt: dict = {"event": {"name": [name]}}
    if prefix:
        flt["any_resource"] = {"id_prefix": [prefix]}
    if since is not None:
        flt["occurred"] = {"since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))}
    body = {"filter": flt, "limit": 50}
    return httpx.post(f"{api}/events/filter", json=body, timeout=10).raise_for_status().json()["events"]


def flow_runs(api: str, flow: str, **flt) -> list[dict]:
    body = {"flows": {"name": {"any_": [flow]}}, "flow_runs": flt, "sort": "EXPECTED_START_TIME_DESC"}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).raise_for_status().json()


def run_log(api: str, run_id: str) -> str:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    return "\n".join(r["message"] for r in httpx.post(f"{api}/logs/filter", json=body, timeout=10).json())


def eventually(what: str, probe, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def replaced(api: str, victim: str) -> dict | None:
    for run in flow_runs(
        api, "replace-replica", tags={"all_": ["haplane-remediation", f"cluster:{CLUSTER}", f"replica:{victim}"]}
    ):
        assert run["state_type"] not in ("FAILED", "CRASHED"), run_log(api, run["id"])[-3000:]
        if run["state_type"] == "COMPLETED":
            return run
    return None


def check_of(api: str, replace_run: dict) -> dict:
    parent = httpx.get(f"{api}/task_runs/{replace_run['parent_task_run_id']}", timeout=10).json()
    return httpx.get(f"{api}/flow_runs/{parent['flow_run_id']}", timeout=10).json()


@pytest.fixture(scope="module")
def cluster(prefect_api, ops_cloud, workspace):
    from flows.create_cluster import create_cluster

    rows = create_cluster(cluster=CLUSTER, region=REGION, zones=ZONES, replicas=3)
    assert [r["health"] for r in rows] == ["healthy"] * 3
    from deployments.setup import ensure_health_schedules, ensure_watch_automations

    ensure_health_schedules([CLUSTER], 3600, None)  # the backstop: an hour away
    ensure_watch_automations([CLUSTER], None, watcher_silence_s=SILENCE_S)
    try:
        yield CLUSTER
    finally:  # leave no schedule running for the modules after this one
        with httpx.Client(base_url=prefect_api.url, timeout=10) as http:
            body = {"flows": {"name": {"any_": ["health-check"]}}}
            for deployment in http.post("/deployments/filter", json=body).json():
                for s in http.get(f"/deployments/{deployment['id']}/schedules").json():
                    http.patch(f"/deployments/{deployment['id']}/schedules/{s['id']}", json={"active": False})


@pytest.fixture(scope="module")
def watcher(prefect_api, ops_cloud, cluster, tmp_path_factory):
    log = tmp_path_factory.mktemp("watch") / "watch.log"
    env = prefect_api.env() | {
        "HAPLANE_GCE_ENDPOINT": ops_cloud.emulator.url,
        "HAPLANE_PROJECT": PROJECT,
        "HAPLANE_GCE_TOKEN": ops_cloud.emulator.workers_token,  # reads the operator key in Secret Manager
        "HAPLANE_WATCH_HEARTBEAT_S": "3",
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "haplane"), "watch", "--period", "2", "--name", "test-watch"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        eventually("a heartbeat of the watcher", lambda: events(prefect_api.url, "haplane.watch.alive"), 90)
        proc.log = log
        yield proc
    finally:
        stop_group(proc)


def kill(ops_cloud, index: int):
    rows = sorted(ops_cloud.gce.list_instances(ZONES, labels={"haplane-cluster": CLUSTER}), key=lambda i: i.name)
    assert len(rows) == 3
    victim = rows[index]
    ops_cloud.admin.kill_vm(PROJECT, victim.zone, victim.name)
    return victim, time.time()


def test_a_backlog_of_checks_of_one_cluster_starts_one_run(prefect_api, cluster):
    """Late checks piled up (no worker yet here): the first to start takes the cluster's deployment slot,
    the others are cancelled by the server instead of each starting a process that then skips."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Pending

    from deployments.setup import cluster_health_deployment

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(cluster_health_deployment(CLUSTER))
        runs = [client.create_flow_run_from_deployment(deployment.id) for _ in range(3)]
        try:
            states = [client.set_flow_run_state(r.id, Pending()).state.type.value for r in runs]
        finally:
            for r in runs:
                client.set_flow_run_state(r.id, Cancelled(), force=True)
    assert states == ["PENDING", "CANCELLED", "CANCELLED"], states


def test_a_killed_replica_is_replaced_through_the_watchers_event(prefect_api, prefect_worker, ops_cloud, watcher):
    api = prefect_api.url
    assert not events(api, "haplane.replica.unhealthy", f"haplane.cluster.{CLUSTER}"), "healthy: no event yet"
    victim, killed = kill(ops_cloud, 0)
    rid = f"haplane.cluster.{CLUSTER}.replica.{victim.name}"
    seen = eventually(
        "the watcher's unhealthy event",
        lambda: [
            e for e in events(api, "haplane.replica.unhealthy", rid) if e["resource"].get("haplane.source") == "watch"
        ],
        30,
    )
    run = eventually("the replacement", lambda: replaced(api, victim.name), 240, every=2)
    check = check_of(api, run)
    assert check["parameters"]["cluster"] == CLUSTER
    # the run history shows what started the check: the cluster's automation, fired by the watcher's event
    assert check["created_by"]["type"] == "AUTOMATION", check["created_by"]
    automation = httpx.get(f"{api}/automations/{check['created_by']['id']}", timeout=10).json()
    assert automation["name"] == f"haplane-{CLUSTER}-replica-unhealthy"
    fired = eventually(
        "the automation's triggered event",
        lambda: [
            e
            for e in events(api, "prefect.automation.triggered", f"prefect.automation.{automation['id']}")
            if any(r.get("prefect.resource.id") == f"prefect.event.{seen[-1]['id']}" for r in e["related"])
            or seen[-1]["id"] in str(e["payload"])
        ],
        30,
    )
    assert fired
    # after the replacement: recovered, and the cluster healthy again
    eventually("recovered", lambda: events(api, "haplane.replica.recovered", rid), 60)

    def at(iso: str) -> float:
        return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    event_at = min(at(e["occurred"]) for e in seen)
    print(
        f"\nkill -> unhealthy event {event_at - killed:.1f} s; -> check created {at(check['created']) - killed:.1f} s;"
        f" -> check running {at(check['start_time']) - killed:.1f} s (its process's imports)"
    )
    scheduled = [r for r in flow_runs(api, "health-check") if r["auto_scheduled"] and r["state_type"] != "SCHEDULED"]
    assert not scheduled, "the hourly schedule did not run meanwhile"


def test_with_the_watcher_stopped_the_backstop_still_replaces(prefect_api, prefect_worker, ops_cloud, watcher):
    api = prefect_api.url
    stopped = time.time()
    watcher.send_signal(signal.SIGTERM)
    watcher.wait(30)
    eventually(
        "haplane-watcher-down",
        lambda: [
            e
            for e in events(api, "prefect.automation.triggered", since=stopped)
            if e["resource"].get("prefect.resource.name") == "haplane-watcher-down"
        ],
        SILENCE_S + 60,
    )
    print(f"\nwatcher stopped -> haplane-watcher-down after {time.time() - stopped:.0f} s")
    from deployments.setup import ensure_health_schedules

    victim, _ = kill(ops_cloud, 1)
    ensure_health_schedules([CLUSTER], 15, None)
    run = eventually("the scheduled replacement", lambda: replaced(api, victim.name), 300, every=2)
    check = check_of(api, run)
    assert check["created_by"] is None or check["created_by"]["type"] != "AUTOMATION"
    assert check["auto_scheduled"], check
    assert os.path.exists(watcher.log)
