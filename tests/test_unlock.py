"""``haplane unlock CLUSTER [--lock cluster|health] [--force]`` frees one named lock, and only once its
holder's run has ended; ``--force`` frees it anyway and says what it overrides.

Real Prefect locks (the session's server), a real holder killed with SIGKILL in its own process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

from haplane.cli import main
from haplane.cloud.locks import health_lock_name, lock_name
from tests.test_health_lock import HeldLock

HERE = socket.gethostname()


def _held(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).active_slots > 0
        except ObjectNotFound:
            return False


class HeldHealthLock(HeldLock):
    """A health check of the cluster running (its own lock held, from another thread)."""

    def _hold(self) -> None:
        from tasks.health import health_lock

        try:
            with health_lock(self.cluster) as held:
                assert held
                self.taken.set()
                self.release.wait(300)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.taken.set()


def test_unlock_frees_one_lock_of_a_dead_holder_and_refuses_a_live_one(prefect_api, capsys):
    cluster = f"unl-{uuid.uuid4().hex[:5]}"
    # a live holder (a run in this process): refused, nothing freed; --force frees it and says whose it was
    with HeldLock(cluster):
        assert _held(lock_name(cluster))
        assert main(["unlock", cluster]) == 1
        err = capsys.readouterr().err
        assert (
            f"'{lock_name(cluster)}' was not freed: it is held by a process outside any flow run, process "
            f"{os.getpid()} on host {HERE}"
            in err
            and "whose process is running" in err
            and "--force" in err
        )
        assert _held(lock_name(cluster)), "a live run's lock was freed"
        assert main(["unlock", cluster, "--force"]) == 0
        out = capsys.readouterr().out
        assert f"freed '{lock_name(cluster)}' by --force, overriding this: it is held by" in out
        assert f"process {os.getpid()}" in out
        assert not _held(lock_name(cluster))

    # a holder killed while it holds the lock (SIGKILL: nothing released, its lease still runs), beside a
    # live health check: unlock frees the dead run's lock alone, without --force
    code = (
        f"import time\nfrom haplane.cloud.locks import cluster_lock\nwith cluster_lock({cluster!r}):\n"
        f"    print('held', flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ), start_new_session=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with HeldHealthLock(cluster):
            proc.kill()
            proc.wait(30)
            assert _held(lock_name(cluster)) and _held(health_lock_name(cluster))
            assert main(["unlock", cluster]) == 0
            out = capsys.readouterr().out
            assert f"freed '{lock_name(cluster)}': its holder" in out and f"process {proc.pid}" in out
            assert "is gone: that process no longer runs" in out
            assert not _held(lock_name(cluster))
            assert _held(health_lock_name(cluster)), "unlock freed a lock it was not asked to free"
            assert main(["unlock", cluster, "--lock", "health"]) == 1  # the check is alive
            assert _held(health_lock_name(cluster))
        assert main(["unlock", cluster, "--lock", "health"]) == 0
        assert "is not held: nothing to free" in capsys.readouterr().out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
