"""Certificates: chains and SANs checked with cryptography's verifier, and a real TLS handshake."""

from __future__ import annotations

import datetime as dt
import inspect
import ipaddress
import itertools
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from blocks.pki import ClusterPKI
from haplane.cloud import pki
from haplane.core.topology import ClusterNames
from haplane.emulator.network import can_bind
from haplane.node import spec as node

INTERNAL_IP = "10.240.0.5"
ENDPOINT_IP = "35.1.2.3"


@pytest.fixture(scope="module")
def cas() -> pki.ClusterCAs:
    return pki.create_cluster_cas("prod")


@pytest.fixture(scope="module")
def replica(cas) -> pki.ReplicaCerts:
    return pki.issue_replica_certs(cas, hostname="prod-master-b", internal_ip=INTERNAL_IP, endpoint_ip=ENDPOINT_IP)


def server_verifier(ca: pki.CertKey, subject, when: dt.datetime | None = None):
    b = PolicyBuilder().store(Store([ca.certificate]))
    if when:
        b = b.time(when)
    sub = IPAddress(ipaddress.ip_address(subject)) if subject[0].isdigit() else DNSName(subject)
    return b.build_server_verifier(sub)


def client_verifier(ca: pki.CertKey):
    return PolicyBuilder().store(Store([ca.certificate])).build_client_verifier()


# ---------------------------------------------------------------- chains and SANs


@pytest.mark.parametrize(
    "name",
    [
        INTERNAL_IP,
        ENDPOINT_IP,
        "127.0.0.1",
        "10.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "prod-master-b",
    ],
)
def test_apiserver_cert_verifies_for_each_san(cas, replica, name):
    chain = server_verifier(cas.ca, name).verify(replica.apiserver.certificate, [])
    assert chain[-1] == cas.ca.certificate


@pytest.mark.parametrize("name", ["34.9.9.9", "10.240.0.6", "example.com"])
def test_apiserver_cert_fails_for_other_names(cas, replica, name):
    with pytest.raises(VerificationError):
        server_verifier(cas.ca, name).verify(replica.apiserver.certificate, [])


def test_apiserver_cert_is_not_trusted_by_the_etcd_ca(cas, replica):
    with pytest.raises(VerificationError):
        server_verifier(cas.etcd_ca, INTERNAL_IP).verify(replica.apiserver.certificate, [])


def test_service_range_first_ip():
    assert pki.first_service_ip("10.0.0.0/24") == "10.0.0.1"
    assert pki.first_service_ip("10.96.0.0/12") == "10.96.0.1"
    dns, ips = pki.apiserver_sans(
        hostname="h", internal_ip="10.1.0.2", endpoint_ip="35.0.0.1", service_cidr="10.96.0.0/12"
    )
    assert "10.96.0.1" in ips and "10.0.0.1" not in ips


def test_no_way_to_pass_an_ephemeral_ip(cas):
    params = set(inspect.signature(pki.issue_replica_certs).parameters)
    assert params == {"cas", "hostname", "internal_ip", "endpoint_ip", "service_cidr", "days", "now"}
    with pytest.raises(TypeError):
        pki.issue_replica_certs(
            cas, hostname="h", internal_ip="10.0.0.2", endpoint_ip="35.0.0.1", external_ip="34.1.1.1"
        )  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="endpoint_ip"):
        pki.issue_replica_certs(cas, hostname="h", internal_ip="10.0.0.2", endpoint_ip="my-lb")


def test_etcd_certs(cas, replica):
    # server: internal IP and 127.0.0.1, signed by the etcd CA, not the cluster CA
    for ip in (INTERNAL_IP, "127.0.0.1"):
        server_verifier(cas.etcd_ca, ip).verify(replica.etcd_server.certificate, [])
    with pytest.raises(VerificationError):
        server_verifier(cas.etcd_ca, ENDPOINT_IP).verify(replica.etcd_server.certificate, [])
    with pytest.raises(VerificationError):
        server_verifier(cas.ca, INTERNAL_IP).verify(replica.etcd_server.certificate, [])
    # peer: serverAuth and clientAuth for the internal IP
    server_verifier(cas.etcd_ca, INTERNAL_IP).verify(replica.etcd_peer.certificate, [])
    client_verifier(cas.etcd_ca).verify(replica.etcd_peer.certificate, [])
    assert set(replica.etcd_peer.info().extended_key_usage) == {"serverAuth", "clientAuth"}
    # clients: the API server's and the operator's, trusted by the etcd CA only
    for leaf in (replica.apiserver_etcd_client, cas.operator):
        verified = client_verifier(cas.etcd_ca).verify(leaf.certificate, [])
        assert verified.chain[-1] == cas.etcd_ca.certificate
        with pytest.raises(VerificationError):
            client_verifier(cas.ca).verify(leaf.certificate, [])
        assert leaf.info().extended_key_usage == ("clientAuth",)
    # a client certificate is no server certificate
    with pytest.raises(VerificationError):
        server_verifier(cas.etcd_ca, "haplane-operator").verify(cas.operator.certificate, [])


