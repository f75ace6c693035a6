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
7. per cluster, its own health-check deployment ``health-check/health-<name>`` (concurrency limit 1,
   CANCEL_NEW: late duplicates are cancelled, not started) with a schedule every ``--health-interval``
   seconds (slug ``health-<name>``; 900 by default: the backstop of ``haplane watch``);
8. per cluster, a snapshot-cluster schedule every ``--snapshot-interval`` seconds (slug
   ``snapshot-<name>``; 0: none) -- per-cluster schedules and automations are made (and removed by
   delete-cluster) in :mod:`deployments.clusters`;
9. the automation ``haplane-health-check-on-request``: an event ``haplane.health-check.requested``
   on resource ``haplane.cluster.<name>`` (a monitor can post it to the events API) starts a health
   check of that cluster at once;
10. per cluster, the automation ``haplane-<name>-replica-unhealthy``: a ``haplane.replica.unhealthy``
    event from ``haplane watch`` about one of its replicas, not followed by ``haplane.replica.recovered``
    within the cluster's grace (its spec's ``unhealthy_grace_s``, default 10 s), runs a health check of
    that cluster (parameters from the event); removed by delete-cluster with the cluster;
11. the automation ``haplane-watcher-down``: no ``haplane.watch.alive`` heartbeat from a watcher for 3
    minutes fires it (its ``prefect.automation.triggered`` event says the watcher is down; add a
    notification to it in the UI). The scheduled checks are the backstop while it is down.

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

from deployments.clusters import (
    HEALTH_DEPLOYMENT,
    SNAPSHOT_DEPLOYMENT,
    ensure_cluster_automation,
    ensure_cluster_schedules,
    say,
)

REPO = Path(__file__).resolve().parent.parent
POOL = "haplane"
CONNECTION_VARIABLE = "haplane_connection"
AUTOMATION = "haplane-health-check-on-request"
REQUEST_EVENT = "haplane.health-check.requested"
WATCHER_DOWN = "haplane-watcher-down"
WATCHER_SILENCE_S = 180.0


def cluster_automation(cluster: str) -> str:
    """The name of the cluster's watcher automation: ``haplane-<cluster>-`` prefixes all of a cluster's."""
    return f"haplane-{cluster}-replica-unhealthy"


def ensure_pool(name: str = POOL) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    description="haplane flows (process worker on a machine with the checkout)",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
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
    from haplane import settings

    token = ((token or "").strip() or settings.gce_token()) if endpoint else None
    GceConnection(project=project, endpoint=endpoint or None, token=token).save(name, overwrite=True)
    say(
        f"connection block {name!r}: project {project!r}, endpoint {endpoint or 'real GCE'}"
        + (" with the workers' token" if token else "")
    )


def ensure_repo_variable(repo: Path) -> None:
    from prefect.variables import Variable

    Variable.set("haplane_repo", str(repo), overwrite=True)
    say(f"variable haplane_repo = {repo}")


def ensure_limits(clusters: list[str]) -> None:
    from prefect.client.orchestration import get_client

    from haplane.cloud.locks import health_lock_name, lock_name

    with get_client(sync_client=True) as client:
        for c in clusters:
            for name in (lock_name(c), health_lock_name(c)):
                client.upsert_global_concurrency_limit_by_name(name, limit=1)
    if clusters:
        say("concurrency limits (1 each): " + ", ".join(f"cluster-{c}, health-{c}" for c in clusters))


