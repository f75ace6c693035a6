"""CA rotation: new CAs trusted beside the old ones, leaves re-issued from them, the old ones dropped.

Pure: the phases of :mod:`haplane.cloud.pki` (begin, switch, finish) and what each replica trusts in each,
the PKI block's round trip, the refusal of a second rotation while one is under way. End to end
(long): ``rotate-certificates rotate_ca=true`` on a 3-replica cluster, killed half-way (after the
switch, with leaves re-issued from the new CA on some replicas only) and resumed with the same
change id, while a canary writes through the endpoint with no failed write; afterwards every
certificate chains to the new CAs, every replica trusts the new CAs alone, etcd refuses the old
etcd CA's certificates, and the old CAs' keys are gone from the PKI block.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from cryptography import x509

from blocks.store import read_pki
from haplane.cloud import pki
from haplane.testing import REGION, ZONES
from tests.unit.test_ca_rotation import _certs, _signed_by

# ---------------------------------------------------------------- pure


# ---------------------------------------------------------------- end to end


def _vm_tls(cloud, cluster: str) -> dict[str, dict[str, str]]:
    return _vm_tls_of(cloud.gce, cluster)


def _vm_tls_of(gce, cluster: str) -> dict[str, dict[str, str]]:
    from haplane.core.topology import LABEL_CLUSTER
    from haplane.node.spec import TLS_PREFIX

    return {
        vm.name: {k[len(TLS_PREFIX) :]: v for k, v in vm.metadata.items() if k.startswith(TLS_PREFIX)}
        for vm in gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    }


@pytest.mark.long  # about 3 minutes: three passes over three replicas, each restarting etcd
@pytest.mark.timeout(900)  # under heavy load a pass over the replicas takes minutes
def test_ca_rotation_killed_half_way_resumes_with_no_failed_write_and_the_old_ca_refused(cloud, prefect_api):
    import httpx
    from cryptography.hazmat.primitives.serialization import Encoding

    from flows.create_cluster import create_cluster
    from flows.delete_cluster import delete_cluster
    from flows.rotate_certificates import rotate_certificates
    from haplane.cloud.etcd import EtcdClient, EtcdTLS, EtcdUnavailable
    from haplane.cloud.gce import Gce
    from haplane.node.spec import client_url
    from haplane.processes import stop_group
    from haplane.testing.canary import EndpointCanary
    from tasks.cluster import force_unlock
    from tasks.pki import load_cas
    from tests.fixtures.cluster import PROJECT

    cluster = f"carot-{uuid.uuid4().hex[:5]}"
    change_id = f"ca-{cluster}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    try:
        endpoint = rows[0]["endpoint IP"]
        old = load_cas(cluster)
        ips = [client_url(vm.internal_ip) for vm in cloud.gce.list_instances(ZONES)]
        started = time.monotonic()
        # a client of the cluster is handed every cluster CA the replicas trust (public certificates:
        # the new CA is in the first replica's ca.crt before any server presents a certificate of it),
        # as an administrator hands out a kubeconfig with the CA bundle
        gce, trusted = Gce(PROJECT, cloud.emulator.url), dict.fromkeys(_certs(old.ca_bundle()))

        def bundle() -> str:
            for tls in _vm_tls_of(gce, cluster).values():
                trusted.update(dict.fromkeys(_certs(tls["ca"])))
            return "".join(c.public_bytes(Encoding.PEM).decode() for c in trusted)

        canary = EndpointCanary(endpoint, bundle, period=0.2, retry_s=10.0)
        with canary:
            env = prefect_api.env()
            env.update(
                HAPLANE_GCE_ENDPOINT=cloud.emulator.url, HAPLANE_PROJECT=PROJECT, PREFECT_LOGGING_LEVEL="WARNING"
            )
            code = (
                "from flows.rotate_certificates import rotate_certificates; "
                f"rotate_certificates(cluster={cluster!r}, rotate_ca=True, service_account_key=False, "
                f"change_id={change_id!r})"
            )
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                cwd=os.getcwd(),
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:  # killed once the first replica has leaves of the new CA (the old CA signs nothing any more)
                deadline, moved = time.monotonic() + 240, []
                while time.monotonic() < deadline and not moved and proc.poll() is None:
                    moved = [
                        n
                        for n, tls in _vm_tls(cloud, cluster).items()
                        if not _signed_by(x509.load_pem_x509_certificate(tls["apiserver-cert"].encode()), old.ca)
                    ]
                    time.sleep(0.1)
            finally:
                stop_group(proc, sig=signal.SIGKILL)
            assert moved and len(moved) < 3, f"the CA rotation was not caught half-way: {moved}"
            halfway = read_pki(cluster)
            assert halfway.ca_rotation == change_id and "previous-ca" in halfway.key_versions, (
                "the old CA's key must be kept until the rotation is complete"
            )
            assert halfway.previous_etcd_ca_cert == old.etcd_ca.cert_pem
            force_unlock(cluster)

            rows = rotate_certificates(cluster=cluster, rotate_ca=True, service_account_key=False, change_id=change_id)
            time.sleep(2)
        elapsed = time.monotonic() - started
        print(
            f"\nCA rotation (killed once, resumed): {elapsed:.1f} s; canary: {len(canary.samples)} writes "
            f"through {endpoint}, {sum(s.attempts - 1 for s in canary.samples)} retried, "
            f"{len(canary.failed_writes)} failed"
        )
        assert canary.failed_writes == [], [(s.t, s.error) for s in canary.failed_writes[:5]]
        assert len(canary.samples) > 20
        assert all(r["health"] == "healthy" for r in rows)

        new = load_cas(cluster)
        assert new.ca_phase == "none" and new.ca_rotation is None
        assert new.ca.cert_pem != old.ca.cert_pem and new.etcd_ca.cert_pem != old.etcd_ca.cert_pem
        block = read_pki(cluster)
        # the old keys are gone: from the block, and their secrets from Secret Manager
        assert not {"previous-ca", "previous-etcd-ca"} & set(block.key_versions) and block.legacy_keys() == {}
        from haplane.cloud.secretstore import SecretStore
        from tasks.keys import key_secret_id

        left = set(SecretStore.for_gce(cloud.gce).list(cluster))
        assert (
            not {
                f"projects/{cloud.gce.project}/secrets/{key_secret_id(cluster, n)}"
                for n in ("previous-ca", "previous-etcd-ca")
            }
            & left
        )
        assert _signed_by(new.operator.certificate, new.etcd_ca)
        for name, tls in _vm_tls(cloud, cluster).items():
            assert _certs(tls["ca"]) == [new.ca.certificate], f"{name} still trusts another cluster CA"
            assert _certs(tls["etcd-ca"]) == [new.etcd_ca.certificate], f"{name} still trusts another etcd CA"
            assert _signed_by(x509.load_pem_x509_certificate(tls["apiserver-cert"].encode()), new.ca)
            for s in ("etcd-peer-cert", "etcd-server-cert", "apiserver-etcd-client-cert"):
                assert _signed_by(x509.load_pem_x509_certificate(tls[s].encode()), new.etcd_ca), (name, s)
            assert not any("PRIVATE KEY" in v for v in tls.values())

        # etcd: the new operator certificate works; the old one, and a fresh certificate of the old
        # etcd CA, are refused by every member
        with EtcdClient(ips, tls=EtcdTLS.from_cas(new), timeout=5) as etcd:
            etcd.put("/after-ca-rotation", "ok")
        fresh_old = pki.issue(old.etcd_ca, role="x", common_name="old-ca-client", client=True)
        for cert in (old.operator, fresh_old):
            tls = EtcdTLS(ca_pem=new.etcd_ca_bundle(), cert_pem=cert.cert_pem, key_pem=cert.key_pem)
            for url in ips:
                with pytest.raises(EtcdUnavailable), EtcdClient([url], tls=tls, timeout=5) as etcd:
                    etcd.put("/with-the-old-ca", "refused")
        # the endpoint now presents a certificate of the new cluster CA: the old CA alone no longer verifies it
        import ssl

        with pytest.raises(httpx.ConnectError):
            httpx.get(
                f"https://{endpoint}:6443/readyz", verify=ssl.create_default_context(cadata=old.ca.cert_pem), timeout=5
            )
        assert (
            httpx.get(
                f"https://{endpoint}:6443/readyz", timeout=5, verify=ssl.create_default_context(cadata=new.ca.cert_pem)
            ).status_code
            == 200
        )

        # no private key in the run's logs or artifacts
        logs = httpx.post(
            f"{prefect_api.url}/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_DESC"}, timeout=30
        ).json()
        assert logs and not any("PRIVATE KEY" in entry["message"] for entry in logs)
        arts = httpx.post(f"{prefect_api.url}/artifacts/filter", json={"limit": 200}, timeout=30).json()
        assert not any("PRIVATE KEY" in str(a.get("data")) for a in arts)
    finally:
        delete_cluster(cluster=cluster)
    assert cloud.processes() == []
