"""The emulator's own features: faults, latency, call log, admin actions, runtime calls."""

from __future__ import annotations

import time
import uuid

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from haplane.emulator.admin import EmulatorAdmin, EmulatorAdminError
from haplane.emulator.runtime import NullRuntime
from haplane.emulator.server import Emulator
from tests.fixtures.emulator import compute_clients, wait_op

P, Z, R = "proj", "us-central1-a", "us-central1"
DONE = compute_v1.Operation.Status.DONE


def rid() -> str:
    return str(uuid.uuid4())


def vm_request(name: str, zone: str = Z, request_id: str | None = None) -> compute_v1.InsertInstanceRequest:
    return compute_v1.InsertInstanceRequest(
        project=P,
        zone=zone,
        request_id=request_id or rid(),
        instance_resource=compute_v1.Instance(
            name=name,
            machine_type="e2-small",
            network_interfaces=[compute_v1.NetworkInterface(access_configs=[compute_v1.AccessConfig()])],
        ),
    )


class RecordingRuntime(NullRuntime):
    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def start(self, vm):
        self.events.append(("start", vm.name))

    def update(self, vm):
        self.events.append(("update", vm.name))

    def stop(self, vm):
        self.events.append(("stop", vm.name))

    def delete(self, vm):
        self.events.append(("delete", vm.name))

    def kill(self, vm):
        self.events.append(("kill", vm.name))

    def processes(self, vm):
        return {"etcd": {"running": False, "pid": None}}


@pytest.fixture
def c(bare_emulator):
    return compute_clients(bare_emulator.url)


def test_fault_429_and_503_change_nothing(c, emulator_admin):
    emulator_admin.add_fault("compute.instances.insert", mode="429")
    emulator_admin.add_fault("compute.addresses.insert", mode="503", count=2)
    request_id = rid()
    with pytest.raises(exceptions.TooManyRequests):
        c.instances.insert_unary(request=vm_request("m1", request_id=request_id))
    assert list(c.instances.list(project=P, zone=Z)) == []
    # the faulted requestId was not remembered: the retry creates the VM
    op = wait_op(c, c.instances.insert_unary(request=vm_request("m1", request_id=request_id)))
    assert not op.error.errors
    for _ in range(2):
        with pytest.raises(exceptions.ServiceUnavailable):
            c.addresses.insert_unary(
                request=compute_v1.InsertAddressRequest(
                    project=P, region=R, address_resource=compute_v1.Address(name="a"), request_id=rid()
                )
            )
    assert list(c.addresses.list(project=P, region=R)) == []
    assert emulator_admin.faults() == []
    outcomes = [e["outcome"] for e in emulator_admin.calls() if e["method"].endswith(".insert")]
    assert outcomes == ["fault:429", "ok", "fault:503", "fault:503"]


def test_fault_operation_error_changes_nothing(c, emulator_admin):
    emulator_admin.add_fault(
        "compute.instances.insert",
        mode="operation_error",
        error_code="ZONE_RESOURCE_POOL_EXHAUSTED",
        error_message="no capacity",
        http_status=503,
    )
    op = c.instances.insert_unary(request=vm_request("m1"))
    op = wait_op(c, op)
    assert op.status == DONE and op.error.errors[0].code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert op.error.errors[0].message == "no capacity" and op.http_error_status_code == 503
    assert op.target_link.endswith("/zones/us-central1-a/instances/m1")
    with pytest.raises(exceptions.NotFound):
        c.instances.get(project=P, zone=Z, instance="m1")
    # a fault on a method of one resource
    wait_op(c, c.instances.insert_unary(request=vm_request("m1")))
    emulator_admin.add_fault("compute.instances.delete", mode="operation_error")
    op = wait_op(
        c,
        c.instances.delete_unary(
            request=compute_v1.DeleteInstanceRequest(project=P, zone=Z, instance="m1", request_id=rid())
        ),
    )
    assert op.error.errors[0].code == "INTERNAL_ERROR" and op.target_link.endswith("/instances/m1")
    assert c.instances.get(project=P, zone=Z, instance="m1").status == "RUNNING"
    with pytest.raises(EmulatorAdminError):  # read-only methods have no operation to fail
        emulator_admin.add_fault("compute.instances.get", mode="operation_error")
    with pytest.raises(EmulatorAdminError):
        emulator_admin.add_fault("compute.nothing.insert", mode="429")


