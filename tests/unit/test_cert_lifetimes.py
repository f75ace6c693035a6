"""Leaf lifetimes in minutes and expiry thresholds: the rules (the health check's rotation of short-lived leaves is tests/test_cert_lifetimes.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from haplane.cloud import pki
from haplane.core.rotation import expiry_decision, rotation_fits, thresholds


def test_a_leaf_lifetime_in_minutes_is_honoured_and_valid_from_now():
    now = dt.datetime.now(dt.UTC)
    cas = pki.create_cluster_cas("short", lifetimes=pki.Lifetimes(leaf_minutes=3))
    r = pki.issue_replica_certs(cas, hostname="h", internal_ip="10.0.0.2", endpoint_ip="35.0.0.1")
    for cert in [leaf.certificate for leaf in r.leaves()] + [cas.operator.certificate]:
        span = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert abs(span - dt.timedelta(minutes=3)) < dt.timedelta(seconds=2), span
        # back-dated by a tenth of its lifetime only: most of it is still ahead
        assert cert.not_valid_after_utc - now > dt.timedelta(minutes=2, seconds=30)
    year = pki.issue_replica_certs(
        pki.create_cluster_cas("long"), hostname="h", internal_ip="10.0.0.2", endpoint_ip="35.0.0.1"
    ).apiserver.certificate
    assert year.not_valid_after_utc - year.not_valid_before_utc == dt.timedelta(days=365)
    assert pki.Lifetimes().leaf == dt.timedelta(days=365) and pki.Lifetimes(leaf_minutes=90).leaf_text == "90 minutes"


@pytest.mark.parametrize(
    "value, match",
    [
        (1, r"leaf_lifetime_minutes=1 is too short: a leaf must last at least 2 minutes"),
        (0, r"too short"),
        (-5, r"too short"),
        ("10", r"must be a whole number of minutes, got '10'"),
        (2.5, r"must be a whole number of minutes, got 2.5"),
        (True, r"must be a whole number of minutes, got True"),
        (3650 * 1440 + 1, r"outlives the CA \(3650 days = 5256000 minutes\)"),
    ],
)
def test_bad_leaf_lifetimes_are_refused_with_the_fix(value, match):
    with pytest.raises(ValueError, match=match):
        pki.Lifetimes(leaf_minutes=value)


def test_thresholds_in_minutes_replace_days_and_refuse_ambiguity():
    assert thresholds() == (30, 14)
    assert thresholds(warn_days=400, rotate_days=366) == (400, 366)
    warn, rotate = thresholds(warn_minutes=2.5, rotate_minutes=2)
    assert warn == pytest.approx(2.5 / 1440) and rotate == pytest.approx(2 / 1440)
    with pytest.raises(ValueError, match="give the rotate threshold once"):
        thresholds(rotate_days=3, warn_minutes=5, rotate_minutes=2)
    with pytest.raises(ValueError, match=r"rotate threshold \(3.0 minutes\) must not exceed the warn threshold"):
        thresholds(warn_minutes=2, rotate_minutes=3)
    with pytest.raises(ValueError, match=r"rotate threshold \(14.0 days\) must not exceed .* \(5.0 minutes\)"):
        thresholds(warn_minutes=5)

    now = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    certs = [("c-1/etcd-peer", now + dt.timedelta(seconds=150)), ("cluster-ca", now + dt.timedelta(days=3000))]
    assert not expiry_decision(certs, now - dt.timedelta(seconds=60), warn_days=warn, rotate_days=rotate).warn
    early = expiry_decision(certs, now, warn_days=warn, rotate_days=rotate)  # 2.5 min left: warn only
    assert [e.role for e in early.warn] == ["c-1/etcd-peer"] and not early.rotate and "2.5 minutes" in early.text
    late = expiry_decision(certs, now + dt.timedelta(seconds=60), warn_days=warn, rotate_days=rotate)
    assert late.rotate and "1.5 minutes" in late.text  # 1.5 min left: rotate

    # a rotate threshold as long as the leaves' lifetime would rotate on every check: said, and not done
    assert rotation_fits(rotate, dt.timedelta(minutes=3)) is None
    assert rotation_fits(14, dt.timedelta(days=365)) is None
    assert "every check would rotate again" in rotation_fits(
        thresholds(warn_minutes=5, rotate_minutes=3)[1], dt.timedelta(minutes=3)
    )
