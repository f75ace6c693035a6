"""The health check decides under the cluster lock.

The first look (no lock) may be stale by the time the check acts: a person's flow may take the lock
in between. The check then takes the lock itself, observes and decides again, and runs
replace-replica under that same hold; a cluster whose lock is held is *skipped* (reported, event),
never a failed remediation that would count towards giving up on the replica.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid

import pytest

from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.health_check import health_check
from haplane.testing import REGION, ZONES
from tests.fixtures.cluster import PROJECT

pytestmark = pytest.mark.usefixtures("prefect_api")


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
        return len(
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["haplane-remediation", f"cluster:{cluster}"])
                )
            )
        )


def test_busy_cluster_is_skipped_then_replaced_under_the_lock(shared_cloud, monkeypatch):
    import flows.health_check as hc

    cloud = shared_cloud
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
    assert cloud.mutating_calls(cluster) == []
    assert _replace_runs(cluster) == 0, "a skipped check must not count as a remediation attempt"

    # lock free: the check takes it, decides again, and replace-replica runs under that hold
    result = health_check(cluster=cluster)
    assert result["action"] == "replace" and result["replica"] == victim and len(result["new"]) == 1
    assert _replace_runs(cluster) == 1
    names = {i.name for i in cloud.gce.list_instances(ZONES, labels={"haplane-cluster": cluster})}
    assert victim not in names and len(names) == 3
    delete_cluster(cluster=cluster)


class SlowProxy:
    """A TCP proxy in front of the Prefect server that holds every chunk a client sends for ``delay``
    seconds: an API server slowed down by load, as a fleet's is."""

    def __init__(self, upstream: str, delay: float) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(upstream)
        self.host, self.port, self.path, self.delay = parts.hostname, parts.port, parts.path, delay
        self.server = None

    def __enter__(self) -> str:
        import socket
        import socketserver

        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                up = socket.create_connection((proxy.host, proxy.port))
                down = self.request

                def back() -> None:
                    try:
                        while data := up.recv(65536):
                            down.sendall(data)
                    except OSError:
                        pass
                    finally:
                        down.close()

                threading.Thread(target=back, daemon=True).start()
                try:
                    while data := down.recv(65536):
                        time.sleep(proxy.delay)
                        up.sendall(data)
                except OSError:
                    pass
                finally:
                    up.close()

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_slow_api_server_is_not_taken_for_another_holder(prefect_api):
    """Every request to the API takes 2.5 s, longer than the health check waits for its lock (2 s): the
    lock is still taken when it is free (a slow server is not "another check is running"), refused
    while another run holds it, and free again once released."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from haplane.settings import health_lock_wait_s
    from tasks.cluster import hold

    wait_s = health_lock_wait_s()
    name = f"health-slow-{uuid.uuid4().hex[:5]}"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    with SlowProxy(prefect_api.url, delay=wait_s + 0.5) as url, temporary_settings(updates={PREFECT_API_URL: url}):
        first = hold(name, wait_s)
        assert first is not None, "a free lock behind a slow API server was taken for a held one"
        try:
            assert hold(name, wait_s) is None
        finally:
            first.__exit__(None, None, None)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
        client.delete_global_concurrency_limit_by_name(name)


def test_a_rotation_the_check_would_start_on_a_busy_cluster_is_skipped_not_failed(cloud, monkeypatch):
    """The check takes the cluster lock before it starts rotate-certificates: a person's flow that took the
    lock after the check's first look makes the check skip (event, Completed), with no rotation run that
    would count as a failed attempt towards giving up."""
    import flows.health_check as hc

    cluster = f"hrot-{uuid.uuid4().hex[:5]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES[:1], replicas=1)
    monkeypatch.setattr(hc, "cluster_busy", lambda name: False)  # the first look sees the lock free
    cloud.admin.clear_calls()
    with HeldLock(cluster):
        # thresholds above the leaves' lifetime: a rotation is due now
        state = health_check(cluster=cluster, warn_days=3650, rotate_days=3650, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["action"] == "skipped" and "another mutating flow is running" in result["reason"], result
    assert cloud.mutating_calls() == []
    assert _runs(cluster, "rotate-certificates") == 0, "a skipped rotation must not count as an attempt"
    delete_cluster(cluster=cluster)


def _runs(cluster: str, flow_name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return len(
            client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["haplane-remediation", f"cluster:{cluster}"])
                ),
            )
        )


class WritesSpecThenReleases(HeldLock):
    """A flow holding the cluster's lock that records a setting in the spec (load, change, save, under the
    lock it holds) when told to release, then releases the lock."""

    def _hold(self) -> None:
        from blocks.cluster import ClusterSpec
        from tasks.cluster import cluster_lock

        try:
            with cluster_lock(self.cluster):
                self.taken.set()
                self.release.wait(300)
                block = f"{self.cluster}-spec"
                ClusterSpec.load(block).model_copy(update={"snapshot_keep": 7}).save(block, overwrite=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _until_running(flow_name: str, timeout: float = 60.0) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"]))),
            ):
                return
            time.sleep(0.2)
    raise AssertionError(f"no {flow_name} run started within {timeout:.0f} s")


def test_set_load_balancer_records_its_mode_onto_the_spec_as_saved_under_the_lock(cloud, monkeypatch):
    """set-load-balancer reads the spec when it starts and then waits for the cluster lock; the flow holding
    the lock records a setting in the spec meanwhile. The mode is recorded onto the spec as saved then
    (re-read under the lock), so that setting is kept: the whole spec read before the lock was once saved
    over it."""
    from blocks.cluster import ClusterSpec
    from flows.set_load_balancer import set_load_balancer

    # it waits for the holder, however loaded the machine (tasks.cluster's name: where the lock lived before)
    monkeypatch.setattr("haplane.cloud.locks.LOCK_WAIT_S", 300.0)
    monkeypatch.setattr("tasks.cluster.LOCK_WAIT_S", 300.0)
    cluster = f"hspec-{uuid.uuid4().hex[:5]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, load_balancer="always")
    assert ClusterSpec.load(f"{cluster}-spec").snapshot_keep == 24
    done: dict = {}
    context = contextvars.copy_context()
    runner = threading.Thread(
        target=context.run,
        daemon=True,
        args=(lambda: done.update(state=set_load_balancer(cluster=cluster, mode="as-needed", return_state=True)),),
    )
    with WritesSpecThenReleases(cluster) as holder:
        runner.start()
        _until_running("set-load-balancer")
        time.sleep(1.0)  # it has read the spec and waits for the lock (up to 10 s)
    assert holder.error is None, holder.error
    runner.join(120)
    assert done["state"].is_completed(), done["state"].message
    spec = ClusterSpec.load(f"{cluster}-spec")
    assert spec.load_balancer.value == "as-needed", spec.load_balancer
    assert spec.snapshot_keep == 7, "the setting recorded while set-load-balancer waited for the lock was lost"
    delete_cluster(cluster=cluster)
