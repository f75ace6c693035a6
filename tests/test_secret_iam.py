"""The emulator's Secret Manager and IAM as GCE's: a token says who calls, each secret's policy says who reads.

In both network modes: a request without a valid token is refused (401); a VM's metadata-server
token (handed out by the VM's runtime) reads its own keys and no other VM's; the workers' token
manages secrets but reads only those whose policy names the workers' account; a request sent from a
VM's address gets no token (the source address proves nothing).
"""

from __future__ import annotations

import httpx
import pytest
from google.api_core.exceptions import Forbidden
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from haplane.cloud.gce import token_credentials
from haplane.cloud.secretstore import SecretStore, SecretUnreadable, read_as_vm, service_account_email
from haplane.emulator.secretmanager import WORKERS_ACCOUNT
from haplane.emulator.server import Emulator
from tests.fixtures.cluster import PROJECT, vm_runtime
from tests.fixtures.emulator import wait_op

ZONE = "europe-west1-b"
NETWORKS = ["loopback", "namespaces"]


def _vm(emu: Emulator, name: str) -> tuple[str, str]:
    """A running VM with a service account of its own; returns (internal IP, account email)."""
    options, creds = {"api_endpoint": emu.url}, AnonymousCredentials()
    instances = compute_v1.InstancesClient(client_options=options, credentials=creds)
    ops = type(
        "C", (), {"zone_operations": compute_v1.ZoneOperationsClient(client_options=options, credentials=creds)}
    )()
    email = service_account_email(PROJECT, name)
    body = compute_v1.Instance(
        name=name,
        machine_type="e2-small",
        network_interfaces=[compute_v1.NetworkInterface()],
        service_accounts=[compute_v1.ServiceAccount(email=email)],
    )
    wait_op(ops, instances.insert_unary(project=PROJECT, zone=ZONE, instance_resource=body))
    return instances.get(project=PROJECT, zone=ZONE, instance=name).network_interfaces[0].network_i_p, email


@pytest.mark.parametrize("network", NETWORKS)
def test_a_vm_token_reads_only_its_own_keys_and_no_token_reads_nothing(tmp_path, network):
    state = tmp_path / "emulator"
    with Emulator(state_dir=state, runtime=vm_runtime(state, network)) as emu:
        ip_a, sa_a = _vm(emu, "vm-a-master")
        ip_b, sa_b = _vm(emu, "vm-b-master")
        workers = SecretStore(PROJECT, emu.url, credentials=token_credentials(emu.workers_token))
        key_a = workers.put("c1", "vm-a-master", "etcd-peer-key", "key of a", reader=sa_a)
        key_b = workers.put("c1", "vm-b-master", "etcd-peer-key", "key of b", reader=sa_b)
        cluster_key = workers.put("c1", "c1-cluster", "ca-key", "cluster ca key", reader=WORKERS_ACCOUNT)

        # the token the VM's runtime gets from the metadata server: its own keys only
        token_a = emu.runtime.token_for_ip(ip_a)
        assert read_as_vm(emu.url, token_a, key_a) == "key of a"
        for other in (key_b, cluster_key):
            with pytest.raises(Forbidden):
                read_as_vm(emu.url, token_a, other)
        assert read_as_vm(emu.url, emu.runtime.token_for_ip(ip_b), key_b) == "key of b"

        # the workers' account: the cluster's keys, not a replica's
        assert workers.read(cluster_key) == "cluster ca key"
        with pytest.raises(SecretUnreadable, match="may not read secret .*vm-a-master-etcd-peer-key"):
            workers.read(key_a)

        # no token, a forged one, another scheme: 401 for every method, and nothing returned
        with pytest.raises(SecretUnreadable, match="refused the workers' credentials"):
            SecretStore(PROJECT, emu.url).read(key_a)
        for headers in ({}, {"Authorization": "Bearer ya29.forged"}, {"Authorization": f"Basic {emu.workers_token}"}):
            for verb, path in (
                ("GET", f"/v1/{key_a}:access"),
                ("GET", f"/v1/projects/{PROJECT}/secrets"),
                ("DELETE", f"/v1/{key_a.split('/versions/')[0]}"),
            ):
                reply = httpx.request(verb, emu.url + path, headers=headers, timeout=5)
                assert reply.status_code == 401, (verb, path, headers, reply.text)
                assert "key of" not in reply.text
        assert len(workers.list("c1")) == 3  # the refused DELETE deleted nothing

        # the metadata server does not answer over HTTP, even from the VM's own address
        local = ip_a if network == "loopback" else None
        transport = httpx.HTTPTransport(local_address=local) if local else None
        with httpx.Client(transport=transport, timeout=5) as http:
            reply = http.get(
                emu.url + "/computeMetadata/v1/instance/service-accounts/default/token",
                headers={"Metadata-Flavor": "Google"},
            )
        assert reply.status_code == 403 and "access_token" not in reply.text
