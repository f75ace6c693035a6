"""A change hands out one Compute Engine client per flow run and thread (the connection is read once, the
clients' HTTP sessions are reused), never one shared between threads, and a new one outside a flow run."""

from __future__ import annotations

import threading

import pytest

from haplane.cloud.gce import Gce
from tasks.steps import Change


@pytest.fixture
def run_id(monkeypatch):
    """The flow run a task sees (prefect.runtime's; None: outside a flow run)."""
    from prefect.runtime import flow_run

    current = {"id": None}
    monkeypatch.setattr(flow_run, "get_id", lambda: current["id"])
    monkeypatch.setenv("HAPLANE_PROJECT", "p")
    monkeypatch.setenv("HAPLANE_GCE_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HAPLANE_GCE_TOKEN", raising=False)
    return current


def _in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_one_client_per_change_run_and_thread(run_id):
    change = Change("c", "ch-1")
    run_id["id"] = "run-1"
    gce = change.gce()
    assert isinstance(gce, Gce) and gce.endpoint == "http://127.0.0.1:9"
    assert change.gce() is gce and Change("c", "ch-1").gce() is gce, "the change's steps share its client"
    assert _in_thread(change.gce) is not gce, "a parallel step's thread gets its own"
    assert Change("c", "ch-2").gce() is not gce, "another change gets another"
    run_id["id"] = "run-2"
    assert change.gce() is not gce, "a resumed run (a new flow run) reads the connection again"


def test_outside_a_flow_run_a_new_client_each_call(run_id):
    change = Change("c", "ch-1")
    assert change.gce() is not change.gce()


def test_a_thread_keeps_a_few_clients(run_id):
    run_id["id"] = "run-1"
    first = Change("c", "ch-0").gce()
    for n in range(1, 10):
        Change("c", f"ch-{n}").gce()
    assert Change("c", "ch-0").gce() is not first, "the oldest was let go"
