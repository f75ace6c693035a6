"""The API-server stand-in speaks HTTP/1.1 with keep-alive, and its clients keep one connection.

An idle emulated VM's CPU went largely to TLS handshakes: the controller-manager and scheduler
stand-ins read their Lease every retry period, each time over a new connection, because the
stand-in answered HTTP/1.0. These tests run the stand-in's handler in this process (no etcd: the
etcd URL points nowhere, so /readyz answers 503) and check that one connection carries every kind
of answer, errors included, and that a body whose end cannot be told ends the connection.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from haplane.cloud.pki import create_cluster_cas, issue_replica_certs, node_tls
from haplane.emulator import apiserver, controllers
from haplane.node.spec import TLS_FILES, write_pki


def _free_etcd_url() -> str:
    """An etcd URL nothing listens on (a port just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    cas = create_cluster_cas("keepalive")
    certs = issue_replica_certs(cas, hostname="keepalive-0", internal_ip="127.0.0.1", endpoint_ip="127.0.0.1")
    path = tmp_path_factory.mktemp("pki")
    write_pki(node_tls(cas, certs), path)
    return path


def _serve(handler, tls: ssl.SSLContext | None) -> tuple[apiserver._Server, threading.Thread]:
    server = apiserver._Server(("127.0.0.1", 0), handler)
    server.tls = tls
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def standin(pki: Path) -> Iterator[tuple[int, int]]:
    """(HTTPS port, plain-HTTP health port) of a stand-in whose etcd does not answer."""
    etcd = httpx.Client(timeout=0.5)
    handler = apiserver.make_handler(etcd, _free_etcd_url(), "keepalive-0", port=0)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / TLS_FILES["apiserver-cert"], pki / TLS_FILES["apiserver-key"])
    ctx.load_verify_locations(cafile=str(pki / TLS_FILES["ca"]))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    api, health = _serve(handler, ctx)[0], _serve(handler, None)[0]
    try:
        yield api.server_address[1], health.server_address[1]
    finally:
        for server in (api, health):
            server.shutdown()
            server.server_close()
        etcd.close()


def _client_ctx(pki: Path, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / TLS_FILES["ca"]))
    ctx.check_hostname = False  # the certificate names the replica's IP; the test connects to loopback
    if cert:
        ctx.load_cert_chain(pki / TLS_FILES["controller-manager-cert"], pki / TLS_FILES["controller-manager-key"])
    return ctx


def _ask(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def test_one_connection_carries_every_answer_errors_included(standin, pki):
    api_port, health_port = standin
    conn = http.client.HTTPSConnection("127.0.0.1", api_port, context=_client_ctx(pki, cert=False), timeout=5)
    try:
        answers = [
            _ask(conn, "GET", "/livez"),
            _ask(conn, "GET", "/readyz"),  # etcd does not answer: 503
            _ask(conn, "GET", "/version"),  # no client certificate: 401
            _ask(conn, "PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x", b"{}"),  # 401
            _ask(conn, "POST", "/haplane/canary", b"not json"),  # 400
            _ask(conn, "GET", "/nope", b"a body a GET should not have"),  # 404, its body read and dropped
            _ask(conn, "POST", "/haplane/canary", b'{"no": "key"}'),  # 400
        ]
        sock = conn.sock
        assert [a[0] for a in answers] == [200, 503, 401, 401, 400, 404, 400]
        assert all(not a[2].will_close for a in answers), "an answer closed the connection"
        assert _ask(conn, "GET", "/livez")[:2] == (200, b"ok\n")
        assert conn.sock is sock, "the connection was not kept"
    finally:
        conn.close()

    health = http.client.HTTPConnection("127.0.0.1", health_port, timeout=5)
    try:
        assert _ask(health, "GET", "/livez")[0] == 200
        sock = health.sock
        assert _ask(health, "GET", "/healthz")[0] == 503
        assert health.sock is sock
    finally:
        health.close()


def test_a_body_whose_end_cannot_be_told_ends_the_connection(standin):
    _, health_port = standin
    conn = http.client.HTTPConnection("127.0.0.1", health_port, timeout=5)
    try:
        status, _, resp = _ask(conn, "POST", "/haplane/canary", b"{}", {"Content-Length": "x"})
        assert status == 400 and resp.will_close
        conn.close()
        status, _, resp = _ask(conn, "POST", "/x", b"2\r\n{}\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"})
        assert resp.will_close
        status, _, resp = _ask(conn, "DELETE", "/x")  # not served: BaseHTTPRequestHandler's 501
        assert status == 501 and resp.will_close
    finally:
        conn.close()


@pytest.fixture
def short_idle_timeout(monkeypatch) -> float:
    monkeypatch.setattr(apiserver, "IDLE_TIMEOUT_S", 0.5)
    return 0.5


@pytest.mark.usefixtures("short_idle_timeout")  # before the stand-in is made: it closes idle connections at 0.5 s
def test_the_controller_stand_ins_client_keeps_one_connection_and_reopens_a_closed_one(standin, pki):
    api_port, _ = standin
    api = controllers.Api("127.0.0.1", api_port, _client_ctx(pki, cert=True), timeout=5)
    try:
        for _ in range(5):
            code, body = api.call("GET", "/version")
            assert code == 200 and body["gitVersion"].startswith("v1.")
        assert api.connections == 1
        # the server closed the kept connection while it idled: the next call opens another and is answered
        time.sleep(1.0)
        code, body = api.call("GET", "/version")
        assert code == 200 and body["gitVersion"].startswith("v1.")
        assert api.connections == 2
    finally:
        api.close()
