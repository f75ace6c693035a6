"""The health check decides under the cluster lock.

The first look (no lock) may be stale by the time the check acts: a person's flow may take the lock
in between. The check then takes the lock itself, observes and decides again, and runs
replace-replica under that same hold; a cluster whose lock is held is *skipped* (reported, event),
never a failed remediation that would count towards giving up on the replica.
"""

from __future__ import annotations

import contextvars
import threading
import uuid

import pytest

from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.health_check import health_check
from tests.fixtures.cluster import PROJECT

pytestmark = pytest.mark.usefixtures("prefect_api")

REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]


class HeldLock:
    """A person's mutating flow holding ``cluster-<name>`` (from another thread, as another run would)."""

    def __init__(self, cluster: str) -> None:
        self.cluster, self.taken, self.release = cluster, threading.Event(), threading.Event()
        context = contextvars.copy_context()  # this test's Prefect settings (not any lock: none is held here)
        self.thread = threading.Thread(target=context.run, args=(self._hold,), daemon=True)
        self.error: BaseException | None = None

    def _hold(self) -> None:
        from tasks.cluster import cluster_lock

        try:
            with cluster_lock(self.cluster):
                self.taken.set()
                self.release.wait(300)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.taken.set()

    def __enter__(self) -> HeldLock:
        self.thread.start()
        assert self.taken.wait(60) and self.error is None, self.error
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.thread.join(60)


def _replace_runs(cluster: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=["haplane-remediation", f"cluster:{cluster}"]))))


def test_busy_cluster_is_skipped_then_replaced_under_the_lock(cloud, monkeypatch):
    import flows.health_check as hc

    cluster = f"hlock-{uuid.uuid4().hex[:5]}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    victim = next(r["replica"] for r in rows if r["zone"] == ZONES[1])
    cloud.admin.kill_vm(PROJECT, ZONES[1], victim)

    # the first look sees the lock free, then a person's flow takes it before the check acts
    monkeypatch.setattr(hc, "cluster_busy", lambda name: False)
    cloud.admin.clear_calls()
    with HeldLock(cluster):
        result = health_check(cluster=cluster)
    assert result["action"] == "skipped" and "another mutating flow is running" in result["reason"]
    assert cloud.mutating_calls() == []
    assert _replace_runs(cluster) == 0, "a skipped check must not count as a remediation attempt"

    # lock free: the check takes it, decides again, and replace-replica runs under that hold
    result = health_check(cluster=cluster)
    assert result["action"] == "replace" and result["replica"] == victim and len(result["new"]) == 1
    assert _replace_runs(cluster) == 1
    names = {i.name for i in cloud.gce.list_instances(ZONES, labels={"haplane-cluster": cluster})}
    assert victim not in names and len(names) == 3
    delete_cluster(cluster=cluster)