def test_fault_hang_until_cleared(c, emulator_admin):
    emulator_admin.add_fault("compute.firewalls.insert", mode="hang")
    op = c.firewalls.insert_unary(
        request=compute_v1.InsertFirewallRequest(
            project=P,
            request_id=rid(),
            firewall_resource=compute_v1.Firewall(name="fw", allowed=[compute_v1.Allowed(I_p_protocol="tcp")]),
        )
    )
    time.sleep(0.3)
    assert c.global_operations.get(project=P, operation=op.name).status == compute_v1.Operation.Status.RUNNING
    assert emulator_admin.clear_faults() == 1
    assert wait_op(c, op).status == DONE


def test_latency_scaling(c, emulator_admin):
    emulator_admin.set_latency(profile="gce", time_scale=0.05)  # instance insert 24 s -> 1.2 s
    assert emulator_admin.latency()["seconds"]["forwarding_rule_insert"] == 1200
    started = time.monotonic()
    op = c.instances.insert_unary(request=vm_request("m1"))
    time.sleep(0.2)
    early = c.zone_operations.get(project=P, zone=Z, operation=op.name)
    assert early.status != DONE
    assert c.instances.get(project=P, zone=Z, instance="m1").status in ("PROVISIONING", "STAGING")
    op = wait_op(c, op)
    elapsed = time.monotonic() - started
    print(f"instance insert with gce profile x0.05: DONE after {elapsed:.2f} s (model: 1.2 s)")
    assert op.status == DONE and c.instances.get(project=P, zone=Z, instance="m1").status == "RUNNING"
    emulator_admin.set_latency(profile="instant")
    started = time.monotonic()
    wait_op(c, c.instances.insert_unary(request=vm_request("m2")))
    print(f"instance insert with instant profile: {time.monotonic() - started:.3f} s")
    with pytest.raises(EmulatorAdminError):
        emulator_admin.set_latency(profile="slow")


def test_wait_returns_running_after_timeout(tmp_path):
    with Emulator(state_dir=tmp_path, profile="gce", time_scale=1.0, wait_timeout=0.3) as emu:
        c = compute_clients(emu.url)
        op = c.instances.insert_unary(request=vm_request("m1"))
        op = c.zone_operations.wait(project=P, zone=Z, operation=op.name)
        assert op.status != DONE  # GCE's wait may answer a still running operation


def test_call_log(c, emulator_admin):
    request_id = rid()
    op = c.instances.insert_unary(request=vm_request("m1", request_id=request_id))
    c.instances.insert_unary(request=vm_request("m1", request_id=request_id))
    with pytest.raises(exceptions.NotFound):
        c.instances.get(project=P, zone=Z, instance="zz")
    calls = emulator_admin.calls()
    assert [(e["method"], e["verb"], e["status"], e["outcome"]) for e in calls] == [
        ("compute.instances.insert", "POST", 200, "ok"),
        ("compute.instances.insert", "POST", 200, "deduplicated"),
        ("compute.instances.get", "GET", 404, "notFound"),
    ]
    assert calls[0]["requestId"] == request_id and calls[0]["operation"] == op.name == calls[1]["operation"]
    assert calls[0]["path"] == f"/compute/v1/projects/{P}/zones/{Z}/instances" and calls[0]["time"]
    assert "metadata" not in str(calls)  # bodies are never logged
    assert len(emulator_admin.calls("compute.instances.get")) == 1
    # the resource each call is about: the inserted one's name from the body, else the name in the path
    assert [e["resource"] for e in calls] == ["m1", "m1", "zz"]
    wait_op(c, op)
    c.instances.set_labels_unary(
        project=P,
        zone=Z,
        instance="m1",
        instances_set_labels_request_resource={
            "labels": {"a": "b"},
            "label_fingerprint": c.instances.get(project=P, zone=Z, instance="m1").label_fingerprint,
        },
    )
    assert [e["resource"] for e in emulator_admin.calls("compute.instances.setLabels")] == ["m1"]
    assert {e["resource"] for e in emulator_admin.calls() if e["method"].endswith(".wait")} == {None}
    emulator_admin.clear_calls()
    assert emulator_admin.calls() == []


