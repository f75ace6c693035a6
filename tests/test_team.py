"""haplane run as a team runs it: Prefect on PostgreSQL, two workers, checkpoints in shared storage.

One module, one real PostgreSQL (``tests/fixtures/postgres.py``), a Prefect server on it, a GCE
emulator with real etcd per VM, and two ``prefect worker start --type process`` on pool ``haplane``
with separate PREFECT_HOMEs. The workspace is set up as the README's production variant says:
``setup-workspace --project --endpoint --result-storage`` (a LocalFileSystem block on a path both
workers share). The workers have no HAPLANE_PROJECT: runs started over the API without
``connection`` get the workspace's connection block as the deployments' default.

Long (``pytest -m long``; ``.ci/run`` installs PostgreSQL and runs it).
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.testing import REGION, ZONES
from haplane.testing.prefect import auth_headers
from haplane.testing.worker import start_worker
from tests.fixtures.cluster import PROJECT, Cloud, api_through, workers_gce
from tests.test_operate import start_deployment, wait_run
from tests.test_resume import ADD_STEPS

pytestmark = [pytest.mark.long, pytest.mark.timeout(900)]

CLUSTER = f"team-{uuid.uuid4().hex[:4]}"
CONNECTION = "team"


@pytest.fixture(scope="module")
def team_cloud(tmp_path_factory: pytest.TempPathFactory):
    """An emulator of the module's own; nothing of it goes into the environment the workers inherit."""
    state = tmp_path_factory.mktemp("team-emulator")
    emulator = Emulator(state_dir=state, runtime=ProcessRuntime(state))
    emulator.start()
    admin = EmulatorAdmin(emulator.url)
    try:
        yield Cloud(emulator=emulator, admin=admin, gce=workers_gce(emulator), state_dir=state)
    finally:
        admin.close()
        emulator.stop()


@pytest.fixture(scope="module")
def team_workspace(prefect_on_postgres, team_cloud, tmp_path_factory):
    from prefect.filesystems import LocalFileSystem

    from deployments.setup import setup_workspace

    shared = tmp_path_factory.mktemp("shared-results")
    LocalFileSystem(basepath=str(shared)).save("haplane-results", overwrite=True)
    setup_workspace(
        project=PROJECT,
        endpoint=team_cloud.emulator.url,
        connection=CONNECTION,
        result_storage="local-file-system/haplane-results",
        token=team_cloud.emulator.workers_token,
    )
    return shared


@pytest.fixture(scope="module")
def two_workers(prefect_on_postgres, team_workspace, tmp_path_factory):
    workers = {}
    try:
        for name in ("team-a", "team-b"):
            home = tmp_path_factory.mktemp(f"home-{name}")
            workers[name] = start_worker(
                prefect_on_postgres,
                {"PREFECT_HOME": str(home)},
                home / "worker.log",
                name=name,
                env_drop=("HAPLANE_GCE_ENDPOINT", "HAPLANE_PROJECT", "HAPLANE_GCE_TOKEN"),
            )
        yield workers
    finally:
        for worker in workers.values():
            worker.stop()


