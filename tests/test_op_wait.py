"""A GCE operation that never finishes: the wait is bounded and says so (quick, no VMs).

The flows' fault matrix (``tests/test_fault_matrix.py::test_hung_operations``) checks the same on every
mutating method of every flow, with a resume; here the adapter and the settings on their own.
"""

from __future__ import annotations

import time

import pytest

from haplane.cloud.gce import Gce, GceTimeout, request_id
from haplane.emulator.admin import EmulatorAdmin
from haplane.testing import PROJECT


def test_a_hung_operation_times_out_within_the_bound_and_is_waited_on_again(bare_emulator):
    gce = Gce(PROJECT, bare_emulator.url)
    with EmulatorAdmin(bare_emulator.url) as admin:
        admin.add_fault("compute.addresses.insert", "hang")
        op = gce.insert_address("europe-west1", "held", address=None, rid=request_id("held"))
        started = time.monotonic()
        with pytest.raises(GceTimeout) as timed_out:
            gce.wait(op, timeout=1.5)
        # bounded although the emulator (as GCE) holds a long poll for up to 2 minutes
        assert time.monotonic() - started < 10
        assert op.name in str(timed_out.value) and "not sent again" in str(timed_out.value)
        assert admin.clear_faults() == 1  # the stuck operation goes on
        assert gce.wait(op, timeout=10).done  # the same operation, waited on again
        assert gce.get_address("europe-west1", "held") is not None
        assert [c["outcome"] for c in admin.calls("compute.addresses.insert")] == ["fault:hang"]


def test_a_wait_in_a_zone_that_does_not_answer_says_so(bare_emulator):
    gce = Gce(PROJECT, bare_emulator.url)
    with EmulatorAdmin(bare_emulator.url) as admin:
        admin.add_fault("compute.instances.insert", "hang")
        op = gce.insert_instance(
            "europe-west1-b",
            "vm-1",
            machine_type="e2-small",
            labels={},
            metadata={},
            tags=[],
            external_ip=False,
            rid=request_id("vm"),
        )
        admin.fail_zone("europe-west1-b", mode="kill")
        with pytest.raises(GceTimeout) as timed_out:
            gce.wait(op, timeout=2)
        assert "could not be read" in str(timed_out.value) and "europe-west1-b" in str(timed_out.value)
