"""The watcher's /readyz probe against the real API-server stand-in (its own process, no etcd behind it).

What a user of ``haplane watch`` relies on: a replica whose API server answers "not ready" is judged
(answered), one where nothing answers, or that does not prove itself with the cluster's CA, counts as
not answering (so a worker cut off from every replica makes the cluster unknown, never failed); and
the port the load balancer forwards keeps answering HTTP/1.0, closing each connection (a kept-alive
connection through the load balancer stays on a replica being replaced).
"""

from __future__ import annotations

import random
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haplane.cloud.pki import create_cluster_cas, issue_replica_certs, node_tls
from haplane.node.spec import APISERVER_PORT, write_pki
from haplane.watch import ReadyzProbe


def _free_ip() -> str:
    """A loopback address nothing of this host listens on at 6443 (127.0.0.0/8 is all loopback)."""
    for _ in range(50):
        ip = f"127.{random.randint(100, 199)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            if s.connect_ex((ip, APISERVER_PORT)) != 0:
                return ip
    raise RuntimeError("no free loopback address")


@pytest.fixture
def standin(tmp_path: Path):
    """The API-server stand-in on a free loopback address, its etcd absent; (ip, cluster CAs)."""
    ip = _free_ip()
    cas = create_cluster_cas("readyz")
    certs = issue_replica_certs(cas, hostname="r0", internal_ip=ip, endpoint_ip=ip)
    write_pki(node_tls(cas, certs), tmp_path / "pki")
    argv = [sys.executable, "-m", "haplane.emulator.apiserver", "--ip", ip, "--name", "r0"]
    argv += ["--health-port", "0", "--pki-dir", str(tmp_path / "pki"), "--etcd-url", f"https://{ip}:2379"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex((ip, APISERVER_PORT)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"the stand-in exited: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the stand-in did not listen within 60 s")
            time.sleep(0.1)
        yield ip, cas
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_an_api_server_that_answers_not_ready_is_judged_and_one_that_cannot_be_reached_is_not(standin):
    ip, cas = standin
    probe = ReadyzProbe(cas.ca_bundle())
    for _ in range(2):  # the second look resumes the first one's TLS session: the same answer
        ready, not_after, problem, answered = probe(ip)
        assert (ready, not_after, answered) == (False, None, True)
        assert problem.startswith("API server not ready: etcd https://") and "unreachable" in problem, problem
    assert ip in probe.sessions

    ready, _, problem, answered = probe(_free_ip())
    assert (ready, answered) == (False, False)
    assert problem == "API server unreachable: ConnectionRefusedError"


def test_an_api_server_without_the_clusters_certificate_counts_as_not_answering(standin):
    ip, _ = standin
    other = create_cluster_cas("another")
    ready, _, problem, answered = ReadyzProbe(other.ca_bundle())(ip)
    assert (ready, answered) == (False, False)
    assert problem == "API server unreachable: SSLCertVerificationError"


def test_the_port_the_load_balancer_forwards_closes_each_connection(standin):
    ip, cas = standin
    ctx = ssl.create_default_context(cadata=cas.ca_bundle())
    with (
        socket.create_connection((ip, APISERVER_PORT), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=ip) as tls,
    ):
        tls.sendall(f"GET /livez HTTP/1.1\r\nHost: {ip}\r\nConnection: keep-alive\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(4096):  # ends only when the server closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200"), answer[:80]
