"""VMs that boot: the real compute_v1 client inserts VMs whose metadata describes etcd, and the
emulator runs real etcd members (mutual TLS) and API-server stand-ins on loopback.

Checked through etcd itself and through TLS handshakes; every process is gone afterwards, also
when the emulator is the ``haplane emulator`` command stopped with SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time

import httpx
import pytest
from google.cloud import compute_v1

from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.cloud.pki import create_cluster_cas, issue_replica_certs, node_tls
from haplane.emulator import apiserver, controllers
from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.node.spec import (
    CONTROLLER_MANAGER_PORT,
    SCHEDULER_PORT,
    ApiServerSpec,
    EtcdSpec,
    NodeSpec,
    client_url,
    peer_url,
)
from haplane.processes import stop_group
from tests.fixtures.emulator import compute_clients, wait_op

PROJECT = "vm-test"
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _insert(
    clients, zone: str, name: str, metadata: dict[str, str] | None = None, nat_ip: str | None = None
) -> compute_v1.Instance:
    access = compute_v1.AccessConfig(name="external-nat", type_="ONE_TO_ONE_NAT")
    if nat_ip:
        access.nat_i_p = nat_ip
    body = compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/e2-standard-2",
        network_interfaces=[compute_v1.NetworkInterface(access_configs=[access])],
        metadata=compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in (metadata or {}).items()]),
    )
    wait_op(clients, clients.instances.insert_unary(project=PROJECT, zone=zone, instance_resource=body))
    return clients.instances.get(project=PROJECT, zone=zone, instance=name)


def _configure(clients, cas, vm: compute_v1.Instance, zone: str, initial: str, endpoint_ip: str) -> None:
    certs = issue_replica_certs(
        cas, hostname=vm.name, internal_ip=vm.network_interfaces[0].network_i_p, endpoint_ip=endpoint_ip
    )
    spec = NodeSpec(
        etcd=EtcdSpec(name=vm.name, initial_cluster=initial), apiserver=ApiServerSpec(), tls=node_tls(cas, certs)
    )
    items = [compute_v1.Items(key=k, value=v) for k, v in spec.to_metadata().items()]
    op = clients.instances.set_metadata_unary(
        project=PROJECT,
        zone=zone,
        instance=vm.name,
        metadata_resource=compute_v1.Metadata(fingerprint=vm.metadata.fingerprint, items=items),
    )
    wait_op(clients, op)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).text == "ok"
    except httpx.HTTPError:
        return False


def _wait_healthy(client: EtcdClient, endpoints: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.health(e).healthy for e in endpoints):
            return
        time.sleep(0.3)
    raise AssertionError(f"etcd not healthy at {endpoints}")


def _handshake(ip: str, ca_pem: str) -> httpx.Response:
    return httpx.get(f"https://{ip}:6443/readyz", verify=ssl.create_default_context(cadata=ca_pem), timeout=5)


def _ready_yet(ip: str, ca_pem: str) -> bool:
    """While the stand-in is still starting (nothing listens yet, or it is not ready), False."""
    try:
        return _handshake(ip, ca_pem).status_code == 200
    except httpx.ConnectError as exc:
        if "certificate" in str(exc).lower():
            raise
        return False


def test_three_vms_in_three_zones_form_one_etcd_cluster_with_mutual_tls(tmp_path):
    cas = create_cluster_cas("vmtest")
    emulator = Emulator(state_dir=tmp_path / "emu", runtime=ProcessRuntime(tmp_path / "emu"))
    emulator.start()
    pids: list[int] = []
    try:
        clients = compute_clients(emulator.url)
        # the endpoint IP: a reserved static address, given to the first VM as its external IP
        wait_op(
            clients,
            clients.addresses.insert_unary(
                project=PROJECT, region="us-central1", address_resource=compute_v1.Address(name="endpoint")
            ),
        )
        endpoint_ip = clients.addresses.get(project=PROJECT, region="us-central1", address="endpoint").address
        vms = [_insert(clients, zone, f"m{i}", nat_ip=endpoint_ip if i == 0 else None) for i, zone in enumerate(ZONES)]
        ips = [vm.network_interfaces[0].network_i_p for vm in vms]
        initial = ",".join(f"{vm.name}={peer_url(ip)}" for vm, ip in zip(vms, ips, strict=True))
        for vm, zone in zip(vms, ZONES, strict=True):
            _configure(clients, cas, vm, zone, initial, endpoint_ip)

        etcd = EtcdClient([client_url(ip) for ip in ips], tls=EtcdTLS.from_cas(cas))
        try:
            _wait_healthy(etcd, [client_url(ip) for ip in ips])
            members = etcd.member_list()
            assert sorted(m.name for m in members) == ["m0", "m1", "m2"] and not any(m.is_learner for m in members)
            leaders = {s.leader_id for s in etcd.statuses()}
            assert len(leaders) == 1 and leaders.pop() in {m.id for m in members}
            etcd.put("/written/through/m0", "yes")
            assert EtcdClient([client_url(ips[2])], tls=EtcdTLS.from_cas(cas)).get("/written/through/m0") == b"yes"
        finally:
            etcd.close()
        # a client without a certificate is refused at the handshake
        with pytest.raises(httpx.HTTPError):
            httpx.post(
                f"{client_url(ips[0])}/v3/cluster/member/list",
                json={},
                verify=ssl.create_default_context(cadata=cas.etcd_ca.cert_pem),
                timeout=5,
            )

        # the API-server stand-in serves the replica's certificate: verified through the internal IP
        # and the endpoint IP, refused through an ephemeral public IP (no certificate is issued for one)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(_ready_yet(ip, cas.ca.cert_pem) for ip in ips):
            time.sleep(0.3)
        assert _handshake(ips[0], cas.ca.cert_pem).status_code == 200
        assert _handshake(endpoint_ip, cas.ca.cert_pem).status_code == 200
        ephemeral = vms[1].network_interfaces[0].access_configs[0].nat_i_p
        assert ephemeral and ephemeral != endpoint_ip
        with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
            _handshake(ephemeral, cas.ca.cert_pem)
        # ... whereas skipping verification through the ephemeral IP reaches the same server
        assert httpx.get(f"https://{ephemeral}:6443/livez", verify=False, timeout=5).status_code == 200

        admin = EmulatorAdmin(emulator.url)
        for vm, zone in zip(vms, ZONES, strict=True):
            procs = admin.vm(PROJECT, zone, vm.name)["processes"]
            assert procs["etcd"]["running"] and procs["apiserver"]["running"]
            pids += [procs["etcd"]["pid"], procs["apiserver"]["pid"]]
        # a killed VM: its processes die and stay dead while GCE still says RUNNING
        admin.kill_vm(PROJECT, ZONES[2], "m2")
        time.sleep(1.0)
        state = admin.vm(PROJECT, ZONES[2], "m2")
        assert state["status"] == "RUNNING" and not state["processes"]["etcd"]["running"]
        assert not _alive(pids[4]) and not _alive(pids[5])
        admin.close()

        # deleting a VM stops its processes and removes its data
        disk = tmp_path / "emu" / "vms" / PROJECT / ZONES[1] / "m1"
        assert disk.is_dir()
        wait_op(clients, clients.instances.delete_unary(project=PROJECT, zone=ZONES[1], instance="m1"))
        assert not _alive(pids[2]) and not _alive(pids[3]) and not disk.exists()
    finally:
        emulator.stop()
    assert pids and not any(_alive(p) for p in pids), "a VM process outlived the emulator"


def test_emulator_command_stops_every_vm_process_on_sigterm(tmp_path):
    haplane = os.path.join(os.path.dirname(sys.executable), "haplane")
    proc = subprocess.Popen(
        [haplane, "emulator", "--port", "0", "--state-dir", str(tmp_path / "emu")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"ready on (http://127\.0\.0\.1:\d+)", line).group(1)
        clients = compute_clients(url)
        vm = _insert(clients, ZONES[0], "solo")
        ip = vm.network_interfaces[0].network_i_p
        _configure(clients, create_cluster_cas("solo"), vm, ZONES[0], f"solo={peer_url(ip)}", ip)
        with EmulatorAdmin(url) as admin:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                procs = admin.vm(PROJECT, ZONES[0], "solo")["processes"]
                if procs and all(p["running"] for p in procs.values()):
                    break
                time.sleep(0.2)
            pids = [p["pid"] for p in procs.values()]
        # etcd, and the API server whose process runs the controller-manager and scheduler stand-ins
        # (their certificates are there): both answer /healthz on the VM's address
        assert set(procs) == {"etcd", "apiserver"}, procs
        assert all(_alive(p) for p in pids)
        for port in (CONTROLLER_MANAGER_PORT, SCHEDULER_PORT):
            deadline = time.monotonic() + 30
            while not _answers(f"http://{ip}:{port}/healthz") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _answers(f"http://{ip}:{port}/healthz"), port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        time.sleep(0.5)
        assert not any(_alive(p) for p in pids)
        assert not any(_answers(f"http://{ip}:{port}/healthz") for port in (CONTROLLER_MANAGER_PORT, SCHEDULER_PORT))
    finally:
        stop_group(proc, grace=5)


def test_the_api_servers_controller_flag_names_a_known_component_or_is_refused():
    c = controllers.Component.parse("kube-scheduler:10259:/pki/scheduler.crt:/pki/scheduler.key")
    assert c == controllers.Component("kube-scheduler", 10259, "/pki/scheduler.crt", "/pki/scheduler.key")
    with pytest.raises(ValueError, match="unknown component 'kube-proxy'"):
        controllers.Component.parse("kube-proxy:10256:/a:/b")
    with pytest.raises(SystemExit):  # argparse's error, before anything is served
        apiserver.main(["--ip", "127.0.0.1", "--etcd-url", "http://127.0.0.1:2379", "--controller", "kube-proxy:1:a:b"])