def test_another_clusters_ca_does_not_verify(replica):
    other = pki.create_cluster_cas("other")
    with pytest.raises(VerificationError):
        server_verifier(other.ca, INTERNAL_IP).verify(replica.apiserver.certificate, [])
    with pytest.raises(VerificationError):
        client_verifier(other.etcd_ca).verify(replica.apiserver_etcd_client.certificate, [])


# ---------------------------------------------------------------- lifetimes


def test_default_lifetimes(cas, replica):
    ca = cas.ca.info()
    leaf = replica.apiserver.info()
    assert abs((ca.not_after - ca.not_before) - dt.timedelta(days=3650)) < dt.timedelta(seconds=5)
    assert abs((leaf.not_after - leaf.not_before) - dt.timedelta(days=365)) < dt.timedelta(seconds=5)


def test_lifetimes_honoured_and_expiry_enforced():
    now = dt.datetime.now(dt.UTC)
    cas = pki.create_cluster_cas("short", lifetimes=pki.Lifetimes(ca_days=30, leaf_days=2))
    r = pki.issue_replica_certs(cas, hostname="h", internal_ip="10.0.0.2", endpoint_ip="35.0.0.1")
    for info in pki.inventory(cas, [r]):
        days = 30 if info.is_ca else 2
        assert abs((info.not_after - info.not_before) - dt.timedelta(days=days)) < dt.timedelta(seconds=5), info
    # explicit per-replica lifetime
    r7 = pki.issue_replica_certs(cas, hostname="h", internal_ip="10.0.0.2", endpoint_ip="35.0.0.1", days=7)
    assert (r7.apiserver.info().not_after - now).days in (6, 7)
    # valid now, expired in 3 days
    server_verifier(cas.ca, "10.0.0.2", now).verify(r.apiserver.certificate, [])
    with pytest.raises(VerificationError):
        server_verifier(cas.ca, "10.0.0.2", now + dt.timedelta(days=3)).verify(r.apiserver.certificate, [])
    with pytest.raises(ValueError, match="outlive"):
        pki.Lifetimes(ca_days=10, leaf_days=11)


# ---------------------------------------------------------------- bundles, inventory, secrecy


def test_node_tls_bundle(cas, replica):
    tls = pki.node_tls(cas, replica)
    assert set(tls) == set(node.TLS_FILES)
    assert tls["ca"] == cas.ca.cert_pem and tls["etcd-ca"] == cas.etcd_ca.cert_pem
    for suffix in node.SECRET_SUFFIXES:
        assert "PRIVATE KEY" in tls[suffix]
    spec = node.NodeSpec(etcd=None, apiserver=None, tls=tls)
    assert node.NodeSpec.from_metadata(spec.to_metadata()).tls == tls
    assert "PRIVATE KEY" not in repr(node.public_metadata(spec.to_metadata()))


def test_inventory_lists_everything_without_keys(cas, replica):
    inv = pki.inventory(cas, [replica])
    roles = [i.role for i in inv]
    assert roles == [
        "cluster-ca",
        "etcd-ca",
        "operator-etcd-client",
        "prod-master-b/apiserver",
        "prod-master-b/etcd-peer",
        "prod-master-b/etcd-server",
        "prod-master-b/apiserver-etcd-client",
        "prod-master-b/kube-controller-manager-client",
        "prod-master-b/kube-scheduler-client",
    ]
    api = inv[3]
    assert api.issuer == cas.ca.info().subject
    assert set(api.ip_addresses) == {INTERNAL_IP, ENDPOINT_IP, "127.0.0.1", "10.0.0.1"}
    assert {"kubernetes.default.svc.cluster.local", "localhost", "prod-master-b"} <= set(api.sans)
    assert len({i.serial for i in inv}) == len(inv)
    assert "PRIVATE KEY" not in repr(inv)
    assert "BEGIN" not in repr(inv)


