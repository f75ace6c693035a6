"""The cluster's own private keys live in Secret Manager, never in a Prefect block.

One cluster (one replica, the instant profile) goes through everything that writes keys: create,
a CA rotation (new CA keys, the switch, the old ones deleted), a snapshot; then every block
document is read through the Prefect API with its secrets and no private key is found in any of
them, in PEM, base64 or DER-in-base64 form. The same cluster is then saved the old way (keys
inline) and migrated by ``haplane migrate-keys``, killed part-way and resumed; two first snapshots
at once make one key; and a key that cannot be read is refused, naming its secret, before any GCE call.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing

import httpx
import pytest
from pydantic import SecretStr

from blocks.pki import LEGACY_FIELDS, SNAPSHOT, ClusterPKI
from blocks.store import read_pki
from flows.add_replica import add_replica
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.rotate_certificates import rotate_certificates
from flows.snapshot_cluster import snapshot_cluster
from haplane.cloud.etcd import EtcdClient, EtcdTLS
from haplane.cloud.secretstore import SecretStore
from haplane.core.topology import ClusterNames
from haplane.node.spec import client_url
from haplane.testing import REGION, ZONES
from tasks.cluster import force_unlock
from tasks.keys import KeysUnreadable, key_secret_id, read_keys, save_pki
from tasks.pki import load_cas
from tests.fixtures.gcs import FIXTURE_KEY_ID

pytestmark = [pytest.mark.long, pytest.mark.timeout(1800)]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _decoded(text: str) -> list[bytes]:
    """``text`` and each long token of it, base64-decoded where that works."""
    out = []
    for token in [text, *text.replace('"', " ").replace("\\n", " ").split()]:
        if len(token) < 24:
            continue
        try:
            out.append(base64.b64decode(token + "=" * (-len(token) % 4), validate=False))
        except (binascii.Error, ValueError):
            pass
    return out


def _pem_body(pem: str) -> str:
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def assert_no_private_key_in_blocks(api: str, known: dict[str, str]) -> int:
    """Every block document, with its secrets, through the API: no private key in any form. Returns how many."""
    docs = (
        httpx.post(f"{api}/block_documents/filter", json={"include_secrets": True, "limit": 200}, timeout=30)
        .raise_for_status()
        .json()
    )
    # the GCS fixture's GcpCredentials block (tests/fixtures/gcs.py) holds a service-account key the test
    # made for prefect-gcp, on the server the session shares: the user's kind of credential, not haplane's
    docs = [d for d in docs if FIXTURE_KEY_ID not in json.dumps(d)]
    text = json.dumps(docs)
    flat = text.replace("\\n", "")
    assert "PRIVATE KEY" not in text
    for s in _strings(docs):
        for blob in _decoded(s):
            assert b"PRIVATE KEY" not in blob
    for name, value in known.items():
        for form in {value, _pem_body(value), base64.b64encode(value.encode()).decode()} - {""}:
            assert form not in text and form not in flat, f"the {name} key is in a block document"
    return len(docs)


def cluster_secret_versions(store: SecretStore, cluster: str) -> dict[str, list[str]]:
    """Each cluster-key secret's ENABLED versions."""
    out = {}
    for secret in store.list(cluster):
        sid = secret.rsplit("/", 1)[-1]
        if "-cluster-" in sid:
            versions = store.client.list_secret_versions(request={"parent": secret})
            out[sid] = [v.name for v in versions if v.state.name == "ENABLED"]
    return out


def _workers_may_read(store: SecretStore, secret: str) -> None:
    """Give the secret's policy back to the workers' account (as the cluster's keys have it), so that
    delete-cluster can read the key again after a test that took it away failed half-way."""
    from google.api_core.exceptions import NotFound
    from google.iam.v1 import policy_pb2

    try:
        now = store.client.get_iam_policy(request={"resource": secret})
    except NotFound:
        return
    workers = policy_pb2.Binding(
        role="roles/secretmanager.secretAccessor", members=[f"serviceAccount:{store.workers_account()}"]
    )
    store.client.set_iam_policy(
        request={"resource": secret, "policy": policy_pb2.Policy(bindings=[workers], etag=now.etag)}
    )


