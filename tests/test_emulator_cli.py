"""`haplane emulator` as a process: one ready line, serves, exits 0 on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx

RUN = (
    "import argparse; from haplane.emulator import server; p = argparse.ArgumentParser(); "
    "s = p.add_subparsers(dest='cmd'); server.add_cli(s); raise SystemExit(server.run_cli(p.parse_args()))"
)


def start(tmp_path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, "emulator", "--port", "0", "--bare", "--state-dir", str(tmp_path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_cli_ready_line_and_sigterm(tmp_path):
    proc = start(tmp_path, "--profile", "gce", "--time-scale", "0.5")
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(r"haplane emulator ready on (http://127\.0\.0\.1:(\d+))\n", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        health = httpx.get(m.group(1) + "/_emulator/health").json()
        assert health["latency"]["profile"] == "gce" and health["latency"]["timeScale"] == 0.5
        r = httpx.get(m.group(1) + "/compute/v1/projects/p/regions/us-east1")
        assert r.status_code == 200 and r.json()["name"] == "us-east1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == ""  # exactly one line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_non_loopback_host(tmp_path):
    proc = start(tmp_path, "--host", "0.0.0.0")
    try:
        assert proc.wait(timeout=15) != 0
        assert "127.0.0.0/8" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_namespaces_with_bare_before_touching_the_network(tmp_path):
    proc = start(tmp_path, "--network", "namespaces")
    try:
        assert proc.wait(timeout=15) == 2
        assert "drop --bare" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
