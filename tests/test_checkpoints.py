"""Checkpoints: versioned JSON, refused in another schema, shared by workers through the workspace's result storage.

Real Prefect (the session's server), real result storage blocks; the step below stands for any
mutating step of ``tasks/`` (same decorator, same key, same serializer). The two "workers" of the
last test are separate processes with separate PREFECT_HOMEs, like two machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect import flow

from blocks.store import snapshot_store
from haplane.cloud.gce import OpRef
from tasks.results import CheckpointSchemaError
from tasks.steps import Change, checkpoint

REPO = Path(__file__).resolve().parent.parent


@checkpoint(retries=0)
def a_step(change: Change, step: str, value: str, marker: str | None = None) -> OpRef:
    """Stands for a submit task: records that it ran (the marker file), returns an operation reference."""
    if marker:
        Path(marker).write_text(value)
    return OpRef(name=f"operation-{value}", scope="zone", location="europe-west1-b", kind="insert")


@flow
def change_flow(cluster: str, change_id: str, value: str, marker: str | None = None) -> dict:
    state = a_step(Change(cluster, change_id), "vm/insert", value, marker, return_state=True)
    return {"op": state.result().name, "state": state.name}


def record_path(root: Path, cluster: str, change_id: str) -> Path:
    return root / "haplane" / cluster / change_id / "vm~insert"


def test_checkpoint_is_versioned_json_and_another_schema_is_refused(prefect_api, tmp_path):
    cluster, change_id = f"ck-{uuid.uuid4().hex[:6]}", "add-1"
    first = change_flow(cluster, change_id, "one", str(tmp_path / "ran-1"))
    assert first == {"op": "operation-one", "state": "Completed"}

    path = record_path(prefect_api.home / "storage", cluster, change_id)
    record = json.loads(path.read_text())
    assert record["metadata"]["serializer"]["type"] == "haplane-checkpoint"
    doc = json.loads(record["result"])  # the result itself is JSON, not a pickle
    assert doc["haplane-checkpoint"] == 1 and doc["kind"] == "gce-operation"
    assert doc["value"]["name"] == "operation-one"

    again = change_flow(cluster, change_id, "two", str(tmp_path / "ran-2"))
    assert again == {"op": "operation-one", "state": "Cached"}  # the first run's operation, not a new call
    assert not (tmp_path / "ran-2").exists()

    # a checkpoint written by a haplane with checkpoint schema 2 (say, a newer version, rolled back)
    doc["haplane-checkpoint"] = 2
    record["result"] = json.dumps(doc)
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointSchemaError) as refused:
        change_flow(cluster, change_id, "three", str(tmp_path / "ran-3"))
    message = str(refused.value)
    assert f"haplane/{cluster}/{change_id}/vm~insert" in message
    assert "schema 2" in message and "reads schema 1" in message and "change_id" in message
    assert not (tmp_path / "ran-3").exists(), "the step ran although its checkpoint was refused"


@pytest.fixture
def oauth_token_endpoint():
    """Google's OAuth token endpoint, stood in for on loopback: prefect-gcp's GcsBucket always signs in with
    its service-account credentials (the GCS API emulator ignores the token), and the test is offline."""
    import http.server
    import threading

    class Token(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["local-file-system", "gcs-bucket"])
def shared_results(request, prefect_api, tmp_path):
    """The workspace's result storage as ``haplane setup-workspace --result-storage`` sets it: a LocalFileSystem
    block on a shared path, or a prefect-gcp GcsBucket block on a real GCS API emulator (the production code
    path); the server's default is cleared afterwards. Yields a function listing the stored keys."""
    from prefect.client.orchestration import get_client
    from prefect.filesystems import LocalFileSystem

    from deployments.setup import ensure_result_storage

    name = f"results-{uuid.uuid4().hex[:6]}"
    if request.param == "local-file-system":
        root = tmp_path / "shared-results"
        LocalFileSystem(basepath=str(root)).save(name)

        def stored() -> list[str]:
            return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    else:
        from prefect_gcp.cloud_storage import GcsBucket

        gcs = request.getfixturevalue("gcs")
        gcs.create_bucket(name)
        token_uri = request.getfixturevalue("oauth_token_endpoint")
        from prefect_gcp import GcpCredentials

        made = gcs.credentials()  # a service-account key generated for the test
        credentials = GcpCredentials(
            project=made.project,
            service_account_info=made.service_account_info.get_secret_value() | {"token_uri": token_uri},
        )
        bucket = GcsBucket(bucket=name, gcp_credentials=credentials)
        bucket.save(name)

        def stored() -> list[str]:
            return [blob.name for blob in bucket.list_blobs()]

    ensure_result_storage(f"{request.param}/{name}")
    try:
        yield stored
    finally:
        with get_client(sync_client=True) as client:
            client.clear_server_default_result_storage()


