"""Key material cannot reach persistence: a failed call that carried private keys leaves no trace of them.

``setMetadata`` carries a replica's private keys. When it fails, google-api-core's exception keeps
the request (with the keys); Prefect persists a task's final exception and logs it. These tests make
that call fail on the emulator and look for key material where Prefect keeps things: the server's
database, the result storage, logs, artifacts and events.
"""

from __future__ import annotations

import pickle
import traceback
import uuid
from pathlib import Path

import cloudpickle
import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from haplane.cloud.gce import request_id
from haplane.cloud.pki import new_ca
from haplane.core.scrub import SecretCallFailed
from haplane.testing import REGION
from tests.fixtures.cluster import PROJECT
from tests.unit.test_secrets import _key_lines, _leaks

ZONE = "europe-west1-b"
PEM_MARKER = b"PRIVATE KEY-----"


def test_a_failed_setmetadata_carries_no_key(cloud):
    """The raw client's error keeps the key (the leak); haplane's error holds strings only."""
    gce = cloud.gce
    gce.wait(
        gce.insert_instance(
            ZONE,
            "bare",
            machine_type="e2-small",
            labels={},
            metadata={},
            tags=[],
            external_ip=False,
            rid=request_id("secrets", "bare"),
        )
    )
    key = new_ca("x", "etcd-ca").key_pem.get_secret_value()
    needles = _key_lines(key) + [PEM_MARKER]

    # the leak this guards against: google-api-core's exception pickles with the request body
    cloud.admin.add_fault("compute.instances.setMetadata", "503")
    raw_req = compute_v1.SetMetadataInstanceRequest(
        project=PROJECT,
        zone=ZONE,
        instance="bare",
        request_id=str(uuid.uuid4()),
        metadata_resource=compute_v1.Metadata(items=[compute_v1.Items(key="haplane-tls-etcd-peer-key", value=key)]),
    )
    with pytest.raises(gexc.ServiceUnavailable) as raw:
        gce.instances.set_metadata_unary(request=raw_req)
    assert _leaks(pickle.dumps(raw.value), needles), "the control case should carry the key"

    for mode, status in (("503", 503), ("429", 429)):
        cloud.admin.add_fault("compute.instances.setMetadata", mode)
        with pytest.raises(SecretCallFailed) as caught:
            gce.set_metadata(ZONE, "bare", {"haplane-tls-etcd-peer-key": key}, rid=str(uuid.uuid4()))
        err = caught.value
        assert err.status == status and err.transient
        assert err.__cause__ is None and err.__context__ is None
        assert "setMetadata of instance bare" in str(err)
        for blob in (
            pickle.dumps(err),
            cloudpickle.dumps(err),
            repr(err).encode(),
            "".join(traceback.format_exception(err)).encode(),
        ):
            assert not _leaks(blob, needles)
        assert pickle.loads(pickle.dumps(err)).status == status
    assert "haplane-tls-etcd-peer-key" not in gce.get_instance(ZONE, "bare").metadata


def _prefect_records(url: str, flow_run_id: str) -> bytes:
    """Everything the API shows of the run: logs, artifacts, events, task-run states."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as api:
        out.append(
            api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}).content
        )
        out.append(api.post("/artifacts/filter", json={"limit": 200}).content)
        out.append(api.post("/events/filter", json={"limit": 200}).content)
        out.append(api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).content)
        out.append(api.get(f"/flow_runs/{flow_run_id}").content)
    return b"\n".join(out)


def _drain() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=15)
        except Exception:  # nothing pending
            pass


def test_a_failed_configure_persists_no_key(cloud, prefect_api):
    """create-cluster whose setMetadata keeps failing: the run fails, and no private key is in the
    Prefect database, the result storage, the logs, artifacts or events."""
    from prefect.client.orchestration import get_client

    cluster = f"leak-{uuid.uuid4().hex[:5]}"
    # every attempt fails: the configure task's 3 retries, for its one replica
    cloud.admin.add_fault("compute.instances.setMetadata", "503", count=20)
    with pytest.raises(Exception, match="setMetadata of instance .* 503"):
        create_cluster(cluster=cluster, region=REGION, zones=[ZONE], replicas=1)
    assert len(cloud.admin.calls("compute.instances.setMetadata")) >= 2
    _drain()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=5, sort="START_TIME_DESC")
    run = next(r for r in runs if r.parameters.get("cluster") == cluster)
    assert run.state.is_failed() and "private keys" in (run.state.message or "")

    scanned: dict[str, bytes] = {"API": _prefect_records(prefect_api.url, str(run.id))}
    home = Path(prefect_api.home)
    for path in home.rglob("*"):
        if path.is_file():
            scanned[str(path.relative_to(home))] = path.read_bytes()
    assert any(name.startswith("storage") for name in scanned), "no result storage was scanned"
    assert any(name.startswith("prefect.db") for name in scanned), "the database was not scanned"
    leaks = {name: _leaks(blob, [PEM_MARKER]) for name, blob in scanned.items()}
    assert not {k: v for k, v in leaks.items() if v}, "key material persisted"

    cloud.admin.clear_faults()
    delete_cluster(cluster=cluster)
