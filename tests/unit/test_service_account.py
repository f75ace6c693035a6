"""Service-account keys: tokens, their checks and key rotation (tokens on a cluster's replicas are tests/test_service_account.py)."""

from __future__ import annotations

import time

import pytest

from haplane.cloud import serviceaccount
from haplane.cloud.pki import (
    create_cluster_cas,
    issue_replica_certs,
    key_id,
    new_service_account_key,
    node_tls,
    rotate_service_account_key,
)


def test_a_token_verifies_against_any_configured_key_and_nothing_else():
    sa = new_service_account_key()
    other = new_service_account_key()
    token, exp = serviceaccount.mint(sa.key_pem.get_secret_value(), namespace="kube-system", name="coredns")
    user = serviceaccount.verify(token, sa.public_bundle())
    assert user.username == "system:serviceaccount:kube-system:coredns"
    assert exp > time.time() + 3000
    # accepted when its key is anywhere in the file, refused when it is not there
    assert serviceaccount.verify(token, other.public_pem + sa.public_pem).name == "coredns"
    with pytest.raises(serviceaccount.TokenError, match="signature"):
        serviceaccount.verify(token, other.public_bundle())
    # a tampered payload does not verify
    head, body, sig = token.split(".")
    forged = serviceaccount.mint(other.key_pem.get_secret_value(), namespace="kube-system", name="admin")[0]
    with pytest.raises(serviceaccount.TokenError, match="signature"):
        serviceaccount.verify(f"{head}.{forged.split('.')[1]}.{sig}", sa.public_bundle())


def test_expiry_issuer_and_audience_are_checked():
    sa = new_service_account_key()
    key = sa.key_pem.get_secret_value()
    old, _ = serviceaccount.mint(key, namespace="a", name="b", expiration_s=600, now=time.time() - 3600)
    with pytest.raises(serviceaccount.TokenError, match="expired"):
        serviceaccount.verify(old, sa.public_bundle())
    other_aud, _ = serviceaccount.mint(key, namespace="a", name="b", audiences=("vault",))
    with pytest.raises(serviceaccount.TokenError, match="audiences"):
        serviceaccount.verify(other_aud, sa.public_bundle())
    other_iss, _ = serviceaccount.mint(key, namespace="a", name="b", issuer="https://elsewhere")
    with pytest.raises(serviceaccount.TokenError, match="issuer"):
        serviceaccount.verify(other_iss, sa.public_bundle())


def test_rotation_keeps_the_previous_public_key_accepted_until_the_next():
    first = new_service_account_key()
    second = rotate_service_account_key(first)
    third = rotate_service_account_key(second)
    signed_by_first, _ = serviceaccount.mint(first.key_pem.get_secret_value(), namespace="n", name="s")
    assert second.kid != first.kid and second.public_bundle().count("BEGIN PUBLIC KEY") == 2
    assert serviceaccount.verify(signed_by_first, second.public_bundle()).name == "s"
    with pytest.raises(serviceaccount.TokenError):  # two rotations later it is gone
        serviceaccount.verify(signed_by_first, third.public_bundle())
    header = serviceaccount._unb64(signed_by_first.split(".")[0])
    assert key_id(first.public_pem).encode() in header  # kube's kid: base64url(sha256(DER))
    assert "PRIVATE" not in repr(second) and "PRIVATE" not in str(second)


def test_every_replica_gets_the_same_service_account_key():
    cas = create_cluster_cas("sa")
    tls = [
        node_tls(cas, issue_replica_certs(cas, hostname=f"r{i}", internal_ip=f"10.0.0.{i}", endpoint_ip="10.1.0.1"))
        for i in (1, 2, 3)
    ]
    assert len({t["service-account-key"] for t in tls}) == 1
    assert len({t["apiserver-key"] for t in tls}) == 3  # the serving keys stay each replica's own
    assert tls[0]["service-account-pub"] == cas.service_account.public_pem