def task_runs(api: str, flow_run_id: str) -> list[dict]:
    body = {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    return (
        httpx.post(f"{api}/task_runs/filter", json=body, timeout=10, headers=auth_headers()).raise_for_status().json()
    )


def checkpoint_steps(api: str, flow_run_id: str) -> list[tuple[str, str]]:
    """(step, state name) of the run's checkpointed steps (tasks made with ``tasks.steps.checkpoint``)."""
    import importlib

    import tasks.pki
    import tasks.steps
    from tasks.kinds import handler_modules
    from tasks.results import CheckpointTask

    kinds = [importlib.import_module(f"tasks.kinds.{m}") for m in handler_modules()]
    fns = {
        t.fn.__name__
        for m in (tasks.pki, tasks.steps, *kinds)
        for t in vars(m).values()
        if isinstance(t, CheckpointTask)
    }
    return [(t["name"], t["state_name"]) for t in task_runs(api, flow_run_id) if t["task_key"].split("-")[0] in fns]


def test_operate_on_postgresql_with_the_workspace_connection(prefect_on_postgres, two_workers, team_cloud):
    api, pg = prefect_on_postgres.url, prefect_on_postgres.postgres
    # every deployment defaults to the workspace's connection block
    for name in ("create-cluster", "add-replica", "replace-replica", "health-check"):
        deployment = httpx.get(f"{api}/deployments/name/{name}/{name}", timeout=10, headers=auth_headers()).json()
        assert deployment["parameters"].get("connection") == CONNECTION, deployment["parameters"]

    # the README's REST recipe, without `connection`, picked up by one of the two workers
    run = start_deployment(
        api,
        "create-cluster/create-cluster",
        {
            "cluster": CLUSTER,
            "region": REGION,
            "zones": ZONES,
            "replicas": 1,
            # the seed's endpoint mode: its 1 -> 2 add waits on the forwarding rule,
            # where the worker is killed below
            "load_balancer": "as-needed",
        },
        f"{CLUSTER}-create",
    )
    done = wait_run(api, run["id"], timeout=300)
    assert done["state_type"] == "COMPLETED", done["state"]
    assert done["parameters"]["connection"] == CONNECTION
    # the run history is in PostgreSQL
    assert pg.query(f"select state_type from flow_run where id = '{run['id']}'") == "COMPLETED"
    # the cluster's PKI block was saved encrypted with PREFECT_SERVER_ENCRYPTION_KEY: no key in the database
    assert pg.query("select count(*) from configuration where key = 'ENCRYPTION_KEY'") == "0"
    assert pg.query(f"select count(*) from block_document where name = '{CLUSTER}-pki'") == "1"
    assert len(team_cloud.gce.list_instances(ZONES, labels={"haplane-cluster": CLUSTER})) == 1

    # an idempotency key keeps returning its run, also after that run failed; a new key starts a new run
    params = {"cluster": "no-such-cluster", "zone": "europe-west1-b"}
    failed = start_deployment(api, "add-replica/add-replica", params, "add-to-nothing")
    assert wait_run(api, failed["id"])["state_type"] == "FAILED"
    again = start_deployment(api, "add-replica/add-replica", params, "add-to-nothing")
    assert again["id"] == failed["id"] and again["state_type"] == "FAILED"
    fresh = start_deployment(api, "add-replica/add-replica", params, "add-to-nothing-2")
    assert fresh["id"] != failed["id"]
    wait_run(api, fresh["id"])


def test_a_change_killed_on_one_worker_resumes_on_the_other(
    prefect_on_postgres, two_workers, team_cloud, team_workspace
):
    from tasks.cluster import force_unlock
    from tasks.pki import load_certs

    api, cloud = prefect_on_postgres.url, team_cloud
    assert len(cloud.gce.list_instances(ZONES, labels={"haplane-cluster": CLUSTER})) == 1, "needs the cluster above"
    endpoint = cloud.gce.get_address(REGION, f"{CLUSTER}-master-ip").address
    cloud.admin.clear_calls()
    # the load balancer's forwarding rule hangs: the worker is killed while the run waits on it
    cloud.admin.add_fault("compute.forwardingRules.insert", "hang")
    params = {"cluster": CLUSTER, "zone": "europe-west1-c"}
    killed = start_deployment(api, "add-replica/add-replica", params, f"{CLUSTER}-grow")

    deadline, victim = time.monotonic() + 300, None
    while time.monotonic() < deadline and victim is None:
        held = [c for c in cloud.admin.calls() if c["method"] == "compute.forwardingRules.insert"]
        waiting = [
            t for t in task_runs(api, killed["id"]) if t["state_type"] == "RUNNING" and t["name"].startswith("wait ")
        ]
        if held and waiting:
            victim = next((n for n, w in two_workers.items() if w.flow_run_pids()), None)
        time.sleep(0.5)
    assert victim is not None, f"the run never waited on the forwarding rule: {cloud.admin.calls()[-5:]}"
    two_workers[victim].stop(sig=9)  # the machine dies: worker and flow run, no clean-up
    survivor = next(n for n in two_workers if n != victim)

    done_before = {step for step, state in checkpoint_steps(api, killed["id"]) if state == "Completed"}
    assert any(s.startswith("vm/") for s in done_before) and "forwarding-rule" in done_before, done_before
    cloud.admin.clear_faults()  # the held operation completes on its own
    assert force_unlock(CLUSTER)  # as the operator would, instead of waiting out the dead run's lease

    # the README: run the flow again with the killed run's change id; only the survivor is left to run it
    resumed = start_deployment(
        api, "add-replica/add-replica", params | {"change_id": f"add-{killed['id']}"}, f"{CLUSTER}-grow-resume"
    )
    done = wait_run(api, resumed["id"], timeout=400)
    assert done["state_type"] == "COMPLETED", done["state"]
    assert (
        f"submitting flow run '{resumed['id']}'" in two_workers[survivor].log.read_text()
        or resumed["id"] in two_workers[survivor].log.read_text()
    )

    # every step the killed run had completed came back from the shared checkpoints (Cached), not run again
    cached = {step for step, state in checkpoint_steps(api, resumed["id"]) if state == "Cached"}
    assert done_before <= cached, done_before - cached
    # and no mutating GCE call was sent twice
    mutating = cloud.mutating_calls()
    ids = [c["requestId"] for c in mutating]
    assert len(ids) == len(set(ids)), [(c["method"], c["outcome"]) for c in mutating if ids.count(c["requestId"]) > 1]
    assert [c["method"] for c in mutating] == ADD_STEPS, [c["method"] for c in mutating]
    assert all(c["outcome"] in ("ok", "fault:hang") for c in mutating), mutating

    vms = cloud.gce.list_instances(ZONES, labels={"haplane-cluster": CLUSTER})
    assert sorted(v.zone for v in vms) == ["europe-west1-b", "europe-west1-c"]
    assert cloud.gce.get_forwarding_rule(REGION, f"{CLUSTER}-master-lb").ip == endpoint
    assert api_through(endpoint, load_certs(CLUSTER).ca.cert_pem).status_code == 200
    assert any(team_workspace.rglob("*")), "no checkpoint in the shared result storage"


def test_an_unauthenticated_request_is_refused_and_starts_nothing(prefect_on_postgres, team_workspace):
    """The server runs with PREFECT_SERVER_API_AUTH_STRING (as the README's production set-up): without the
    credential, or with a wrong one, deployments, block documents and flow-run creation answer 401 and
    nothing starts; haplane's CLI says which setting to fix instead of printing a traceback."""
    import base64
    import subprocess
    import sys

    api = prefect_on_postgres.url
    deployment = (
        httpx.get(f"{api}/deployments/name/delete-cluster/delete-cluster", headers=auth_headers(), timeout=10)
        .raise_for_status()
        .json()
    )

    def flow_runs() -> int:
        return (
            httpx.post(f"{api}/flow_runs/count", json={}, headers=auth_headers(), timeout=10).raise_for_status().json()
        )

    before = flow_runs()
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"haplane:wrong").decode()}):
        calls = [
            ("POST", "/deployments/filter", {}),
            ("GET", f"/deployments/{deployment['id']}", None),
            ("POST", "/block_documents/filter", {"include_secrets": True}),
            (
                "POST",
                f"/deployments/{deployment['id']}/create_flow_run",
                {"parameters": {"cluster": CLUSTER, "connection": CONNECTION}},
            ),
        ]
        for verb, path, body in calls:
            reply = httpx.request(verb, api + path, json=body, headers=headers, timeout=10)
            assert reply.status_code == 401, (verb, path, headers, reply.status_code)
            assert "BEGIN" not in reply.text and CLUSTER not in reply.text
    assert flow_runs() == before, "an unauthenticated request started a flow run"

    for auth in ("haplane:wrong", None):
        env = prefect_on_postgres.env()
        env.pop("PREFECT_API_AUTH_STRING", None)
        if auth:
            env["PREFECT_API_AUTH_STRING"] = auth
        out = subprocess.run(
            [sys.executable, "-m", "haplane.cli", "migrate-keys", CLUSTER],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert out.returncode == 1, out
        assert "PREFECT_API_AUTH_STRING" in out.stderr and "401" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr, out.stderr


def test_the_watcher_works_with_the_credential_and_names_it_without(prefect_on_postgres, team_workspace, tmp_path):
    """``haplane watch`` as the production set-up runs it (PREFECT_API_AUTH_STRING set, the workspace's
    connection): its heartbeat reaches the authenticated server. Without the credential it stops at once
    and names the setting to fix, without a traceback."""
    import subprocess
    import sys
    from pathlib import Path

    from haplane.processes import stop_group
    from tests.test_watch_flow import eventually

    api = prefect_on_postgres.url
    haplane = str(Path(sys.executable).parent / "haplane")

    def heartbeats(name: str) -> list[dict]:
        body = {"filter": {"event": {"name": ["haplane.watch.alive"]}}, "limit": 50}
        found = httpx.post(f"{api}/events/filter", json=body, headers=auth_headers(), timeout=10)
        events = found.raise_for_status().json()["events"]
        return [e for e in events if name in str(e["resource"])]

    env = prefect_on_postgres.env() | {"HAPLANE_WATCH_HEARTBEAT_S": "3"}
    assert env.get("PREFECT_API_AUTH_STRING")
    log = tmp_path / "watch.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [haplane, "watch", "--period", "2", "--name", "team-watch"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        eventually("a heartbeat of the authenticated watcher", lambda: heartbeats("team-watch"), 240)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        stop_group(proc)

    env.pop("PREFECT_API_AUTH_STRING")
    out = subprocess.run(
        [haplane, "watch", "--period", "2", "--name", "no-credential"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 1, out
    assert "PREFECT_API_AUTH_STRING" in out.stderr and "401" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert not heartbeats("no-credential")
