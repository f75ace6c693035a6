"""The namespaced network (root): firewalls enforced, zone partitions, nothing left behind.

A cluster of three real etcd members in three zones, each VM in its own network
namespace: a client outside the firewall's ranges is refused at etcd's client
port while the worker passes; a zone partition leaves the cut VM running but
unable to reach its peers while the API answers through the endpoint; after the
zone is restored, the member removed during the cut does not come back as a voter.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from flows.create_cluster import create_cluster
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.emulator.server import Emulator
from haplane.node.spec import APISERVER_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, client_url
from haplane.testing import REGION, ZONES
from haplane.testing.poll import eventually
from tasks.pki import load_cas
from tests.fixtures.cluster import PROJECT, api_through, vm_runtime
from tests.fixtures.emulator import wait_op

pytestmark = pytest.mark.long


CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))"


def connects_from(namespace: str, ip: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection from inside ``namespace`` to ``ip:port`` is accepted."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CONNECT, ip, str(port), str(timeout)],
        capture_output=True,
        timeout=timeout + 30,
    )
    return done.returncode == 0


def connects(ip: str, port: int, timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((ip, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _host_state(prefix: str, net: str) -> str:
    out = [
        subprocess.run(argv, capture_output=True, text=True).stdout
        for argv in (
            ["ip", "netns", "list"],
            ["ip", "-o", "link", "show"],
            ["ip", "route", "show"],
            ["nft", "list", "tables"],
        )
    ]
    return "\n".join(line for text in out for line in text.splitlines() if prefix in line or net in line)


def test_the_emulator_removes_every_namespace_link_route_and_table_it_made(tmp_path):
    state = tmp_path / "emulator"
    runtime = vm_runtime(state, "namespaces")
    netns = runtime.network
    prefix, net = netns.prefix, str(netns.net).rsplit(".", 2)[0] + "."
    emulator = Emulator(state_dir=state, runtime=runtime)
    try:
        emulator.start()
        options, creds = {"api_endpoint": emulator.url}, AnonymousCredentials()
        instances = compute_v1.InstancesClient(client_options=options, credentials=creds)
        clients = type(
            "C", (), {"zone_operations": compute_v1.ZoneOperationsClient(client_options=options, credentials=creds)}
        )()
        for i, zone in enumerate(ZONES[:2]):
            body = compute_v1.Instance(
                name=f"bare-{i}",
                machine_type="e2-small",
                network_interfaces=[
                    compute_v1.NetworkInterface(access_configs=[compute_v1.AccessConfig(name="External NAT")])
                ],
            )
            wait_op(clients, instances.insert_unary(project=PROJECT, zone=zone, instance_resource=body))
        ip = instances.get(project=PROJECT, zone=ZONES[0], instance="bare-0").network_interfaces[0].network_i_p
        assert ip.startswith(net), f"{ip} is not on the namespaced network {netns.net}"
        made = _host_state(prefix, net)
        assert f"{prefix}-vm1" in made and f"{prefix}-router" in made and f"{prefix}-up" in made
    finally:
        emulator.stop()
    assert _host_state(prefix, net) == "", "left behind after the emulator stopped"


@pytest.mark.usefixtures("prefect_api")
def test_firewall_partition_and_no_stale_voter_after_restore(ns_cloud):
    cloud = ns_cloud
    netns = cloud.emulator.runtime.network
    cluster = "netns"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    assert all(r["health"] == "healthy" for r in rows), rows
    endpoint = rows[0]["endpoint IP"]
    tls = EtcdTLS.from_cas(load_cas(cluster))
    ca_pem = load_cas(cluster).ca.cert_pem

    # The firewall: the worker (its egress is the default operator range) passes at etcd's client
    # port; a client outside every allowed range is refused there, though it reaches the API port.
    rule = cloud.gce.get_firewall(f"{cluster}-etcd-client")
    assert f"{netns.host_ip}/32" in rule.source_ranges
    with EtcdClient([client_url(r["internal IP"]) for r in rows], tls=tls) as etcd:
        assert len(etcd.member_list()) == 3
    target = rows[0]["internal IP"]
    assert connects_from(netns.outside, target, APISERVER_PORT)
    assert not connects_from(netns.outside, target, ETCD_CLIENT_PORT)
    assert not connects_from(netns.outside, target, ETCD_PEER_PORT)
    assert not connects(target, ETCD_PEER_PORT), "the worker is not an etcd peer: 2380 admits replicas only"
    # Firewall changes apply when their operation is DONE: a rule admitting the outside client
    # opens 2379 to it, deleting the rule closes it again.
    gce = cloud.gce
    gce.wait(
        gce.insert_firewall(
            "let-outside-in",
            ports=[str(ETCD_CLIENT_PORT)],
            source_ranges=[f"{netns.outside_ip}/32"],
            source_tags=[],
            target_tags=[f"{cluster}-master"],
            description="test",
            rid=str(uuid.uuid4()),
        )
    )
    assert connects_from(netns.outside, target, ETCD_CLIENT_PORT)
    gce.wait(gce.delete_firewall("let-outside-in", rid=str(uuid.uuid4())))
    assert not connects_from(netns.outside, target, ETCD_CLIENT_PORT)

    # A zone partition: the follower's VM keeps running, but neither reaches nor is reached.
    victim = next(r for r in rows if r["role"] == "follower")
    others = [r for r in rows if r is not victim]
    assert cloud.admin.fail_zone(victim["zone"])["mode"] == "partition"
    processes = cloud.admin.vm(PROJECT, victim["zone"], victim["replica"])["processes"]
    assert processes["etcd"]["running"] and processes["apiserver"]["running"], processes
    cut_ns = netns.namespace(f"{PROJECT}/{victim['zone']}/{victim['replica']}")
    for other in others:
        assert not connects_from(cut_ns, other["internal IP"], ETCD_PEER_PORT)
    assert not connects(victim["internal IP"], ETCD_CLIENT_PORT)

    # The API stays up through the endpoint: the load balancer's health check drops the cut one.
    def api_up_five_times() -> bool:
        try:
            return all(api_through(endpoint, ca_pem).status_code == 200 for _ in range(5))
        except Exception:
            return False

    eventually(api_up_five_times, 60, "the API answers through the endpoint during the partition")

    # Remediation on the majority's side: the cut member is removed (its VM cannot be deleted:
    # the zone's API is down), and the cluster moves on.
    with EtcdClient([client_url(r["internal IP"]) for r in others], tls=tls) as etcd:
        stale = next(m for m in etcd.member_list() if m.name == victim["replica"])
        etcd.member_remove(stale.id)
        etcd.put("/after-the-cut", "majority")
    stale_log = cloud.state_dir / "vms" / PROJECT / victim["zone"] / victim["replica"] / "logs" / "etcd.log"

    cloud.admin.restore_zone(victim["zone"])
    eventually(
        lambda: connects_from(cut_ns, others[0]["internal IP"], ETCD_PEER_PORT),
        30,
        "the restored zone reaches the others again",
    )
    # The stale member learns it was removed; it never comes back as a voter (or at all).
    eventually(
        lambda: "removed" in stale_log.read_text(errors="replace"),
        60,
        "the stale etcd member notices it was removed from the cluster",
    )
    deadline = time.monotonic() + 10
    with EtcdClient([client_url(r["internal IP"]) for r in others], tls=tls) as etcd:
        while time.monotonic() < deadline:
            members = etcd.member_list()
            assert stale.id not in {m.id for m in members}, members
            assert sorted(m.name for m in members if not m.is_learner) == sorted(r["replica"] for r in others)
            time.sleep(1)
        assert etcd.get("/after-the-cut") == b"majority"


def test_cli_network_namespaces_serves_and_cleans_up_on_sigterm(tmp_path):
    from tests.test_emulator_cli import RUN

    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, "emulator", "--port", "0", "--network", "namespaces", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        network = proc.stderr.readline()
        m = re.match(r"haplane emulator network: namespaces (hp[0-9a-f]+)-\*, VMs in (10\.\d+)\.0\.0/16", network)
        assert m, network
        assert proc.stdout.readline().startswith("haplane emulator ready on http://127.0.0.1:")
        prefix, net = m.group(1), m.group(2) + "."
        assert f"{prefix}-router" in _host_state(prefix, net)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert _host_state(prefix, net) == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
