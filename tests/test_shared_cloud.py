"""The shared emulator's cleanup after a test (``shared_cloud``): what a test left behind is removed
before the next one, also what was still under way when it ended, and what cleaning cannot fix is
reported, not hidden.

On an emulator of its own with GCE-like latency scaled down (an insert takes 2.4 s, a delete 2 s), so
that a VM still booting and a delete in flight are really in flight when the cleanup starts.
"""

from __future__ import annotations

import uuid

import pytest

from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.runtime import VmView
from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.testing import PROJECT, ZONES
from tests.fixtures.cluster import Footprint, clean_up_after, workers_gce


@pytest.fixture(scope="module")
def slow_emulator(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("cleanup-emulator")
    emulator = Emulator(state_dir=state, runtime=ProcessRuntime(state), profile="gce", time_scale=0.1)
    try:
        emulator.start()
        admin = EmulatorAdmin(emulator.url)
        try:
            yield emulator, admin
        finally:
            admin.close()
    finally:
        emulator.stop()


def _insert(gce, name: str):
    """A VM with no haplane metadata: nothing runs on it (the cleanup, not etcd, is under test)."""
    return gce.insert_instance(
        ZONES[0],
        name,
        machine_type="e2-small",
        labels={},
        metadata={},
        tags=[],
        external_ip=False,
        rid=str(uuid.uuid4()),
    )


def _instances(emulator: Emulator) -> set[str]:
    with emulator.store.lock:
        return {name for _, _, name in emulator.store.instances}


def test_cleanup_waits_for_a_vm_still_booting_and_a_delete_in_flight(slow_emulator):
    emulator, admin = slow_emulator
    gce = workers_gce(emulator)
    tag = uuid.uuid4().hex[:5]
    kept, booting, deleting = f"kept-{tag}", f"boot-{tag}", f"gone-{tag}"
    gce.wait(_insert(gce, kept))  # another test's: stays

    before = Footprint.of(emulator, admin)
    gce.wait(_insert(gce, deleting))
    gce.delete_instance(ZONES[0], deleting, rid=str(uuid.uuid4()))  # the test ends with its delete in flight
    _insert(gce, booting)  # and a VM still PROVISIONING
    assert booting not in emulator.runtime._machines and {booting, deleting} <= _instances(emulator)

    removed = clean_up_after(emulator, admin, before)

    assert removed == [f"{PROJECT}/{ZONES[0]}/{booting}"]  # the delete in flight finished on its own
    assert _instances(emulator) & {kept, booting, deleting} == {kept}
    assert set(emulator.runtime._machines) & {f"{PROJECT}/{ZONES[0]}/{n}" for n in (booting, deleting)} == set()
    gce.wait(gce.delete_instance(ZONES[0], kept, rid=str(uuid.uuid4())))


def test_cleanup_reports_what_it_cannot_fix(slow_emulator):
    """VM processes left without an instance, and a latency the test changed: named, not hidden."""
    emulator, admin = slow_emulator
    runtime: ProcessRuntime = emulator.runtime  # type: ignore[assignment]
    before = Footprint.of(emulator, admin)
    stray = VmView(project=PROJECT, zone=ZONES[1], name=f"stray-{uuid.uuid4().hex[:5]}", internal_ip="127.10.250.9")
    runtime.start(stray)
    try:
        with pytest.raises(AssertionError, match=f"VM processes run without an instance.*{stray.name}"):
            clean_up_after(emulator, admin, before)
    finally:
        runtime.delete(stray)

    admin.set_latency(time_scale=0.2)
    try:
        with pytest.raises(AssertionError, match="changed the shared emulator's latency"):
            clean_up_after(emulator, admin, before)
    finally:
        admin.set_latency(time_scale=0.1)
    assert clean_up_after(emulator, admin, before) == []