def deploy(repo: Path) -> None:
    prefect = Path(sys.executable).parent / "prefect"
    cmd = [
        str(prefect) if prefect.exists() else "prefect",
        "--no-prompt",
        "deploy",
        "--all",
        "--prefect-file",
        str(repo / "prefect.yaml"),
    ]
    say("deploying prefect.yaml: " + " ".join(cmd[1:]))
    out = subprocess.run(cmd, cwd=repo, env=dict(os.environ), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    say(
        "deployments: create-cluster, add-replica, remove-replica, replace-replica, upgrade-cluster, set-load-balancer, "
        "delete-cluster, rotate-certificates, health-check, snapshot-cluster, restore-cluster"
    )


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
        raise ValueError(
            f"--result-storage {block!r}: give a block as <type>/<name>, e.g. gcs-bucket/haplane-results "
            f"or local-file-system/haplane-results (create it first in the UI or with Python)"
        )
    try:
        storage = Block.load(block)
    except ValueError as exc:
        raise ValueError(
            f"--result-storage {block!r}: no such block ({exc}); create it first, e.g. "
            f"GcsBucket(bucket=..., gcp_credentials=...).save('haplane-results')"
        ) from exc
    if not hasattr(storage, "write_path"):
        raise ValueError(
            f"--result-storage {block!r}: a {type(storage).__name__} cannot store results; "
            f"use a GcsBucket or a LocalFileSystem on a path every worker shares"
        )
    with get_client(sync_client=True) as client:
        client.update_server_default_result_storage(storage._block_document_id)
    say(f"checkpoints (task results) of every worker go to {block}")


def cluster_health_deployment(cluster: str) -> str:
    """The cluster's own health-check deployment (``health-check/health-<cluster>``)."""
    return f"{HEALTH_DEPLOYMENT.split('/')[0]}/health-{cluster}"


def ensure_cluster_health_deployments(clusters: list[str], connection: str | None) -> None:
    """Per cluster, a copy of the health-check deployment with the cluster as its parameter and a
    concurrency limit of 1 with collision strategy CANCEL_NEW: a backlog of late checks of one cluster
    (workers busy, the watcher's automation and the schedule at once) starts one run, the others are
    cancelled before a process is spent on them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        shared = client.read_deployment_by_name(HEALTH_DEPLOYMENT)
        for c in clusters:
            try:  # the upsert replaces the deployment's schedules: hand it the ones it has (the backstop)
                current = client.read_deployment_by_name(cluster_health_deployment(c))
                keep = [
                    DeploymentScheduleCreate(
                        schedule=s.schedule,
                        active=s.active,
                        max_scheduled_runs=s.max_scheduled_runs,
                        parameters=s.parameters,
                        slug=s.slug,
                    )
                    for s in client.read_deployment_schedules(current.id)
                ]
            except ObjectNotFound:
                keep = []
            client.create_deployment(  # an upsert by flow and name
                shared.flow_id,
                cluster_health_deployment(c).split("/")[1],
                schedules=keep,
                description=f"Health check of {c} (haplane setup-workspace; one run at a time, a late duplicate "
                f"is cancelled)",
                concurrency_limit=1,
                concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
                parameters={"cluster": c, "connection": connection},
                work_pool_name=shared.work_pool_name,
                work_queue_name=shared.work_queue_name,
                tags=[*shared.tags, f"cluster:{c}"],
                path=shared.path,
                entrypoint=shared.entrypoint,
                parameter_openapi_schema=shared.parameter_openapi_schema,
                pull_steps=shared.pull_steps,
                enforce_parameter_schema=shared.enforce_parameter_schema,
                job_variables=shared.job_variables,
            )


def ensure_health_schedules(clusters: list[str], interval_s: float, connection: str | None) -> None:
    """Each cluster's schedule on its own health-check deployment (a schedule an older setup put on the
    shared deployment is moved there)."""
    ensure_cluster_health_deployments(clusters, connection)
    for c in clusters:
        _remove_schedule(HEALTH_DEPLOYMENT, f"health-{c}")
        ensure_cluster_schedules(cluster_health_deployment(c), "health", "health check", [c], interval_s, connection)


def ensure_snapshot_schedules(clusters: list[str], interval_s: float, connection: str | None) -> None:
    if interval_s > 0:
        ensure_cluster_schedules(SNAPSHOT_DEPLOYMENT, "snapshot", "snapshot", clusters, interval_s, connection)


def _remove_schedule(deployment_name: str, slug: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
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
        trigger=EventTrigger(
            expect={REQUEST_EVENT},
            match={"prefect.resource.id": "haplane.cluster.*"},
            posture=Posture.Reactive,
            threshold=1,
            within=dt.timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment.id,
                parameters={
                    "cluster": {"__prefect_kind": "jinja", "template": "{{ event.resource['haplane.cluster'] }}"}
                },
            )
        ],
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


def _upsert_automation(automation: Any) -> None:
    from prefect.automations import Automation

    try:
        current = Automation.read(name=automation.name)
    except ValueError:
        current = None
    if current is None:
        automation.create()
        say(f"automation {automation.name!r} created")
    else:
        automation.id = current.id
        automation.update()
        say(f"automation {automation.name!r} updated")


def ensure_watch_automations(
    clusters: list[str], connection: str | None, watcher_silence_s: float = WATCHER_SILENCE_S
) -> None:
    """Per cluster: a replica the watcher saw unhealthy, not recovered within the grace -> a health check of
    that cluster; and once: no watcher heartbeat for ``watcher_silence_s`` -> ``haplane-watcher-down``."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.actions import DoNothing, RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    from haplane.watch import ALIVE, RECOVERED, SOURCE, UNHEALTHY

    ensure_cluster_health_deployments(clusters, connection)
    for c in clusters:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(cluster_health_deployment(c))
        grace = cluster_grace(c)
        ensure_cluster_automation(
            c,
            Automation(  # tagged cluster:<c>: delete-cluster removes it
                name=cluster_automation(c),
                description=f"A replica of {c} that haplane watch saw unhealthy and that did not recover within "
                f"{grace:g} s: run {cluster_health_deployment(c)} (it decides and acts under its locks).",
                trigger=EventTrigger(
                    after={UNHEALTHY},
                    expect={RECOVERED},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=dt.timedelta(seconds=grace),
                    for_each={"prefect.resource.id"},
                    # the watcher's events only: the health check's own findings must not start checks
                    match={"prefect.resource.id": f"haplane.cluster.{c}.replica.*", "haplane.source": SOURCE},
                ),
                actions=[
                    RunDeployment(
                        source="selected",
                        deployment_id=deployment.id,
                        parameters={
                            "cluster": {
                                "__prefect_kind": "jinja",
                                "template": "{{ event.resource['haplane.cluster'] }}",
                            },
                            "connection": connection,
                        },
                    )
                ],
            ),
        )
        say(f"health check of {c!r} when a replica stays unhealthy {grace:g} s (automation {cluster_automation(c)})")
    _upsert_automation(
        Automation(
            name=WATCHER_DOWN,
            description=f"No heartbeat ({ALIVE}) from a haplane watcher for {watcher_silence_s:g} s: the watcher is "
            f"down; failed replicas are found only by the scheduled health checks until it is back.",
            # no for_each: Prefect drops a per-resource bucket once it is satisfied, so a watcher that stops
            # would leave no bucket to fire; one bucket per window fires when no watcher says it is alive
            trigger=EventTrigger(
                expect={ALIVE},
                match={"prefect.resource.id": "haplane.watch.*"},
                posture=Posture.Proactive,
                threshold=1,
                within=dt.timedelta(seconds=watcher_silence_s),
            ),
            actions=[DoNothing()],
        )
    )


