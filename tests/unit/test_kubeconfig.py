"""haplane kubeconfig: the lifetime asked for is checked before anything is signed, and the file holds
a client certificate of the cluster CA in group system:masters that lasts what was asked, mode 0600."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from haplane import kubeconfig
from haplane.cloud.pki import create_cluster_cas


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8h", dt.timedelta(hours=8)),
        ("90m", dt.timedelta(minutes=90)),
        ("3600s", dt.timedelta(hours=1)),
        ("1d", dt.timedelta(days=1)),
        ("24h", dt.timedelta(hours=24)),
        ("5m", dt.timedelta(minutes=5)),
    ],
)
def test_ttl_accepted(text, expected):
    assert kubeconfig.parse_ttl(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("25h", "longer than the 24h"),
        ("2d", "longer than the 24h"),
        ("4m", "shorter than 5 minutes"),
        ("0s", "shorter"),
        ("8", "not a duration"),
        ("h", "not a duration"),
        ("-1h", "not a duration"),
        ("8 hours", "not a duration"),
        ("", "not a duration"),
    ],
)
def test_ttl_refused_saying_why(text, why):
    with pytest.raises(ValueError, match=why):
        kubeconfig.parse_ttl(text)


def test_admin_certificate_and_file(tmp_path):
    cas = create_cluster_cas("kc")
    now = dt.datetime.now(dt.UTC)
    client = kubeconfig.issue_admin(cas, dt.timedelta(hours=8), now=now)
    cert = client.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert cert.issuer == cas.ca.certificate.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=8)
    assert dt.timedelta(hours=7, minutes=54) < cert.not_valid_after_utc - now <= dt.timedelta(hours=8)
    text = kubeconfig.render("kc", kubeconfig.server_url("34.1.2.3", 6443), cas.ca_bundle(), client)
    path = tmp_path / "kc.kubeconfig"
    path.write_text("old, world-readable")
    path.chmod(0o644)
    kubeconfig.write_private(path, text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://34.1.2.3:6443"
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]).decode() == cas.ca_bundle()
    user = doc["users"][0]["user"]
    pem = base64.b64decode(user["client-certificate-data"])
    assert x509.load_pem_x509_certificate(pem).serial_number == cert.serial_number
    assert b"PRIVATE KEY" in base64.b64decode(user["client-key-data"])
    assert doc["contexts"][0]["context"]["cluster"] == "kc" and doc["current-context"] == "kc"


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["Bad_Name"], "cluster name 'Bad_Name' is not valid"),
        (["ok", "--ttl", "3d"], "longer than the 24h"),
        (["ok", "--ttl", "soon"], "not a duration"),
        (["ok", "-o", "/nonexistent/dir/kc"], "the directory /nonexistent/dir does not exist"),
    ],
)
def test_cli_refuses_before_anything_is_signed_or_written(argv, why, capsys, tmp_path, monkeypatch):
    from haplane.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["kubeconfig", *argv]) == 2
    err = capsys.readouterr().err
    assert why in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []
