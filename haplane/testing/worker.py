"""A real ``prefect worker start --type process`` on a Prefect server (:mod:`haplane.testing.prefect`),
started in its own process group and stopped with it and with its flow runs' own sessions.

The tests' fixtures (``ops_cloud``, ``workspace``, ``prefect_worker``) are in tests/fixtures/worker.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from haplane.processes import stop_group
from haplane.testing.prefect import auth_headers

POOL = "haplane"


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    api: str

    def stop(self, sig: int = signal.SIGTERM) -> None:
        # Prefect 3.9 starts each flow-run subprocess in a session of its own: stop those groups too
        runs = descendants(self.proc.pid)
        stop_group(self.proc, sig=sig)
        for pid in runs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)

    def flow_run_pids(self) -> list[int]:
        return descendants(self.proc.pid)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def start_worker(
    server,
    env_extra: dict[str, str],
    log: Path,
    timeout: float = 60.0,
    name: str | None = None,
    env_drop: tuple[str, ...] = (),
) -> Worker:
    env = server.env()
    env.update(env_extra)
    for key in env_drop:
        env.pop(key, None)
    name = name or f"test-worker-{os.getpid()}"
    env.update(
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    prefect = Path(sys.executable).parent / "prefect"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(prefect), "worker", "start", "--pool", POOL, "--type", "process", "--name", name],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    worker = Worker(proc, log, server.url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            resp = httpx.post(
                f"{server.url}/work_pools/{POOL}/workers/filter", json={}, timeout=5, headers=auth_headers()
            )
            if resp.status_code == 200 and name in {w["name"] for w in resp.json()}:
                return worker
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    worker.stop()
    raise RuntimeError(f"prefect worker did not register within {timeout:.0f}s:\n{log.read_text()[-3000:]}")
