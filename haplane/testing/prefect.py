"""A real Prefect server (``prefect server start``, SQLite unless told otherwise) for tests and benchmarks.

Started on a free loopback port with its own PREFECT_HOME, in its own process group, and stopped
with it. The tests' ``prefect_api`` fixture (tests/fixtures/prefect.py) runs one per test session;
bench/common.py one per benchmark. ``auth``: the server asks every client for that credential
(``PREFECT_SERVER_API_AUTH_STRING``), as in production; :func:`auth_headers` is what a raw REST call sends.

A server on SQLite starts from a copy of an already migrated, otherwise empty database
(:func:`migrated_sqlite`): running Prefect's ~100 migrations on a fresh database took about half of
a server's start (11-13 of 25 CPU-seconds on the project's 2-core machine), once per test process.
The copy is made once per Prefect version and set of migrations, in ``HAPLANE_PREFECT_DB_CACHE``
(default ``~/.cache/haplane/prefect-db``); the server still runs its migrations on start, which find
nothing to do. ``HAPLANE_PREFECT_DB_CACHE=off`` migrates every server from scratch as before.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from haplane.processes import stop_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_headers() -> dict[str, str]:
    """What Prefect's client sends with ``PREFECT_API_AUTH_STRING`` set (for raw REST calls of tests)."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def _migrations_key() -> str:
    """Prefect's version and its SQLite migrations' file names: what decides the migrated schema."""
    import prefect
    import prefect.server.database as database

    versions = Path(database.__file__).parent / "_migrations" / "versions" / "sqlite"
    names = sorted(p.name for p in versions.glob("*.py"))
    digest = hashlib.sha256("\n".join([prefect.__version__, *names]).encode()).hexdigest()[:16]
    return f"{prefect.__version__}-{digest}"


def migrated_sqlite(env: dict[str, str]) -> Path | None:
    """An empty SQLite database with Prefect's migrations applied, made once per Prefect version and
    set of migrations (by ``prefect server database upgrade``) and kept for later runs; None when
    ``HAPLANE_PREFECT_DB_CACHE`` is ``off``. Test processes that ask at once wait for one to make it."""
    where = os.environ.get("HAPLANE_PREFECT_DB_CACHE", str(Path.home() / ".cache" / "haplane" / "prefect-db"))
    if where.lower() == "off":
        return None
    cache = Path(where)
    cache.mkdir(parents=True, exist_ok=True)
    template = cache / f"prefect-{_migrations_key()}.db"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even if this process dies
        if not template.exists():
            work = cache / f"making-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            try:
                prefect = Path(sys.executable).parent / "prefect"
                made = dict(env, PREFECT_HOME=str(work))
                made.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
                made.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
                subprocess.run(
                    [str(prefect), "server", "database", "upgrade", "-y"],
                    env=made,
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=600,
                )
                _copy_sqlite(work / "prefect.db", work / "template.db")
                os.replace(work / "template.db", template)  # whole or absent, never half written
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return template


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (a write-ahead log folded in)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


class PrefectServer:
    def __init__(self, home: Path, env_extra: dict[str, str] | None = None, auth: str | None = None) -> None:
        self.home = home
        self.env_extra = dict(env_extra or {})  # e.g. PREFECT_API_DATABASE_CONNECTION_URL (haplane/testing/postgres.py)
        self.auth = auth  # the server's PREFECT_SERVER_API_AUTH_STRING; its clients (workers) get it too
        if auth:
            self.env_extra.update(PREFECT_SERVER_API_AUTH_STRING=auth, PREFECT_API_AUTH_STRING=auth)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED=os.environ.get("PREFECT_UI_ENABLED", "true"),
            # expire a killed flow's cluster-lock lease within seconds, not the default 15 s loop
            PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1",
            # evaluate proactive automations (the watcher's grace) every second, not every 5 s: as
            # docs/production.md sets it, so a grace of 10 s fires at 10-11 s, not 10-15 s
            PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY="PT1S",  # an ISO 8601 duration ("1" is refused)
        )
        env.update(self.env_extra)
        return env

    def on_sqlite(self) -> bool:
        """Whether the server keeps its database in PREFECT_HOME's SQLite file (Prefect's default)."""
        env = self.env()
        url = env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or env.get("PREFECT_API_DATABASE_CONNECTION_URL")
        return not url

    def start(self, timeout: float = 240.0) -> None:  # generous: ~75 s on this 2-core host under load
        prefect = Path(sys.executable).parent / "prefect"
        database = self.home / "prefect.db"
        if self.on_sqlite() and not database.exists():
            template = migrated_sqlite(self.env())
            if template is not None:
                _copy_sqlite(template, database)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"prefect server exited with {self.proc.returncode}; see {self.log}")
                try:
                    if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            raise RuntimeError(f"prefect server not healthy after {timeout:.0f}s; see {self.log}")
        except BaseException:  # not healthy in time, or the test's own timeout struck while waiting
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


def _drain_prefect_services() -> None:
    """Send this process's pending logs and events before the server goes, instead of retrying
    against a stopped server at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=10)
        except Exception:  # nothing pending, or already stopped
            pass


@contextlib.contextmanager
def serving(server: PrefectServer):
    """Start ``server`` and point this process's Prefect client at it; stop it afterwards."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_HOME, temporary_settings

    # a generous deadline: on a loaded 2-core machine the server's start has taken over 90 s
    server.start(timeout=float(os.environ.get("HAPLANE_PREFECT_START_S", "300")))
    old = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_API_AUTH_STRING")}
    os.environ["PREFECT_API_URL"], os.environ["PREFECT_HOME"] = server.url, str(server.home)
    if server.auth:
        os.environ["PREFECT_API_AUTH_STRING"] = server.auth
    else:
        os.environ.pop("PREFECT_API_AUTH_STRING", None)
    try:
        with temporary_settings(
            updates={PREFECT_API_URL: server.url, PREFECT_HOME: str(server.home), PREFECT_API_AUTH_STRING: server.auth}
        ):
            yield server
    finally:
        _drain_prefect_services()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
