"""The process ``haplane watch``: the Prefect and GCE wiring of :class:`haplane.watch.Watcher`.

The watcher itself (what a look is, which transitions emit which events, the loop) is in
:mod:`haplane.watch`; this module gives it the workspace: the cluster spec blocks, each cluster's PKI
block, its lock's state (read, never taken), the GCE connection, and the command line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from haplane import watch
from haplane.watch import DEFAULT_PERIOD_S, Watcher, parse_shard


def pki_reader(connection: str | None) -> Callable[[str], tuple[Any, str | None]]:
    """``read_pki(cluster)``: the cluster's certificates with the one key the watcher uses, the operator's
    etcd client key, read from Secret Manager with the connection's credentials (the workers' account);
    or None and why they could not be read (then the cluster is unknown). The CA keys are never read here."""
    from blocks.pki import OPERATOR
    from tasks.pki import read_cas

    def read_pki(cluster: str) -> tuple[Any, str | None]:
        return read_cas(cluster, connection, names=(OPERATOR,))

    return read_pki


def cluster_locked(cluster: str) -> bool:
    """Whether a change holds the cluster's lock (read only: the watcher never takes it). Asked only
    when a replica looks like an add in progress, not every period."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from tasks.cluster import lock_name

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(lock_name(cluster)).active_slots > 0
        except ObjectNotFound:
            return False


def gce_factory(connection: str | None) -> Callable[[str | None], Any]:
    """Gce per project: the connection's endpoint and credentials, the spec's project (default: the
    connection's)."""
    from blocks.cluster import resolve_gce
    from haplane.cloud.gce import Gce

    base = resolve_gce(connection)
    cache: dict[str, Gce] = {}

    def gce_for(project: str | None) -> Gce:
        p = project or base.project
        if p not in cache:
            cache[p] = (
                base if p == base.project else Gce(project=p, endpoint=base.endpoint, credentials=base.credentials)
            )
        return cache[p]

    return gce_for


def workspace_connection() -> str | None:
    """The connection block setup-workspace remembered (variable ``haplane_connection``), if any."""
    from prefect.variables import Variable

    return Variable.get("haplane_connection", default=None) or None


def add_cli(sub: Any) -> Any:
    p = sub.add_parser(
        "watch",
        help="watch every cluster of the workspace and emit events on transitions "
        "(long-lived; never changes a cluster)",
        description=watch.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--period", type=float, default=DEFAULT_PERIOD_S, help=f"seconds between looks (default {DEFAULT_PERIOD_S:g})"
    )
    p.add_argument("--shard", default="0/1", help="i/n: watch only the clusters whose name hashes to shard i of n")
    p.add_argument(
        "--connection",
        help="haplane-gce-connection block: the GCE calls and the operator key's reads in Secret Manager (default: "
        "the workspace's, else HAPLANE_PROJECT / HAPLANE_GCE_ENDPOINT / HAPLANE_GCE_TOKEN)",
    )
    p.add_argument("--name", help="this watcher's name in its heartbeat (default haplane-watch-<i>-of-<n>)")
    return p


def run_cli(args: Any) -> int:
    if not args.period > 0:
        raise SystemExit(f"haplane watch: --period must be a positive number of seconds, got {args.period!r}")
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        raise SystemExit(f"haplane watch: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not every request of every period
    import signal

    from blocks.store import spec_blocks

    connection = args.connection or workspace_connection()
    watcher = Watcher(
        gce_factory(connection),
        spec_blocks,
        pki_reader(connection),
        cluster_locked,
        period=args.period,
        shard=shard,
        name=args.name or f"haplane-watch-{shard[0]}-of-{shard[1]}",
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: watcher.stop.set())
    watcher.run()
    _drain_events()
    return 0


def _drain_events() -> None:
    """Send the events still queued before the process exits."""
    from prefect.events.worker import EventsWorker

    try:
        EventsWorker.drain_all(timeout=10)
    except Exception:  # noqa: BLE001 - nothing pending, or already stopped
        pass
