"""CA rotation: the phases, the PKI block across them, and which rotation may run (the rotation itself, killed half way, is tests/test_ca_rotation.py)."""

from __future__ import annotations

import pytest
from cryptography import x509

from haplane.cloud import pki
from haplane.core.rotation import check_rotation


def test_ca_rotation_phases_trust_both_then_sign_new_then_drop_old():
    cas = pki.create_cluster_cas("c")
    old_ca, old_etcd = cas.ca, cas.etcd_ca
    assert cas.ca_phase == "none" and len(_certs(cas.etcd_ca_bundle())) == 1

    trusting = pki.begin_ca_rotation(cas, "rot-1")
    assert trusting.ca_phase == "trusting" and trusting.ca_rotation == "rot-1"
    assert trusting.ca == old_ca and trusting.etcd_ca == old_etcd  # the old CAs still sign
    assert {c.subject for c in _certs(trusting.etcd_ca_bundle())} == {
        old_etcd.certificate.subject,
        trusting.next_etcd_ca.certificate.subject,
    }
    assert len(_certs(trusting.ca_bundle())) == 2
    assert trusting.next_ca.certificate.subject != old_ca.certificate.subject  # chains are never ambiguous
    with pytest.raises(
        ValueError,
        match=r"already under way \(change 'rot-1', trusting\): resume it with "
        r"rotate_ca=true, change_id='rot-1'",
    ):
        pki.begin_ca_rotation(trusting, "rot-2")
    with pytest.raises(ValueError, match="cannot finish before the switch"):
        pki.finish_ca_rotation(trusting)

    switched = pki.switch_cas(trusting)
    assert switched.ca_phase == "switched"
    assert switched.etcd_ca == trusting.next_etcd_ca and switched.previous_etcd_ca == old_etcd
    assert switched.previous_ca.key_pem.get_secret_value() == old_ca.key_pem.get_secret_value()  # key kept
    r = pki.issue_replica_certs(switched, hostname="h", internal_ip="10.0.0.2", endpoint_ip="35.0.0.1")
    assert all(_signed_by(leaf.certificate, switched.etcd_ca) for leaf in (r.etcd_peer, r.etcd_server))
    assert _signed_by(r.apiserver.certificate, switched.ca) and not _signed_by(r.apiserver.certificate, old_ca)
    tls = pki.node_tls(switched, r)  # a replica re-issued now still trusts both, for the others' old leaves
    assert len(_certs(tls["etcd-ca"])) == 2 and len(_certs(tls["ca"])) == 2
    assert _certs(switched.etcd_ca_bundle(drop_previous=True)) == [switched.etcd_ca.certificate]
    with pytest.raises(ValueError, match="no new CA to switch to"):
        pki.switch_cas(switched)

    done = pki.finish_ca_rotation(switched)
    assert done.ca_phase == "none" and done.ca_rotation is None and done.previous_ca is None
    assert len(done.cas()) == 2 and _certs(done.ca_bundle()) == [done.ca.certificate]
    roles = [i.role for i in pki.inventory(switched)]
    assert "previous/etcd-ca" in roles and "previous/cluster-ca" in roles


def test_the_pki_block_keeps_a_rotation_under_way_and_the_lifetime():
    from pydantic import SecretStr

    from blocks.pki import ClusterPKI, cas_keys
    from tasks.keys import changed_keys

    cas = pki.switch_cas(
        pki.begin_ca_rotation(pki.create_cluster_cas("c", lifetimes=pki.Lifetimes(leaf_minutes=5)), "rot-1")
    )
    back = ClusterPKI.from_cas(cas).to_cas()
    assert back.ca_phase == "switched" and back.ca_rotation == "rot-1" and back.lifetimes.leaf_minutes == 5
    assert back.previous_etcd_ca.key_pem.get_secret_value() == cas.previous_etcd_ca.key_pem.get_secret_value()
    assert back.etcd_ca_bundle() == cas.etcd_ca_bundle()
    # what finishing the rotation writes: the old CAs' keys go, every other key stays as it is
    keys = {n: k for n, k in cas_keys(cas).items() if k is not None} | {"snapshot": SecretStr("kept")}
    finished = pki.finish_ca_rotation(cas)
    assert changed_keys(keys, cas_keys(finished)) == {"previous-ca": None, "previous-etcd-ca": None}
    fields = ClusterPKI.public_fields(finished)
    assert fields["previous_ca_cert"] is None and fields["ca_rotation"] is None
    assert "PRIVATE KEY" not in repr(fields) and "PRIVATE KEY" not in repr(back)


def test_only_the_ca_rotation_under_way_may_run():
    check_rotation(None, "any", rotate_ca=False)
    check_rotation("rot-1", "rot-1", rotate_ca=True)
    for change, rotate_ca in (("rot-2", True), ("rot-1", False), ("rot-2", False)):
        with pytest.raises(
            RuntimeError,
            match=r"CA rotation of this cluster is under way \(change 'rot-1'\): "
            r"finish it first with rotate-certificates rotate_ca=true "
            r"change_id='rot-1'",
        ):
            check_rotation("rot-1", change, rotate_ca)


def _certs(bundle: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle.encode())


def _signed_by(cert: x509.Certificate, ca: pki.CertKey) -> bool:
    try:
        cert.verify_directly_issued_by(ca.certificate)
        return True
    except Exception:  # noqa: BLE001 - InvalidSignature, or another issuer's key type
        return False
