"""A real, throw-away PostgreSQL for the Prefect server (Debian's ``postgresql`` package).

``initdb`` makes a new cluster in a temporary directory (as the ``postgres`` user when the tests run
as root: PostgreSQL refuses to run as root), ``pg_ctl`` starts it on a free loopback port with its
socket in that directory, a database ``prefect`` with ``pg_trgm`` is created, and the whole cluster
is stopped and deleted at the end, even when tests fail. Nothing of the machine's own PostgreSQL
(``pg_ctlcluster``'s clusters) is touched.

:class:`Postgres`'s ``url`` (``postgresql+asyncpg://…``) is for ``PREFECT_API_DATABASE_CONNECTION_URL``.
The tests' fixtures ``postgres`` and ``prefect_on_postgres`` are in tests/fixtures/postgres.py.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from haplane.testing.prefect import free_port

USER = "haplane"


def pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class Postgres:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="haplane-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/prefect"
        self.as_root = os.geteuid() == 0

    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"
            )

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "postgres.log"),
            "-w",
            "-t",
            "90",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            "start",
        )
        for sql, db in (("CREATE DATABASE prefect", "postgres"), ("CREATE EXTENSION IF NOT EXISTS pg_trgm", "prefect")):
            self._run(
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            )

    def query(self, sql: str) -> str:
        """One value or row of ``sql`` on the prefect database (psql -At)."""
        cmd = [
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            USER,
            "-d",
            "prefect",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip()

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