def _migrate(env: dict[str, str], cluster: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "haplane.cli", "migrate-keys", cluster],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.usefixtures("prefect_api")
def test_keys_out_of_blocks_rotation_migration_and_refusals(cloud, prefect_api, monkeypatch):
    cluster = f"keys-{uuid.uuid4().hex[:5]}"
    store = SecretStore.for_gce(cloud.gce)
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES[:1], replicas=1)
    try:
        assert [r["health"] for r in rows] == ["healthy"]
        before = {n: k.get_secret_value() for n, k in read_keys(read_pki(cluster), store).items()}
        assert set(before) == {"ca", "etcd-ca", "operator", "service-account", "snapshot"}

        # --- rotation: every key written again; each secret keeps one enabled version, the block's
        rotate_certificates(cluster=cluster, rotate_ca=True)
        snapshot_cluster(cluster=cluster)
        block = read_pki(cluster)
        after = {n: k.get_secret_value() for n, k in read_keys(block, store).items()}
        assert set(after) == set(before)
        assert all(after[n] != before[n] for n in ("ca", "etcd-ca", "operator", "service-account"))
        assert after["snapshot"] == before["snapshot"]
        enabled = cluster_secret_versions(store, cluster)
        assert {sid: v for sid, v in enabled.items() if v} == {
            key_secret_id(cluster, n): [block.key_versions[n]] for n in after
        }, "a replaced version is not destroyed"

        # --- no private key in any block document (every key this cluster ever had, in any form)
        known = {f"{n} (before)": v for n, v in before.items()} | {n: v for n, v in after.items()}
        assert assert_no_private_key_in_blocks(prefect_api.url, known) >= 2

        # --- migration: the cluster saved the old way (keys inline, no secrets), killed part-way, resumed
        legacy = block.model_copy(
            update={"key_versions": {}, **{LEGACY_FIELDS[n]: SecretStr(v) for n, v in after.items()}}
        )
        legacy.save(ClusterNames(cluster).pki_block, overwrite=True)
        for sid in enabled:
            store.delete(store.name(sid))
        env = prefect_api.env() | {"PREFECT_LOGGING_LEVEL": "WARNING"}
        adds: list[str] = []
        proc_box: list[subprocess.Popen] = []
        original_add = cloud.emulator.secrets._add_version

        def add_then_kill(p, query, body, who):  # the third key written: the migration dies mid-way
            reply = original_add(p, query, body, who)
            adds.append(p["secret"])
            if len(adds) == 3 and proc_box:
                os.kill(proc_box[0].pid, signal.SIGKILL)
            return reply

        monkeypatch.setattr(cloud.emulator.secrets, "_add_version", add_then_kill)
        proc_box.append(_migrate(env, cluster))
        out, _ = proc_box[0].communicate(timeout=400)
        assert proc_box[0].returncode == -signal.SIGKILL, out
        half = read_pki(cluster)  # killed before the block was saved: still the old way, nothing lost
        assert half.key_versions == {} and {n: k.get_secret_value() for n, k in half.legacy_keys().items()} == after
        monkeypatch.setattr(cloud.emulator.secrets, "_add_version", original_add)
        force_unlock(cluster)  # the killed run's lock (`haplane unlock`), rather than waiting out its lease
        from haplane.cli import main

        assert main(["migrate-keys", cluster]) == 0  # resumed (in this process: no second start-up to wait for)
        migrated = read_pki(cluster)
        assert migrated.legacy_keys() == {}
        assert {n: k.get_secret_value() for n, k in read_keys(migrated, store).items()} == after
        enabled = cluster_secret_versions(store, cluster)
        assert enabled == {key_secret_id(cluster, n): [migrated.key_versions[n]] for n in after}, (
            "the killed run's versions were not destroyed"
        )
        cas = load_cas(cluster)
        ip = rows[0]["internal IP"]
        with closing(EtcdClient([client_url(ip)], tls=EtcdTLS.from_cas(cas), timeout=5)) as etcd:
            assert len(etcd.member_list()) == 1  # the operator's key from Secret Manager still opens etcd
        assert assert_no_private_key_in_blocks(prefect_api.url, known) >= 2

        # --- two first snapshots at once (a cluster from before snapshot keys): one key
        save_pki(cluster, store, lambda b, k: ({}, {SNAPSHOT: None}))
        import haplane.cloud.snapshots as snap
        from tasks.snapshots import snapshot_key

        slow = snap.new_key

        def new_key_slowly() -> str:  # both would be past "is there a key?" before either saved one
            time.sleep(2)
            return slow()

        monkeypatch.setattr(snap, "new_key", new_key_slowly)
        got: list[str] = []
        errors: list[str] = []

        def first_snapshot_key() -> None:
            try:
                got.append(snapshot_key(cluster, None))
            except Exception as exc:  # noqa: BLE001 - said by the assertion below
                errors.append(repr(exc))

        # each thread in a copy of this context: the Prefect settings that point at the test's server
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(first_snapshot_key,)) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # the second waits for the first's lock and finds its key; on a slow host it may give up waiting
        # (ClusterBusy: that snapshot is skipped, no key made). Never a second key.
        assert [e for e in errors if "ClusterBusy" not in e] == [] and got, errors
        assert len(set(got)) == 1, "two first snapshots made two keys"
        assert len(cluster_secret_versions(store, cluster)[key_secret_id(cluster, SNAPSHOT)]) == 1
        monkeypatch.setattr(snap, "new_key", slow)

        # --- a key the workers may not read, or deleted by hand: refused, naming it, before any GCE call
        from google.iam.v1 import policy_pb2

        operator_secret = store.name(key_secret_id(cluster, "operator"))
        policy = store.client.get_iam_policy(request={"resource": operator_secret})
        someone_else = policy_pb2.Binding(
            role="roles/secretmanager.secretAccessor", members=["serviceAccount:someone@else.iam.gserviceaccount.com"]
        )
        store.client.set_iam_policy(
            request={
                "resource": operator_secret,
                "policy": policy_pb2.Policy(bindings=[someone_else], etag=policy.etag),
            }
        )
        cloud.admin.clear_calls()
        with pytest.raises(KeysUnreadable, match=f"may not read secret {operator_secret}"):
            add_replica(cluster=cluster)
        assert cloud.admin.calls() == []
        now = store.client.get_iam_policy(request={"resource": operator_secret})  # its etag moved on
        store.client.set_iam_policy(
            request={"resource": operator_secret, "policy": policy_pb2.Policy(bindings=policy.bindings, etag=now.etag)}
        )
        assert read_keys(read_pki(cluster), store, ("operator",))  # readable again: the policy is back
        snapshot_secret = store.name(key_secret_id(cluster, SNAPSHOT))
        store.delete(snapshot_secret)
        cloud.admin.clear_calls()
        with pytest.raises(KeysUnreadable, match=f"secret {snapshot_secret} .*does not exist"):
            add_replica(cluster=cluster)
        assert cloud.admin.calls() == []
        assert read_pki(cluster).key_versions.get(SNAPSHOT), "the block still names the lost key (nothing dropped)"
    finally:
        force_unlock(cluster)
        _workers_may_read(store, store.name(key_secret_id(cluster, "operator")))  # a failure above must not hide
        block = read_pki(cluster)
        if block is not None and SNAPSHOT in block.key_versions:
            # forget the deleted snapshot key so that delete-cluster can read the others
            ClusterPKI.model_copy(
                block, update={"key_versions": {n: v for n, v in block.key_versions.items() if n != SNAPSHOT}}
            ).save(ClusterNames(cluster).pki_block, overwrite=True)
        delete_cluster(cluster=cluster)
    assert store.list(cluster) == []  # delete-cluster removed the cluster's secrets with its VMs
    assert read_pki(cluster) is None
