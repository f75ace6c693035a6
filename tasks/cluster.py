"""Cluster-wide tasks: observe, lock, and report.

``cluster_lock`` is the one-mutating-flow-per-cluster rule (:mod:`haplane.cloud.locks`): a Prefect global
concurrency limit ``cluster-<name>`` of 1, taken with ``strict=True``. A second mutating flow on the
same cluster **fails fast** (after ``LOCK_WAIT_S``) with a message naming the cluster. A killed
holder's lease expires after :func:`haplane.settings.lock_lease_s`; ``haplane unlock CLUSTER`` frees it at once once its
holder has ended. The cluster's spec block is read and written through :mod:`blocks.store`.
"""

from __future__ import annotations

from google.api_core import exceptions as gexc
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client

from blocks.cluster import resolve_gce
from blocks.pki import CA
from blocks.store import read_spec
from haplane.cloud.locks import (  # noqa: F401 - the lock is haplane.cloud.locks'; flows and tests take it from here
    LOCK_WAIT_S,
    ClusterBusy,
    cluster_lock,
    ensure_lock,
    forget_locks,
    health_lock_name,
    hold,
    lock_name,
)
from haplane.cloud.observe import observe
from haplane.core.model import ClusterState
from haplane.core.ownership import SpecWhere, owned, uid_in
from haplane.core.plans import Plan
from haplane.core.topology import LABEL_CLUSTER, LABEL_UID, ClusterNames
from tasks.pki import load_cas, load_certs, read_cas
from tasks.steps import Change, cluster_uid, probe


def force_unlock(cluster: str) -> list[str]:
    """Delete both locks of the cluster at once, whoever holds them (:func:`haplane.cloud.locks.forget_locks`):
    for delete-cluster and for tests; a person frees one lock of a dead run with ``haplane unlock``."""
    return forget_locks(cluster)


@probe(task_run_name="observe {cluster}")
def observe_cluster(cluster: str, region: str, connection: str | None, tolerate_zones: bool = False) -> ClusterState:
    """Rebuild the cluster's picture from GCE and etcd (never cached); with ``tolerate_zones`` a zone
    whose API does not answer is recorded in ``unavailable_zones`` instead of failing the run."""
    cas, problem = read_cas(cluster, connection)
    from haplane.cloud.etcd import EtcdTLS

    tls = EtcdTLS.from_cas(cas) if cas else None
    state = observe(
        resolve_gce(connection),
        cluster,
        region,
        tls,
        cas.ca_bundle() if cas else None,
        pki_problem=problem,
        uid=cluster_uid(cluster),
        tolerate_zones=tolerate_zones,
        api_client=_observer_client(cas) if cas else None,
    )
    if state.look_alikes:
        get_run_logger().warning(
            "VMs with cluster %s's label but not its uid (look-alikes, left alone): %s",
            cluster,
            ", ".join(state.look_alikes),
        )
    return state


def _observer_client(cas) -> tuple[str, str]:
    """A client certificate of the cluster CA for this observation only (10 minutes, kept in memory):
    what asks the API servers for componentstatuses and the Leases."""
    import datetime as dt

    from haplane.kubeconfig import issue_admin

    client = issue_admin(cas, dt.timedelta(minutes=10), user="haplane-observer")
    return client.cert_pem, client.key_pem.get_secret_value()


@probe(task_run_name="zones of {region}")
def zones_of(region: str, connection: str | None) -> list[str]:
    """The zones of ``region``. A region GCE does not know and a GCE that cannot be reached (no or a
    wrong connection) are told apart: each names its own fix."""
    gce = resolve_gce(connection)  # a missing connection says so itself
    where = f"{gce.endpoint or 'real GCE (compute.googleapis.com)'}, project {gce.project!r}"
    try:
        return gce.list_zones(region)
    except gexc.NotFound as exc:
        raise ValueError(
            f"region {region!r} is unknown to GCE ({where}); pick a region such as europe-west1 or us-central1"
        ) from exc
    except Exception as exc:  # unreachable endpoint, no credentials, a zone API down
        raise ValueError(
            f"cannot reach GCE at {where} to list the zones of {region!r} ({type(exc).__name__}); nothing was "
            f"changed. The GCE connection is missing or wrong: pass connection=<name of a haplane-gce-connection "
            f"block> (connection={connection!r} was given), or set HAPLANE_GCE_ENDPOINT (the emulator's URL, "
            f"e.g. http://127.0.0.1:8787) and HAPLANE_PROJECT in the worker's environment"
        ) from None