def test_reprs_hold_no_key_material(cas, replica):
    for obj in (cas, replica, cas.ca, replica.apiserver, replica.etcd_peer):
        for text in (repr(obj), str(obj)):
            assert "PRIVATE KEY" not in text
            assert "BEGIN" not in text
    assert "**********" in repr(cas.ca.key_pem)


def test_block_round_trip_and_secrecy(cas):
    block = ClusterPKI.from_cas(cas)
    assert block.to_cas() == cas
    assert ClusterNames(block.cluster).pki_block == "prod-pki"
    assert ClusterPKI.get_block_type_slug() == "haplane-cluster-pki"
    for text in (repr(block), str(block), block.model_dump_json(), str(block.model_dump())):
        assert "PRIVATE KEY" not in text
    assert block.ca_key.get_secret_value() == cas.ca.key_pem.get_secret_value()
    # a block's CA issues certificates that verify against the original CA
    again = pki.issue_replica_certs(block.to_cas(), hostname="h", internal_ip="10.0.0.9", endpoint_ip=ENDPOINT_IP)
    server_verifier(cas.ca, "10.0.0.9").verify(again.apiserver.certificate, [])


# ---------------------------------------------------------------- a real TLS handshake

_octets = itertools.count((os.getpid() * 13) % 200 + 20)


class _Livez(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@contextmanager
def https_servers(replica_tls: dict[str, str], ips: list[str], port: int, tmp_path) -> Iterator[None]:
    """One HTTPS server per IP, all serving the replica's API-server certificate."""
    node.write_pki(replica_tls, tmp_path / "pki")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(
        tmp_path / "pki" / node.TLS_FILES["apiserver-cert"], tmp_path / "pki" / node.TLS_FILES["apiserver-key"]
    )
    servers = []
    try:
        for ip in ips:
            srv = ThreadingHTTPServer((ip, port), _Livez)
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            servers.append(srv)
        yield
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def test_real_tls_handshake(tmp_path):
    """The replica's certificate is accepted via its internal IP and the endpoint IP, refused via any other."""
    port = node.APISERVER_PORT
    for _ in range(200):
        prefix = f"127.12.{next(_octets) % 250 + 1}"
        internal, endpoint, ephemeral = f"{prefix}.5", f"{prefix}.9", f"{prefix}.7"
        if all(can_bind(ip, port) for ip in (internal, endpoint, ephemeral)):
            break
    cas = pki.create_cluster_cas("tls")
    replica = pki.issue_replica_certs(cas, hostname="tls-master", internal_ip=internal, endpoint_ip=endpoint)
    client_ctx = ssl.create_default_context(cadata=cas.ca.cert_pem)
    with https_servers(pki.node_tls(cas, replica), [internal, endpoint, ephemeral], port, tmp_path):
        with httpx.Client(verify=client_ctx, timeout=5, trust_env=False) as http:
            for ip in (internal, endpoint):
                r = http.get(f"https://{ip}:{port}/livez")
                assert r.status_code == 200 and r.text == "ok"
            # the ephemeral public IP: the server answers, but its certificate does not name that IP
            with pytest.raises(httpx.ConnectError) as err:
                http.get(f"https://{ephemeral}:{port}/livez")
            assert isinstance(
                err.value.__context__ or err.value.__cause__, ssl.SSLCertVerificationError
            ) or "CERTIFICATE_VERIFY_FAILED" in str(err.value)
        with socket.create_connection((ephemeral, port), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
                client_ctx.wrap_socket(raw, server_hostname=ephemeral)
        # DNS names in the certificate, reached through the internal IP (SNI + hostname check)
        for name in ("kubernetes.default.svc", "localhost"):
            with socket.create_connection((internal, port), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=name) as tls:
                    assert tls.version() in ("TLSv1.2", "TLSv1.3")
        # a client trusting another cluster's CA refuses the certificate
        other = ssl.create_default_context(cadata=pki.create_cluster_cas("other").ca.cert_pem)
        with socket.create_connection((internal, port), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                other.wrap_socket(raw, server_hostname=internal)
