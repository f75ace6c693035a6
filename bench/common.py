"""What the benchmarks share: a throw-away Prefect server to run the flows against."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from haplane.testing.prefect import PrefectServer


@contextlib.contextmanager
def prefect_server(prefix: str, verbose: bool = False) -> Iterator[Path]:
    """Start a Prefect server (SQLite, no UI, no analytics) in a new work directory and point this
    process at it; yields the work directory. The server is stopped at the end; the directory is
    removed after a success and kept, with its logs, after a failure."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    home = work / "prefect-home"
    home.mkdir()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    server = PrefectServer(home)
    print(f"starting a Prefect server (work dir {work})", flush=True)
    server.start()
    try:
        os.environ["PREFECT_API_URL"], os.environ["PREFECT_HOME"] = server.url, str(home)
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_HOME: str(home)}):
            yield work
    except BaseException:
        print(f"failed; logs kept in {work}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        server.stop()


def delete_clusters(names: list[str]) -> None:
    """delete-cluster each of ``names`` (a benchmark's teardown): one that fails is reported and the
    others are still deleted."""
    from flows.delete_cluster import delete_cluster

    for cluster in names:
        try:
            delete_cluster(cluster=cluster)
        except Exception as exc:  # keep tearing down the others
            print(f"could not delete {cluster}: {exc}", file=sys.stderr)


def print_seconds(title: str, rows: list[tuple[str, float]]) -> None:
    """A benchmark's table: its title line, then one row a step with its seconds."""
    width = max(len(label) for label, _ in rows)
    print()
    print(title)
    print(f"{'step'.ljust(width)}  seconds")
    for label, value in rows:
        print(f"{label.ljust(width)}  {value:7.1f}")