def publish_plan(plan: Plan, change: Change) -> None:
    """Log the plan and keep it as the markdown artifact ``<cluster>-plan``, with the change id to resume by.

    One artifact per run: a second plan of the same run is added to the artifact the first created, and
    a retried run (the same flow run) replaces it, so a page showing the latest ``<cluster>-plan`` shows
    the whole run and the run history shows one version per run.
    """
    text = plan.markdown() + (
        f"\n- change id: `{change.change_id}` (a killed run is resumed by running the flow again with this change_id)"
    )
    get_run_logger().info("%s", text)
    if plan.even_note:
        get_run_logger().warning("%s", plan.even_note)
    _plan_artifact(plan.cluster, text, f"{plan.action} plan for {plan.cluster}")


_PLANS_OF_RUN: dict[tuple[str, str], tuple[object, str]] = {}  # (flow run, key) -> (artifact id, text so far)


def _plan_artifact(cluster: str, text: str, description: str) -> None:
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.runtime import flow_run

    key, run_id = f"{cluster}-plan", str(flow_run.get_id())
    mine = _PLANS_OF_RUN.get((run_id, key))
    if mine is None:
        # the first plan this process publishes for the run; a retried run (a new process, the same flow
        # run) replaces what the earlier attempt published instead of adding a version
        existing = _artifact_of_run(key, run_id)
        if existing is None:
            _PLANS_OF_RUN[(run_id, key)] = (create_markdown_artifact(text, key=key, description=description), text)
            return
        mine = (existing, "")
    artifact_id, before = mine
    combined = f"{before}\n\n{text}" if before else text
    with get_client(sync_client=True) as client:
        client.update_artifact(artifact_id, ArtifactUpdate(data=combined, description=description))
    _PLANS_OF_RUN[(run_id, key)] = (artifact_id, combined)


def _artifact_of_run(key: str, run_id: str) -> object | None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
            ),
            limit=1,
        )
    return found[0].id if found else None


def replica_rows(state: ClusterState) -> list[dict[str, str]]:
    return [
        {
            "replica": r.name,
            "zone": r.zone,
            "internal IP": r.internal_ip or "-",
            "external IP": r.external_ip or "-",
            "etcd member": format(r.member_id, "x") if r.member_id is not None else "-",
            "role": r.role,
            "health": "healthy" if r.healthy else "; ".join(r.problems) or "unhealthy",
            "cert expiry": (r.cert_not_after or "-")[:10],
            "endpoint IP": state.endpoint_ip or "-",
            "leads": ", ".join(r.leads) or "-",
            # read from the member itself (/version); "unread" when it did not answer (never a guess)
            "etcd version": r.etcd_version or "unread",
            "etcd cluster version": state.etcd_cluster_version or "unread",
            "kube-apiserver": r.kubernetes_version or "-",
        }
        for r in state.replicas
    ]


@probe(task_run_name="report {state.cluster}")
def publish_report(state: ClusterState, note: str = "") -> list[dict[str, str]]:
    """The cluster's replica table as a Prefect table artifact (key ``<cluster>-replicas``)."""
    rows = replica_rows(state)
    lb = "load balancer" if state.load_balancer else "single replica's static IP"
    version = f"etcd cluster version {state.etcd_cluster_version or 'unread'}"
    create_table_artifact(
        rows,
        key=f"{state.cluster}-replicas",
        description=f"Replicas of {state.cluster}; endpoint {state.endpoint_ip} ({lb}); {version}. {note}",
    )
    get_run_logger().info(
        "replicas of %s (endpoint %s, %s; %s):\n%s", state.cluster, state.endpoint_ip, lb, version, format_table(rows)
    )
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no replicas)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


