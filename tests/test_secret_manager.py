"""Private keys out of instance metadata: each in Secret Manager, readable by its replica's VM alone.

The emulator serves the Secret Manager REST subset; the real ``google-cloud-secret-manager``
client (REST transport) talks to it, both as the operator and as a VM with the token the
emulator's metadata server hands that VM. The instances are read back with the real
``google-cloud-compute`` client.
"""

from __future__ import annotations

import uuid

import pytest
from google.api_core.exceptions import Forbidden
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from blocks.pki import KEY_NAMES
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.remove_replica import remove_replica
from flows.replace_replica import replace_replica
from haplane.cloud.gce import token_credentials
from haplane.cloud.secretstore import SecretStore, SecretUnreadable, read_as_vm, secret_id, service_account_email
from haplane.core.topology import LABEL_CLUSTER
from haplane.emulator.secretmanager import WORKERS_ACCOUNT
from haplane.emulator.server import Emulator
from haplane.node.spec import SECRET_SUFFIXES, SECRETS_KEY
from haplane.testing import REGION, ZONES
from tasks.keys import key_secret_id
from tests.fixtures.cluster import PROJECT


def test_secret_manager_subset_with_the_real_client(tmp_path):
    with Emulator(state_dir=tmp_path) as emu:
        store = SecretStore("p", emu.url, credentials=token_credentials(emu.workers_token))
        reader = WORKERS_ACCOUNT  # the policy names the workers: they may read it back
        v1 = store.put("c1", "r1-master", "etcd-peer-key", "one", reader)
        v2 = store.put("c1", "r1-master", "etcd-peer-key", "two", reader)  # same secret, a new version
        assert v1.endswith("/versions/1") and v2.endswith("/versions/2")
        assert (store.read(v1), store.read(v2)) == ("one", "two")
        assert store.read(v2.rsplit("/", 1)[0] + "/latest") == "two"
        policy = store.client.get_iam_policy(request={"resource": store.name("r1-master-etcd-peer-key")})
        assert [(b.role, list(b.members)) for b in policy.bindings] == [
            ("roles/secretmanager.secretAccessor", [f"serviceAccount:{reader}"])
        ]
        store.put("c2", "r9-master", "etcd-peer-key", "other cluster", reader)
        assert store.list("c1") == ["projects/p/secrets/r1-master-etcd-peer-key"]
        store.client.destroy_secret_version(request={"name": v2})
        with pytest.raises(SecretUnreadable, match="destroyed"):
            store.read(v2)
        assert store.read(v2.rsplit("/", 1)[0] + "/latest") == "one"  # the newest enabled one
        assert store.delete(store.name("r1-master-etcd-peer-key")) is True
        assert store.delete(store.name("r1-master-etcd-peer-key")) is False
        assert store.list("c1") == []
        # a token the metadata server never issued is refused (401; the client then tries to refresh it)
        with pytest.raises(Exception, match="401|refresh"):
            read_as_vm(emu.url, "ya29.forged", v1)


def _instances(cloud, cluster: str) -> list[compute_v1.Instance]:
    client = compute_v1.InstancesClient(
        client_options={"api_endpoint": cloud.emulator.url}, credentials=AnonymousCredentials()
    )
    return [i for z in ZONES for i in client.list(project=PROJECT, zone=z) if i.labels.get(LABEL_CLUSTER) == cluster]


@pytest.mark.usefixtures("prefect_api")
def test_no_private_key_in_metadata_and_a_vm_reads_only_its_own(shared_cloud):
    cloud = shared_cloud
    cluster = f"sec-{uuid.uuid4().hex[:5]}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    assert all(r["health"] == "healthy" for r in rows)  # etcd and the API servers run on keys read from secrets
    store = SecretStore.for_gce(cloud.gce)
    try:
        instances = _instances(cloud, cluster)
        assert len(instances) == 3
        for inst in instances:
            items = {i.key: i.value for i in inst.metadata.items}
            assert not [k for k, v in items.items() if "PRIVATE KEY" in v], f"a private key in {inst.name}'s metadata"
            assert not [k for k in items if k.startswith("haplane-tls-") and k.endswith("-key")]
            assert set(__import__("json").loads(items[SECRETS_KEY])) == SECRET_SUFFIXES
            assert [sa.email for sa in inst.service_accounts] == [service_account_email(PROJECT, inst.name)]
        # one secret per replica and key (beside the cluster's own keys, readable by the workers alone)
        cluster_keys = {store.name(key_secret_id(cluster, n)) for n in KEY_NAMES}
        assert sorted(set(store.list(cluster)) - cluster_keys) == sorted(
            store.name(secret_id(i.name, s)) for i in instances for s in SECRET_SUFFIXES
        )

        a, b = instances[0], instances[1]
        token_a = cloud.emulator.runtime.token_for_ip(a.network_interfaces[0].network_i_p)
        own = read_as_vm(
            cloud.emulator.url, token_a, store.name(secret_id(a.name, "etcd-peer-key")) + "/versions/latest"
        )
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        assert load_pem_private_key(own.encode(), password=None) is not None  # its own key, readable
        with pytest.raises(Forbidden):
            read_as_vm(cloud.emulator.url, token_a, store.name(secret_id(b.name, "etcd-peer-key")) + "/versions/latest")
        with pytest.raises(Forbidden):  # nor may a VM manage secrets
            from google.cloud import secretmanager_v1
            from google.oauth2.credentials import Credentials

            secretmanager_v1.SecretManagerServiceClient(
                transport="rest",
                credentials=Credentials(token=token_a),
                client_options={"api_endpoint": cloud.emulator.url},
            ).delete_secret(request={"name": store.name(secret_id(b.name, "etcd-peer-key"))})

        # a VM deleted behind haplane's back: replacing its replica destroys the lost replica's secrets too
        lost = next(i for i in instances if i.zone.endswith(ZONES[1]))
        cloud.gce.wait(cloud.gce.delete_instance(ZONES[1], lost.name, rid=str(uuid.uuid4())))
        replace_replica(cluster=cluster, replica_name=lost.name)
        assert store.list(cluster, lost.name) == []
        assert len(set(store.list(cluster)) - cluster_keys) == 3 * len(SECRET_SUFFIXES)

        # removing a replica destroys its secrets, and only its
        victim = next(i for i in instances if i.zone.endswith(ZONES[2]))
        remove_replica(cluster=cluster, zone=ZONES[2], replica_name=victim.name)
        assert store.list(cluster, victim.name) == []
        assert len(set(store.list(cluster)) - cluster_keys) == 2 * len(SECRET_SUFFIXES)
    finally:
        delete_cluster(cluster=cluster)
    assert store.list(cluster) == []
    assert cloud.processes(cluster) == []
