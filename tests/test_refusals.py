"""Refusals change nothing: a bad request is answered with a clear error and no mutating GCE call.

Also: ``dry_run=True`` returns the plan and changes nothing, and a second mutating flow on a
cluster whose lock is held fails fast.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from prefect import flow

from flows.add_replica import add_replica
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.remove_replica import remove_replica
from flows.replace_replica import replace_replica
from haplane.core.plans import Plan
from haplane.core.steps import STEP_SCHEMA
from haplane.processes import stop_group
from haplane.testing import REGION, ZONES
from tasks.steps import SCHEMA_STEP, Change, remember
from tests.fixtures.cluster import PROJECT

pytestmark = pytest.mark.usefixtures("prefect_api")


def _refused(cloud, call, match: str, cluster: str | None = None) -> None:
    """``cluster``: only that cluster's calls count (the emulator is shared with other tests)."""
    cloud.admin.clear_calls()
    with pytest.raises(Exception, match=match):
        call()
    assert cloud.mutating_calls(cluster) == [], "a refused request changed something"


@flow
def _record_step_schema(cluster: str, change_id: str, version: int) -> None:
    """What an older haplane left behind: the change's step-schema checkpoint."""
    remember(Change(cluster, change_id), SCHEMA_STEP, version)


def test_create_refusals_change_nothing(shared_cloud):
    cloud = shared_cloud
    _refused(
        cloud,
        lambda: create_cluster(cluster="two", region=REGION, zones=ZONES, replicas=2),
        "worse than one",
        cluster="two",
    )
    _refused(
        cloud,
        lambda: create_cluster(cluster="four", region=REGION, zones=ZONES, replicas=4),
        "even count",
        cluster="four",
    )
    _refused(
        cloud,
        lambda: create_cluster(cluster="far", region=REGION, zones=["us-central1-a"], replicas=1),
        "not a zone of region 'europe-west1'",
        cluster="far",
    )
    _refused(
        cloud,
        lambda: create_cluster(cluster="nozone", region=REGION, zones=["europe-west1-z"], replicas=1),
        "not a zone of region",
        cluster="nozone",
    )
    _refused(
        cloud,
        lambda: create_cluster(cluster="noregion", region="mars-north1", zones=["mars-north1-a"]),
        "region 'mars-north1' is unknown",
        cluster="noregion",
    )
    _refused(
        cloud,
        lambda: create_cluster(cluster="Bad_Name", region=REGION, zones=ZONES),
        "not valid",
        cluster="Bad_Name",
    )


@pytest.mark.long  # 40 s: .ci/run runs it; the README's suite stays under 10 min (the bad-input table is quick)
def test_refusals_on_a_cluster_change_nothing(cloud, prefect_api):
    cluster = "refuse"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    names = {r["zone"]: r["replica"] for r in rows}

    # dry runs return the plan and change nothing
    cloud.admin.clear_calls()
    plan = add_replica(cluster=cluster, zone="europe-west1-b", dry_run=True)
    assert isinstance(plan, Plan) and plan.voting_before == 3 and plan.voting_after == 4 and plan.lb == "extend"
    assert "even count" in plan.even_note
    plan = remove_replica(cluster=cluster, zone="europe-west1-c", dry_run=True)
    assert plan.replica == names["europe-west1-c"] and plan.voting_after == 2
    assert cloud.mutating_calls() == []

    _refused(cloud, lambda: add_replica(cluster=cluster, zone="us-central1-a"), "not a zone of region")
    _refused(cloud, lambda: add_replica(cluster="nosuch", zone="europe-west1-b"), "unknown")
    _refused(
        cloud,
        lambda: remove_replica(cluster=cluster, zone="europe-west1-b", replica_name="nosuch"),
        "no replica named 'nosuch'",
    )
    _refused(cloud, lambda: remove_replica(cluster=cluster, zone="europe-west1-f"), "no replica in zone")
    _refused(cloud, lambda: replace_replica(cluster=cluster, replica_name="nosuch"), "no replica named")

    # a change recorded under another step schema (its checkpoints have other ids) is not resumed
    _record_step_schema(cluster, "add-old", STEP_SCHEMA - 1)
    _refused(
        cloud,
        lambda: add_replica(cluster=cluster, zone="europe-west1-b", change_id="add-old"),
        f"step schema is {STEP_SCHEMA - 1}; this one uses step schema {STEP_SCHEMA}",
    )

    # one replica down: removing a healthy one would leave 1 healthy of 2 voting, below quorum
    cloud.admin.kill_vm(PROJECT, "europe-west1-b", names["europe-west1-b"])
    _refused(cloud, lambda: remove_replica(cluster=cluster, zone="europe-west1-c"), "below the quorum")

    # two mutating flows at once (two processes, as two workers would run them): the second fails
    # fast while the first holds the lock, and changes nothing
    cloud.admin.add_fault("compute.instances.delete", "hang")
    env = prefect_api.env()
    env.update(HAPLANE_GCE_ENDPOINT=cloud.emulator.url, HAPLANE_PROJECT=PROJECT, PREFECT_LOGGING_LEVEL="WARNING")
    code = (
        f"from flows.remove_replica import remove_replica; remove_replica(cluster={cluster!r}, zone='europe-west1-b')"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not cloud.admin.calls("compute.instances.delete") and time.monotonic() < deadline:
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.2)
        calls_before = len(cloud.mutating_calls())
        with pytest.raises(Exception, match="another mutating flow is running on cluster 'refuse'"):
            add_replica(cluster=cluster, zone="europe-west1-b")
        assert len(cloud.mutating_calls()) == calls_before
        cloud.admin.clear_faults()
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 0, out
    finally:
        stop_group(first, sig=signal.SIGKILL)

    # the last replica is never removed
    remove_replica(cluster=cluster, zone="europe-west1-c")
    survivors = [r for r in cloud.gce.list_instances(ZONES, labels={"haplane-cluster": cluster})]
    assert len(survivors) == 1
    _refused(cloud, lambda: remove_replica(cluster=cluster, zone=survivors[0].zone), "last replica")
    delete_cluster(cluster=cluster)


def test_a_zone_whose_api_is_down_changes_nothing(cloud, monkeypatch):
    """The cluster cannot be observed while a zone of its region does not answer: the flow says
    which zone and changes nothing (no ten-minute hang in the client library's retries either)."""
    cluster = "zonedown"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=1)
    monkeypatch.setenv("HAPLANE_GCE_READ_RETRY_S", "2")
    cloud.admin.fail_zone("europe-west1-c")
    try:
        _refused(
            cloud,
            lambda: add_replica(cluster=cluster, zone="europe-west1-d"),
            "GCE zone europe-west1-c does not answer",
        )
    finally:
        cloud.admin.restore_zone("europe-west1-c")
    rows = add_replica(cluster=cluster, zone="europe-west1-d")
    assert len(rows) == 2
