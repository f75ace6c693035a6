"""Set up a Prefect workspace for haplane, idempotently (``haplane setup-workspace``).

Against whatever Prefect API the environment points at (``PREFECT_API_URL``: a local
``prefect server start`` on SQLite, a production server, Prefect Cloud):

1. the process work pool ``haplane`` (created if missing);
2. haplane's block types: cluster spec, GCE connection (with prefect-gcp's credentials), cluster PKI;
3. optionally a ``haplane-gce-connection`` block (``--connection``, ``--project``, ``--endpoint``);
4. the variable ``haplane_repo``: the checkout the process worker runs flows from (prefect.yaml's pull step);
5. per cluster, the global concurrency limits ``cluster-<name>`` (mutating flows) and
   ``health-<name>`` (health checks), limit 1 each;
6. the deployments of ``prefect.yaml`` (``prefect --no-prompt deploy --all``), each with the
   workspace's connection block as its default ``connection`` (remembered in the variable
   ``haplane_connection``), so a run started from the UI or the API without one works;
6b. optionally (``--result-storage BLOCK``) the server's default result storage: where every worker
   writes and reads haplane's checkpoints (a prefect-gcp ``GcsBucket``, or a ``LocalFileSystem`` on a
   path all workers share);
7. per cluster, a health-check schedule every ``--health-interval`` seconds (slug ``health-<name>``);
8. per cluster, a snapshot-cluster schedule every ``--snapshot-interval`` seconds (slug
   ``snapshot-<name>``; 0: none);
9. the automation ``haplane-health-check-on-request``: an event ``haplane.health-check.requested``
   on resource ``haplane.cluster.<name>`` (a monitor can post it to the events API) starts a health
   check of that cluster at once.

Running it again changes only what differs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
POOL = "haplane"
HEALTH_DEPLOYMENT = "health-check/health-check"
SNAPSHOT_DEPLOYMENT = "snapshot-cluster/snapshot-cluster"
CONNECTION_VARIABLE = "haplane_connection"
AUTOMATION = "haplane-health-check-on-request"
REQUEST_EVENT = "haplane.health-check.requested"


def say(msg: str) -> None:
    print(f"haplane setup-workspace: {msg}", flush=True)


def ensure_pool(name: str = POOL) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", description="haplane flows (process worker on a machine with the checkout)",
                base_job_template=ProcessWorker.get_default_base_job_template()))
            say(f"work pool {name!r} created")
        except ObjectAlreadyExists:
            say(f"work pool {name!r} exists")


def ensure_block_types() -> None:
    from blocks.cluster import ClusterSpec, GceConnection
    from blocks.pki import ClusterPKI

    for block in (GceConnection, ClusterSpec, ClusterPKI):
        block.register_type_and_schema()
    say("block types registered: haplane-gce-connection, haplane-cluster-spec, haplane-cluster-pki")


def ensure_connection(name: str, project: str, endpoint: str | None, token: str | None = None) -> None:
    """Save the connection block; with an endpoint (the emulator), the workers' token goes in it
    (``token``, else ``HAPLANE_GCE_TOKEN``), since the emulator's Secret Manager requires one."""
    from blocks.cluster import GceConnection

    token = (token or os.environ.get("HAPLANE_GCE_TOKEN") or "").strip() or None if endpoint else None
    GceConnection(project=project, endpoint=endpoint or None, token=token).save(name, overwrite=True)
    say(f"connection block {name!r}: project {project!r}, endpoint {endpoint or 'real GCE'}"
        + (" with the workers' token" if token else ""))


def ensure_repo_variable(repo: Path) -> None:
    from prefect.variables import Variable

    Variable.set("haplane_repo", str(repo), overwrite=True)
    say(f"variable haplane_repo = {repo}")


def ensure_limits(clusters: list[str]) -> None:
    from prefect.client.orchestration import get_client

    from tasks.cluster import lock_name
    from tasks.health import health_lock_name

    with get_client(sync_client=True) as client:
        for c in clusters:
            for name in (lock_name(c), health_lock_name(c)):
                client.upsert_global_concurrency_limit_by_name(name, limit=1)
    if clusters:
        say("concurrency limits (1 each): " + ", ".join(f"cluster-{c}, health-{c}" for c in clusters))