def test_admin_actions_and_runtime_calls(tmp_path):
    runtime = RecordingRuntime()
    with Emulator(state_dir=tmp_path, runtime=runtime) as emu, EmulatorAdmin(emu.url) as admin:
        c = compute_clients(emu.url)
        wait_op(c, c.instances.insert_unary(request=vm_request("m1")))
        wait_op(c, c.instances.insert_unary(request=vm_request("m2", zone="us-central1-b")))
        vm = c.instances.get(project=P, zone=Z, instance="m1")
        md = compute_v1.Metadata(fingerprint=vm.metadata.fingerprint, items=[compute_v1.Items(key="k", value="v")])
        wait_op(
            c,
            c.instances.set_metadata_unary(
                request=compute_v1.SetMetadataInstanceRequest(
                    project=P, zone=Z, instance="m1", metadata_resource=md, request_id=rid()
                )
            ),
        )
        info = admin.vm(P, Z, "m1")
        assert info["status"] == "RUNNING" and info["internalIP"] == vm.network_interfaces[0].network_i_p
        assert info["externalIPs"] == [vm.network_interfaces[0].access_configs[0].nat_i_p]
        assert info["processes"] == {"etcd": {"running": False, "pid": None}}
        admin.kill_vm(P, Z, "m1")
        assert c.instances.get(project=P, zone=Z, instance="m1").status == "RUNNING"
        admin.stop_vm(P, Z, "m1")
        assert c.instances.get(project=P, zone=Z, instance="m1").status == "TERMINATED"
        assert not any(e["method"] == "compute.instances.stop" for e in admin.calls())
        # a loopback network cannot partition: asked to, it refuses and changes nothing
        with pytest.raises(EmulatorAdminError, match="--network namespaces"):
            admin.fail_zone("us-central1-b", mode="partition")
        assert admin.failed_zones() == []
        # zone failure: VMs killed, the zone's API answers 503 (mutating calls: no client retry)
        failed = admin.fail_zone("us-central1-b")
        assert failed["killed"] == [f"{P}/us-central1-b/m2"] and admin.failed_zones() == ["us-central1-b"]
        with pytest.raises(exceptions.ServiceUnavailable):
            c.instances.insert_unary(request=vm_request("m3", zone="us-central1-b"))
        with pytest.raises(exceptions.ServiceUnavailable):
            c.instances.get(project=P, zone="us-central1-b", instance="m2", retry=None)
        assert c.instances.get(project=P, zone=Z, instance="m1")  # other zones still answer
        admin.restore_zone("us-central1-b")
        assert c.instances.get(project=P, zone="us-central1-b", instance="m2").status == "RUNNING"
        wait_op(
            c,
            c.instances.delete_unary(
                request=compute_v1.DeleteInstanceRequest(project=P, zone=Z, instance="m1", request_id=rid())
            ),
        )
        with pytest.raises(EmulatorAdminError):
            admin.vm(P, Z, "m1")
        assert admin.health()["status"] == "ok"
    assert runtime.events == [
        ("start", "m1"),
        ("start", "m2"),
        ("update", "m1"),
        ("kill", "m1"),
        ("stop", "m1"),
        ("kill", "m2"),
        ("delete", "m1"),
    ]