@probe(task_run_name="{step}")
def wait_api_ready(
    cluster: str,
    name: str,
    ip: str,
    step: str = "api-ready",
    timeout: float = 180.0,
    connection: str | None = None,
) -> None:
    """Wait until the replica's API server answers /readyz (TLS verified against the cluster CA): a
    replica joins the load balancer's pool once it would pass the pool's health check. Then until its
    controller-manager and scheduler run, asked with a short-lived client certificate of the cluster CA
    (its key read from Secret Manager with ``connection``'s credentials, kept in memory)."""
    import ssl
    import time

    import httpx

    from haplane.node.spec import APISERVER_PORT

    cas = load_certs(cluster)
    if cas is None:
        raise RuntimeError(f"no PKI for cluster {cluster!r}: cannot verify {name}'s API server")
    from haplane.cloud.observe import client_context, components_down

    ctx = ssl.create_default_context(cadata=cas.ca_bundle())
    deadline, last = time.monotonic() + timeout, "no answer yet"
    with httpx.Client(verify=ctx, timeout=2.0) as http:
        while time.monotonic() < deadline:
            try:
                resp = http.get(f"https://{ip}:{APISERVER_PORT}/readyz")
                if resp.status_code == 200:
                    break
                last = f"{resp.status_code} {resp.text.strip()}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        else:
            raise TimeoutError(f"the API server of {name} ({ip}) was not ready after {timeout:.0f} s: {last}")
    # a whole master: its controller-manager and scheduler run too (the API server's componentstatuses),
    # so that a replica is not reported "not running" for the moment they take to start after it
    signer = load_cas(cluster, connection, names=(CA,))
    if signer is None:
        raise RuntimeError(f"no PKI for cluster {cluster!r}: cannot ask {name}'s API server for its components")
    with httpx.Client(verify=client_context(cas.ca_bundle(), *_observer_client(signer)), timeout=2.0) as http:
        while time.monotonic() < deadline:
            down, why = components_down(http, ip)
            if down == ():
                return
            last = f"{' and '.join(down)} not running" if down else why
            time.sleep(0.2)
    raise TimeoutError(f"the API server of {name} ({ip}) is ready but {last} after {timeout:.0f} s")


def spec_where(cluster: str) -> SpecWhere | None:
    """Where the cluster's saved spec says it lives; None without a spec."""
    spec = read_spec(cluster)
    if spec is None:
        return None
    return SpecWhere(region=spec.region, project=spec.project, uid=spec.uid)


@probe(task_run_name="observe the footprint of {cluster}")
def gce_footprint(cluster: str, region: str, connection: str | None, ours_only: bool = False) -> list[str]:
    """What GCE holds under the cluster's names: labelled VMs in the region's zones, the endpoint
    address, the load balancer, and the global firewall rules and health check (global names also
    catch a same-named cluster in another region of the project). ``ours_only``: only what carries
    the cluster's uid (look-alikes are left out)."""
    gce, names = resolve_gce(connection), ClusterNames(cluster)
    uid = cluster_uid(cluster) if ours_only else None

    def keep(found_uid: str | None) -> bool:
        return not ours_only or owned(found_uid, uid)

    found = [
        f"VM {i.name} ({i.zone})"
        for i in gce.list_instances(gce.list_zones(region), labels={LABEL_CLUSTER: cluster})
        if keep(i.labels.get(LABEL_UID))
    ]
    named = [
        ("address", names.address, region),
        ("forwarding_rule", names.forwarding_rule, region),
        ("target_pool", names.target_pool, region),
        ("health_check", names.health_check, None),
        *(
            ("firewall", n, None)
            for n in (names.firewall_etcd_peer, names.firewall_etcd_client, names.firewall_apiserver)
        ),
    ]
    for kind, name, where in named:
        description = gce.description_of(kind, name, where)
        if description is not None and keep(uid_in(description)):
            found.append(f"{kind.replace('_', ' ')} {name}")
    return found


def forget_cluster(cluster: str) -> list[str]:
    """After a cluster is gone from GCE: its locks (the limits ``cluster-<name>`` and ``health-<name>``).
    Its schedules and automations are the workspace's (:func:`deployments.clusters.forget_cluster`, called by
    the flow). Returns what was removed."""
    return [f"lock {limit}" for limit in force_unlock(cluster)]
