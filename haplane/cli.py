"""The ``haplane`` command.

``haplane demo``      the main job on the local emulator: create a 3-replica cluster with the
                      create-cluster flow, print its replica table, check the endpoint over
                      verified TLS, delete the cluster, stop everything.
``haplane emulator``  run the GCE emulator in the foreground (see haplane.emulator.server).
``haplane setup-workspace``  set up a Prefect workspace: pool, blocks, limits, deployments, schedules.
``haplane migrate-keys C``  move cluster C's private keys out of its PKI block into Secret Manager.
``haplane watch``     watch every cluster (one long-lived process) and emit events on transitions.
``haplane unlock C``  free cluster C's lock (``--lock health``: its health check's) once its holder's run has
                      ended (a killed flow run); ``--force`` frees it anyway, saying what it overrides.
``haplane kubeconfig C [--ttl 8h] [-o FILE]``  a kubeconfig for cluster C's endpoint with a short-lived
                      administrator certificate (written to FILE only, mode 0600).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from haplane.emulator.server import Emulator
    from haplane.emulator.vm import ProcessRuntime

    temporary = args.state_dir is None
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="haplane-demo-"))
    emulator = Emulator(
        state_dir=state_dir, runtime=ProcessRuntime(state_dir), profile=args.profile, time_scale=args.time_scale
    )
    emulator.start()
    os.environ["HAPLANE_GCE_ENDPOINT"] = emulator.url
    os.environ["HAPLANE_PROJECT"] = args.project
    os.environ["HAPLANE_GCE_TOKEN"] = emulator.workers_token
    print(f"GCE emulator on {emulator.url} (state in {state_dir})", flush=True)
    try:
        from flows.create_cluster import create_cluster
        from flows.delete_cluster import delete_cluster
        from tasks.cluster import format_table

        zones = args.zones or [f"{args.region}-{z}" for z in "bcd"]
        started = time.monotonic()
        print(f"create-cluster {args.cluster}: {args.replicas} replicas over {', '.join(zones)} ...", flush=True)
        rows = create_cluster(cluster=args.cluster, region=args.region, zones=zones, replicas=args.replicas)
        print(f"\ncluster {args.cluster} is up after {time.monotonic() - started:.1f} s:\n", flush=True)
        print(format_table(rows), flush=True)
        endpoint = rows[0]["endpoint IP"]
        print(f"\nendpoint https://{endpoint}:6443/readyz -> {_check_endpoint(args.cluster, endpoint)}", flush=True)
        ok = all(r["health"] == "healthy" for r in rows) and len(rows) == args.replicas
        if not args.keep:
            print(f"\ndelete-cluster {args.cluster} ...", flush=True)
            delete_cluster(cluster=args.cluster)
            print("deleted.", flush=True)
        else:
            print("\n--keep: the emulator stops now, so the VMs stop with it", flush=True)
        return 0 if ok else 1
    finally:
        emulator.stop()
        if temporary:
            shutil.rmtree(state_dir, ignore_errors=True)


def _check_endpoint(cluster: str, ip: str) -> str:
    """The API server through the endpoint IP, verified against the cluster CA."""
    import ssl

    import httpx

    from tasks.pki import load_certs

    cas = load_certs(cluster)
    if cas is None:
        return "no cluster CA found"
    ctx = ssl.create_default_context(cadata=cas.ca_bundle())
    try:
        resp = httpx.get(f"https://{ip}:6443/readyz", verify=ctx, timeout=5)
        return f"{resp.status_code} {resp.text.strip()} (TLS verified against the cluster CA)"
    except httpx.HTTPError as exc:
        return f"failed: {exc}"


def _unlock(args: argparse.Namespace) -> int:
    from haplane.cloud.locks import LockHeld, unlock

    try:
        print(unlock(args.cluster, args.lock, force=args.force))
    except LockHeld as exc:
        print(f"haplane unlock: {exc}", file=sys.stderr)
        return 1
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    from haplane.core.topology import ClusterNames, check_cluster_name
    from haplane.kubeconfig import DEFAULT_TTL, issue_admin, parse_ttl, render, server_url, write_private
    from haplane.node.spec import APISERVER_PORT

    try:
        check_cluster_name(args.cluster)
        ttl = parse_ttl(args.ttl or DEFAULT_TTL)
    except ValueError as exc:
        print(f"haplane kubeconfig: {exc}; nothing was written", file=sys.stderr)
        return 2
    out = Path(args.output or f"{args.cluster}.kubeconfig")
    if not out.parent.is_dir():
        print(f"haplane kubeconfig: the directory {out.parent} does not exist; nothing was written", file=sys.stderr)
        return 2
    from blocks.cluster import resolve_gce
    from blocks.store import load_spec
    from tasks.pki import read_cas

    try:
        spec = load_spec(args.cluster)
        gce = resolve_gce(args.connection)
    except ValueError as exc:
        print(f"haplane kubeconfig: {exc}; nothing was written", file=sys.stderr)
        return 2
    cas, problem = read_cas(args.cluster, args.connection)  # the CA key from Secret Manager, never a block
    if cas is None:
        print(f"haplane kubeconfig: {problem}; nothing was written", file=sys.stderr)
        return 2
    names = ClusterNames(args.cluster)
    address = gce.get_address(spec.region, names.address)
    if address is None or not address.address:
        print(
            f"haplane kubeconfig: cluster {args.cluster!r} has no endpoint IP (address {names.address} in "
            f"{spec.region} not found); nothing was written",
            file=sys.stderr,
        )
        return 2
    client = issue_admin(cas, ttl)
    write_private(out, render(args.cluster, server_url(address.address, APISERVER_PORT), cas.ca_bundle(), client))
    expires = client.certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"wrote {out} (mode 0600): server https://{address.address}:{APISERVER_PORT}, user haplane-admin "
        f"(system:masters) until {expires}. Use: kubectl --kubeconfig {out} get --raw /readyz"
    )
    return 0


def _migrate_keys(args: argparse.Namespace) -> int:
    """Move the private keys of a cluster saved before they lived in Secret Manager out of its PKI
    block: each stored as a secret, read back and compared, then removed from the block (resumable)."""
    from blocks.store import read_pki
    from haplane.core.topology import ClusterNames
    from tasks.cluster import ClusterBusy
    from tasks.keys import KeysUnreadable, ensure_keys

    try:
        if read_pki(args.cluster) is None:
            print(
                f"haplane migrate-keys: cluster {args.cluster!r} has no PKI block {ClusterNames(args.cluster).pki_block!r}",
                file=sys.stderr,
            )
            return 2
        written = ensure_keys(args.cluster, args.connection)
    except (KeysUnreadable, ClusterBusy, ValueError) as exc:
        print(f"haplane migrate-keys: {exc}", file=sys.stderr)
        return 1
    block = read_pki(args.cluster)
    print(
        f"{args.cluster}: "
        + (f"moved or made {', '.join(written)}" if written else "nothing to move")
        + f"; block {ClusterNames(args.cluster).pki_block} names {len(block.key_versions)} secret versions and holds no key"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="haplane", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="create a cluster on the local emulator, show it, delete it")
    demo.add_argument("--cluster", default="demo")
    demo.add_argument("--replicas", type=int, default=3)
    demo.add_argument("--region", default="europe-west1")
    demo.add_argument("--zones", nargs="*", help="default: REGION-b, -c, -d")
    demo.add_argument("--project", default="haplane-demo")
    demo.add_argument("--profile", default="instant", help="emulator latency profile: instant or gce")
    demo.add_argument("--time-scale", type=float, default=1.0)
    demo.add_argument("--state-dir", help="where the emulated VMs keep their disks (default: a temp dir)")
    demo.add_argument("--keep", action="store_true", help="do not delete the cluster at the end")
    demo.set_defaults(run=_demo)

    unlock = sub.add_parser(
        "unlock",
        help="free one lock of a cluster whose holder's run has ended (a killed "
        "flow run), without waiting for its lease to expire",
    )
    unlock.add_argument("cluster")
    unlock.add_argument(
        "--lock",
        choices=("cluster", "health"),
        default="cluster",
        help="which lock: cluster-<name> (mutating flows, the default) or health-<name> (the health check's)",
    )
    unlock.add_argument(
        "--force", action="store_true", help="free it even if its holder may still run (says what it overrides)"
    )
    unlock.set_defaults(run=_unlock)

    migrate = sub.add_parser(
        "migrate-keys",
        help="move a cluster's private keys out of its PKI block into "
        "Secret Manager (clusters saved before they lived there)",
    )
    migrate.add_argument("cluster")
    migrate.add_argument(
        "--connection",
        help="haplane-gce-connection block (default: HAPLANE_PROJECT / HAPLANE_GCE_ENDPOINT / HAPLANE_GCE_TOKEN)",
    )
    migrate.set_defaults(run=_migrate_keys)

    kube = sub.add_parser("kubeconfig", help="write a kubeconfig with a short-lived administrator certificate")
    kube.add_argument("cluster")
    kube.add_argument("--ttl", default="8h", help="how long the certificate lasts: 8h (default), 90m, ... at most 24h")
    kube.add_argument("-o", "--output", help="the file to write (mode 0600; default ./CLUSTER.kubeconfig)")
    kube.add_argument(
        "--connection",
        help="haplane-gce-connection block (default: HAPLANE_PROJECT / HAPLANE_GCE_ENDPOINT / HAPLANE_GCE_TOKEN)",
    )
    kube.set_defaults(run=_kubeconfig)

    from haplane.emulator.server import add_cli, run_cli

    add_cli(sub).set_defaults(run=run_cli)
    from deployments.setup import add_cli as add_setup_cli
    from deployments.setup import run_cli as run_setup_cli

    add_setup_cli(sub).set_defaults(run=run_setup_cli)
    from deployments.watch import add_cli as add_watch_cli
    from deployments.watch import run_cli as run_watch_cli

    add_watch_cli(sub).set_defaults(run=run_watch_cli)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except Exception as exc:  # noqa: BLE001 - a refused credential is said plainly; anything else propagates
        refused = prefect_auth_refused(exc)
        if refused is None:
            raise
        print(f"haplane {args.command}: {refused}", file=sys.stderr)
        return 1


def prefect_auth_refused(exc: BaseException) -> str | None:
    """What to do when ``exc`` (or its cause) is the Prefect API refusing this client's credential
    (401); None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if getattr(response, "status_code", None) == 401:
            api = os.environ.get("PREFECT_API_URL") or "the Prefect API"
            given = "a wrong" if os.environ.get("PREFECT_API_AUTH_STRING") else "no"
            return (
                f"{api} refused the request (401 Unauthorized): this client sent {given} credential. Set "
                "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING (user:password), as the "
                "workers have it; nothing was changed"
            )
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