def deploy(repo: Path) -> None:
    prefect = Path(sys.executable).parent / "prefect"
    cmd = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all",
           "--prefect-file", str(repo / "prefect.yaml")]
    say("deploying prefect.yaml: " + " ".join(cmd[1:]))
    out = subprocess.run(cmd, cwd=repo, env=dict(os.environ), stdin=subprocess.DEVNULL, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    say("deployments: create-cluster, add-replica, remove-replica, replace-replica, set-load-balancer, "
        "delete-cluster, rotate-certificates, health-check, snapshot-cluster, restore-cluster")


def workspace_connection(connection: str | None) -> str | None:
    """The connection given now, else the one an earlier setup remembered (``haplane_connection``)."""
    from prefect.variables import Variable

    if connection:
        Variable.set(CONNECTION_VARIABLE, connection, overwrite=True)
        return connection
    return Variable.get(CONNECTION_VARIABLE, default=None) or None


def ensure_default_connection(connection: str | None, pool: str = POOL) -> None:
    """Make ``connection`` the default parameter of every deployment (deploying again resets defaults)."""
    if not connection:
        say("no connection block: runs need `connection` or HAPLANE_PROJECT on the worker")
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    with get_client(sync_client=True) as client:
        # every deployment of the pool that takes a connection (all of prefect.yaml's, whatever is added later)
        deployments = client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
        updated = []
        for deployment in deployments:
            if "connection" in (deployment.parameter_openapi_schema or {}).get("properties", {}):
                params = dict(deployment.parameters or {}) | {"connection": connection}
                client.update_deployment(deployment.id, DeploymentUpdate(parameters=params))
                updated.append(deployment.name)
    say(f"default connection of {len(updated)} deployments ({', '.join(sorted(updated))}): {connection!r}")


def ensure_result_storage(block: str) -> None:
    """Make the storage block ``block`` (``<type-slug>/<name>``) the server's default result storage."""
    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client

    if "/" not in block:
        raise ValueError(f"--result-storage {block!r}: give a block as <type>/<name>, e.g. gcs-bucket/haplane-results "
                         f"or local-file-system/haplane-results (create it first in the UI or with Python)")
    try:
        storage = Block.load(block)
    except ValueError as exc:
        raise ValueError(f"--result-storage {block!r}: no such block ({exc}); create it first, e.g. "
                         f"GcsBucket(bucket=..., gcp_credentials=...).save('haplane-results')") from exc
    if not hasattr(storage, "write_path"):
        raise ValueError(f"--result-storage {block!r}: a {type(storage).__name__} cannot store results; "
                         f"use a GcsBucket or a LocalFileSystem on a path every worker shares")
    with get_client(sync_client=True) as client:
        client.update_server_default_result_storage(storage._block_document_id)
    say(f"checkpoints (task results) of every worker go to {block}")


def ensure_health_schedules(clusters: list[str], interval_s: float, connection: str | None) -> None:
    ensure_cluster_schedules(HEALTH_DEPLOYMENT, "health", "health check", clusters, interval_s, connection)


def ensure_snapshot_schedules(clusters: list[str], interval_s: float, connection: str | None) -> None:
    if interval_s > 0:
        ensure_cluster_schedules(SNAPSHOT_DEPLOYMENT, "snapshot", "snapshot", clusters, interval_s, connection)


def ensure_cluster_schedules(deployment_name: str, prefix: str, what: str, clusters: list[str], interval_s: float,
                             connection: str | None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import IntervalSchedule

    schedule = IntervalSchedule(interval=dt.timedelta(seconds=interval_s))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        existing = {s.slug: s for s in client.read_deployment_schedules(deployment.id)}
        for c in clusters:
            slug, params = f"{prefix}-{c}", {"cluster": c, "connection": connection}
            if slug in existing:
                client.update_deployment_schedule(deployment.id, existing[slug].id, active=True, schedule=schedule,
                                                  parameters=params)
            else:
                client.create_deployment_schedules(deployment.id, [(schedule, True)], parameters=params, slug=slug)
            say(f"{what} of {c!r} every {interval_s:g} s (schedule {slug})")


def remove_health_schedule(cluster: str) -> list[str]:
    """Delete the cluster's health-check schedule (delete-cluster, once the cluster is gone); the slugs removed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug = f"health-{cluster}"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(HEALTH_DEPLOYMENT)
        except ObjectNotFound:
            return []
        gone = [s for s in client.read_deployment_schedules(deployment.id) if s.slug == slug]
        for s in gone:
            client.delete_deployment_schedule(deployment.id, s.id)
    return [slug for _ in gone]


def ensure_automation() -> None:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(HEALTH_DEPLOYMENT)
    automation = Automation(
        name=AUTOMATION,
        description=f"On an event {REQUEST_EVENT} about resource haplane.cluster.<name>, run a health check of "
                    f"that cluster now (the check's own lock keeps it from overlapping a scheduled one).",
        trigger=EventTrigger(expect={REQUEST_EVENT}, match={"prefect.resource.id": "haplane.cluster.*"},
                             posture=Posture.Reactive, threshold=1, within=dt.timedelta(0)),
        actions=[RunDeployment(source="selected", deployment_id=deployment.id, parameters={
            "cluster": {"__prefect_kind": "jinja", "template": "{{ event.resource['haplane.cluster'] }}"}})],
    )
    try:
        current = Automation.read(name=AUTOMATION)
    except ValueError:
        current = None
    if current is None:
        automation.create()
        say(f"automation {AUTOMATION!r} created")
    else:
        automation.id = current.id
        automation.update()
        say(f"automation {AUTOMATION!r} updated")


def check_health_interval(seconds: float) -> None:
    """A schedule every 0 s (or less) would be refused by Prefect half-way through the setup, or run
    checks back to back: refused before anything is set up."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"--health-interval must be a positive number of seconds, got {seconds!r}: "
                         f"pass e.g. --health-interval 300 (every 5 minutes)")


def setup_workspace(clusters: list[str] | None = None, health_interval: float = 300.0, connection: str | None = None,
                    project: str | None = None, endpoint: str | None = None, repo: Path = REPO,
                    pool: str = POOL, snapshot_interval: float = 3600.0,
                    result_storage: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Everything above; returns what was set up."""
    clusters = list(clusters or [])
    from haplane.topology import check_cluster_name

    for c in clusters:
        check_cluster_name(c)
    check_health_interval(health_interval)
    if project and not connection:
        connection = "default"
    ensure_pool(pool)
    ensure_block_types()
    if result_storage:
        ensure_result_storage(result_storage)
    if project:
        ensure_connection(connection, project, endpoint, token)
    connection = workspace_connection(connection)
    ensure_repo_variable(repo)
    ensure_limits(clusters)
    deploy(repo)
    ensure_default_connection(connection, pool)
    ensure_health_schedules(clusters, health_interval, connection)
    ensure_snapshot_schedules(clusters, snapshot_interval, connection)
    ensure_automation()
    say("done: start a worker with `prefect worker start --pool haplane --type process`")
    return {"pool": pool, "clusters": clusters, "connection": connection, "health_interval": health_interval,
            "result_storage": result_storage}


def add_cli(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("setup-workspace", help="set up the Prefect workspace (pool, blocks, limits, deployments, "
                                               "schedules, automation); idempotent",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", action="append", default=[], help="a cluster to health-check (repeatable)")
    p.add_argument("--health-interval", type=float, default=300.0, help="seconds between health checks (default 300)")
    p.add_argument("--snapshot-interval", type=float, default=3600.0,
                   help="seconds between etcd snapshots of each --cluster (default 3600; 0: no schedule)")
    p.add_argument("--connection", help="name of the haplane-gce-connection block the flows use "
                                        "(saved when --project is given; default name 'default')")
    p.add_argument("--project", help="GCE project: save a connection block for it")
    p.add_argument("--endpoint", help="GCE endpoint, e.g. http://127.0.0.1:8787 for the emulator (empty: real GCE)")
    p.add_argument("--token-file", type=Path,
                   help="with --endpoint (the emulator): the file holding the workers' token (workers-token in "
                        "the emulator's state directory; default: $HAPLANE_GCE_TOKEN)")
    p.add_argument("--result-storage", metavar="BLOCK",
                   help="storage block for every worker's checkpoints, as <type>/<name>: gcs-bucket/NAME (prefect-gcp) "
                        "or local-file-system/NAME on a path all workers share")
    return p


def run_cli(args: argparse.Namespace) -> int:
    token = None
    if getattr(args, "token_file", None):
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(f"haplane setup-workspace: cannot read --token-file {args.token_file}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    setup_workspace(clusters=args.cluster, health_interval=args.health_interval, connection=args.connection,
                    project=args.project, endpoint=args.endpoint, snapshot_interval=args.snapshot_interval,
                    result_storage=args.result_storage, token=token)
    return 0
