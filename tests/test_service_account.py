"""One service-account key pair per cluster: a token minted on one replica verifies on every other.

The pure part checks the JWTs against kube-apiserver's rules (signature by any configured key,
issuer, audience, expiry). The end-to-end part creates a 3-replica cluster in the emulator (real
etcd, the API-server stand-in verifying real ES256 signatures against the key files each replica
was given), mints a token on each replica and has every replica verify it, then rotates the key
with the rotate-certificates flow and checks old and new tokens on every replica again.
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
import uuid

import httpx
import pytest

from blocks.pki import ClusterPKI
from blocks.store import delete_pki, read_pki
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.rotate_certificates import rotate_certificates
from haplane.cloud import serviceaccount
from haplane.cloud.pki import (
    create_cluster_cas,
    issue,
    new_service_account_key,
)
from haplane.core.topology import LABEL_CLUSTER, ClusterNames
from haplane.testing import REGION, ZONES
from tasks.pki import ensure_cluster_pki, load_cas

# ---------------------------------------------------------------- pure: tokens as kube-apiserver sees them


# ---------------------------------------------------------------- the PKI block


@pytest.mark.usefixtures("prefect_api")
def test_a_cluster_saved_before_service_account_keys_gets_one_and_keeps_it(bare_emulator, monkeypatch):
    # the keys go to Secret Manager: the emulator's, as the workers
    monkeypatch.setenv("HAPLANE_GCE_ENDPOINT", bare_emulator.url)
    monkeypatch.setenv("HAPLANE_PROJECT", "old-project")
    monkeypatch.setenv("HAPLANE_GCE_TOKEN", bare_emulator.workers_token)
    cluster = f"old-{uuid.uuid4().hex[:5]}"
    cas = create_cluster_cas(cluster)
    legacy = ClusterPKI.from_cas(cas)
    legacy = legacy.model_copy(update={"service_account_key": None, "service_account_key_created": None})
    legacy.save(ClusterNames(cluster).pki_block)
    assert load_cas(cluster).service_account is None
    try:
        ensure_cluster_pki(cluster)
        made = load_cas(cluster).service_account
        assert made is not None and made.age() < dt.timedelta(minutes=5)
        assert load_cas(cluster).ca.cert_pem == cas.ca.cert_pem  # the CAs are untouched
        ensure_cluster_pki(cluster)
        assert load_cas(cluster).service_account.kid == made.kid  # made once, then kept
        saved = read_pki(cluster)  # and moved out of the block with the other keys
        assert saved.legacy_keys() == {} and "service-account" in saved.key_versions
    finally:
        delete_pki(cluster)


# ---------------------------------------------------------------- end to end: three replicas, one key


def _admin_ctx(cluster: str) -> ssl.SSLContext:
    """TLS to the API servers with an administrator's client certificate the test issues itself."""
    cas = load_cas(cluster)
    admin = issue(cas.ca, role="admin", common_name="test-admin", organization="system:masters", client=True)
    ctx = ssl.create_default_context(cadata=cas.ca.cert_pem)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        cert.write_text(admin.cert_pem)
        key.write_text(admin.key_pem.get_secret_value())
        ctx.load_cert_chain(cert, key)
    return ctx


def _mint(ip: str, admin: ssl.SSLContext, name: str) -> str:
    resp = httpx.post(
        f"https://{ip}:6443/api/v1/namespaces/default/serviceaccounts/{name}/token",
        json={"spec": {"expirationSeconds": 3600}},
        verify=admin,
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["status"]["token"]


def _who(ip: str, ca_pem: str, token: str) -> httpx.Response:
    return httpx.post(
        f"https://{ip}:6443/apis/authentication.k8s.io/v1/selfsubjectreviews",
        headers={"Authorization": f"Bearer {token}"},
        json={},
        verify=ssl.create_default_context(cadata=ca_pem),
        timeout=10,
    )


def _kid(token: str) -> str:
    import json

    return json.loads(serviceaccount._unb64(token.split(".")[0]))["kid"]


def test_tokens_verify_on_every_replica_before_and_after_a_rotation(shared_cloud, prefect_api):
    cloud = shared_cloud
    cluster = f"sa-{uuid.uuid4().hex[:5]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    try:
        ips = [vm.internal_ip for vm in cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})]
        assert len(ips) == 3
        cas = load_cas(cluster)
        admin = _admin_ctx(cluster)

        # no credentials: refused; a client certificate of another CA: refused at minting
        resp = httpx.post(
            f"https://{ips[0]}:6443/api/v1/namespaces/default/serviceaccounts/x/token",
            json={},
            verify=ssl.create_default_context(cadata=cas.ca.cert_pem),
            timeout=10,
        )
        assert resp.status_code == 401

        before = {ip: _mint(ip, admin, f"before-{i}") for i, ip in enumerate(ips)}
        for minted_on, token in before.items():
            for ip in ips:
                resp = _who(ip, cas.ca.cert_pem, token)
                assert resp.status_code == 201, f"token minted on {minted_on} refused by {ip}: {resp.text}"
                assert resp.json()["status"]["userInfo"]["username"].startswith("system:serviceaccount:default:before-")
        # a token signed by a key the cluster never had is refused everywhere
        stranger, _ = serviceaccount.mint(
            new_service_account_key().key_pem.get_secret_value(), namespace="default", name="evil"
        )
        assert all(_who(ip, cas.ca.cert_pem, stranger).status_code == 401 for ip in ips)

        old_kid = cas.service_account.kid
        rotate_certificates(cluster=cluster)
        new_kid = load_cas(cluster).service_account.kid
        assert new_kid != old_kid

        # every replica signs with the new key once its key files are delivered
        deadline = time.monotonic() + 60
        after: dict[str, str] = {}
        while time.monotonic() < deadline and len(after) < len(ips):
            for i, ip in enumerate(ips):
                token = _mint(ip, admin, f"after-{i}")
                if _kid(token) == new_kid:
                    after[ip] = token
            time.sleep(0.5)
        assert set(after) == set(ips), "not every replica signs with the rotated key"
        for token in [*before.values(), *after.values()]:
            for ip in ips:
                resp = _who(ip, cas.ca.cert_pem, token)
                assert resp.status_code == 201, f"{ip} refused a token (kid {_kid(token)}): {resp.text}"
    finally:
        delete_cluster(cluster=cluster)
    assert cloud.processes(cluster) == []