def run_as_worker(prefect_api, home: Path, cluster: str, change_id: str, value: str, marker: Path) -> dict:
    """The flow in a process of its own with its own PREFECT_HOME, like a worker on another machine."""
    home.mkdir()
    env = dict(os.environ, PREFECT_API_URL=prefect_api.url, PREFECT_HOME=str(home), PYTHONPATH=str(REPO))
    code = (
        "import json, sys; from tests.test_checkpoints import change_flow; "
        "print('RESULT=' + json.dumps(change_flow(*sys.argv[1:])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, cluster, change_id, value, str(marker)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line.removeprefix("RESULT="))


def test_a_checkpoint_written_by_one_worker_is_read_by_the_other(prefect_api, shared_results, tmp_path):
    cluster, change_id = f"ck-{uuid.uuid4().hex[:6]}", "replace-1"
    a = run_as_worker(prefect_api, tmp_path / "home-a", cluster, change_id, "a", tmp_path / "ran-a")
    assert a == {"op": "operation-a", "state": "Completed"} and (tmp_path / "ran-a").exists()
    assert f"haplane/{cluster}/{change_id}/vm~insert" in shared_results()
    assert not (tmp_path / "home-a" / "storage").exists(), "worker A wrote its checkpoint to its own home"

    b = run_as_worker(prefect_api, tmp_path / "home-b", cluster, change_id, "b", tmp_path / "ran-b")
    assert b == {"op": "operation-a", "state": "Cached"}
    assert not (tmp_path / "ran-b").exists(), "worker B ran the step again instead of reading A's checkpoint"


@flow
def snapshot_before_flow(cluster: str, change_id: str) -> dict:
    """The snapshot every membership change takes first, as run_change takes it (one per change id)."""
    from blocks.store import load_spec
    from tasks.snapshots import snapshot_for_change

    state = snapshot_for_change(Change(cluster, change_id), "snapshot-before", load_spec(cluster), return_state=True)
    return {"meta": state.result(), "state": state.name}


def test_the_snapshot_before_a_change_is_a_json_checkpoint_found_by_a_second_run(cloud, prefect_api):
    """A resumed change finds the snapshot its first run took instead of taking another: the step's
    checkpoint is plain JSON (its metadata was once a dataclass the serializer refused, so nothing was
    written and every run of the change took a new snapshot)."""
    from flows.create_cluster import create_cluster

    cluster, change_id = f"cks-{uuid.uuid4().hex[:5]}", "add-cks-1"
    create_cluster(cluster=cluster, region="europe-west1", zones=["europe-west1-b"], replicas=1)
    first = snapshot_before_flow(cluster, change_id)
    assert first["state"] == "Completed"
    path = record_path(prefect_api.home / "storage", cluster, change_id).with_name("snapshot-before")
    assert path.exists(), "the snapshot step left no checkpoint: a resumed change would take another snapshot"
    doc = json.loads(json.loads(path.read_text())["result"])
    assert doc["kind"] == "json" and doc["value"]["cluster"] == cluster and doc["value"] == first["meta"]

    again = snapshot_before_flow(cluster, change_id)
    assert again == {"meta": first["meta"], "state": "Cached"}
    assert [m.snapshot_id for m in snapshot_store(None).snapshots(cluster)] == [doc["value"]["snapshot_id"]]