def cluster_grace(cluster: str) -> float:
    """The cluster's ``unhealthy_grace_s`` from its spec (the default when it has none yet)."""
    from blocks.cluster import ClusterSpec
    from blocks.store import read_spec

    spec = read_spec(cluster)
    return spec.unhealthy_grace_s if spec is not None else ClusterSpec.model_fields["unhealthy_grace_s"].default


def check_health_interval(seconds: float) -> None:
    """A schedule every 0 s (or less) would be refused by Prefect half-way through the setup, or run
    checks back to back: refused before anything is set up."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(
            f"--health-interval must be a positive number of seconds, got {seconds!r}: "
            f"pass e.g. --health-interval 300 (every 5 minutes)"
        )


def setup_workspace(
    clusters: list[str] | None = None,
    health_interval: float = 900.0,
    connection: str | None = None,
    project: str | None = None,
    endpoint: str | None = None,
    repo: Path = REPO,
    pool: str = POOL,
    snapshot_interval: float = 3600.0,
    result_storage: str | None = None,
    token: str | None = None,
    watcher_silence_s: float = WATCHER_SILENCE_S,
) -> dict[str, Any]:
    """Everything above; returns what was set up."""
    clusters = list(clusters or [])
    from haplane.core.topology import check_cluster_name

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
    ensure_watch_automations(clusters, connection, watcher_silence_s)
    say("done: start a worker with `prefect worker start --pool haplane --type process`")
    return {
        "pool": pool,
        "clusters": clusters,
        "connection": connection,
        "health_interval": health_interval,
        "result_storage": result_storage,
    }


def add_cli(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "setup-workspace",
        help="set up the Prefect workspace (pool, blocks, limits, deployments, schedules, automation); idempotent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cluster", action="append", default=[], help="a cluster to health-check (repeatable)")
    p.add_argument(
        "--health-interval",
        type=float,
        default=900.0,
        help="seconds between scheduled health checks, the backstop of haplane watch (default 900)",
    )
    p.add_argument(
        "--snapshot-interval",
        type=float,
        default=3600.0,
        help="seconds between etcd snapshots of each --cluster (default 3600; 0: no schedule)",
    )
    p.add_argument(
        "--connection",
        help="name of the haplane-gce-connection block the flows use "
        "(saved when --project is given; default name 'default')",
    )
    p.add_argument("--project", help="GCE project: save a connection block for it")
    p.add_argument("--endpoint", help="GCE endpoint, e.g. http://127.0.0.1:8787 for the emulator (empty: real GCE)")
    p.add_argument(
        "--token-file",
        type=Path,
        help="with --endpoint (the emulator): the file holding the workers' token (workers-token in "
        "the emulator's state directory; default: $HAPLANE_GCE_TOKEN)",
    )
    p.add_argument(
        "--result-storage",
        metavar="BLOCK",
        help="storage block for every worker's checkpoints, as <type>/<name>: gcs-bucket/NAME (prefect-gcp) "
        "or local-file-system/NAME on a path all workers share",
    )
    return p


def run_cli(args: argparse.Namespace) -> int:
    token = None
    if getattr(args, "token_file", None):
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            print(
                f"haplane setup-workspace: cannot read --token-file {args.token_file}: {exc.strerror}", file=sys.stderr
            )
            return 2
    setup_workspace(
        clusters=args.cluster,
        health_interval=args.health_interval,
        connection=args.connection,
        project=args.project,
        endpoint=args.endpoint,
        snapshot_interval=args.snapshot_interval,
        result_storage=args.result_storage,
        token=token,
    )
    return 0
