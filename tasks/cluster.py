"""Cluster-wide tasks: observe, lock, and report.

``cluster_lock`` is the one-mutating-flow-per-cluster rule: a Prefect global
concurrency limit ``cluster-<name>`` of 1, taken with ``strict=True``. A
second mutating flow on the same cluster **fails fast** (after
``LOCK_WAIT_S``) with a message naming the cluster, instead of queueing
behind a load-balancer wait of up to 20 minutes; its run can simply be
started again later. A killed holder's lease expires after ``HAPLANE_LOCK_LEASE_S``
(:func:`haplane.settings.lock_lease_s`: 120 s, at least Prefect's minimum of 60 s); ``haplane unlock CLUSTER`` releases it at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

from google.api_core import exceptions as gexc
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError  # what a refused slot raises (3.x)
from prefect.concurrency.sync import concurrency

from blocks import delete_block_document
from blocks.cluster import ClusterSpec, resolve_gce
from haplane import settings
from haplane.model import ClusterState
from haplane.observe import observe
from haplane.ownership import SpecWhere, owned, uid_in
from haplane.plans import Plan
from haplane.topology import LABEL_CLUSTER, LABEL_UID, ClusterNames
from tasks.pki import load_certs, read_cas
from tasks.steps import Change, cluster_uid, probe

LOCK_WAIT_S = 10.0
RETRY_HELD_S = 1.0  # between two asks for a slot another run holds


class ClusterBusy(RuntimeError):
    pass


def lock_name(cluster: str) -> str:
    return f"cluster-{cluster}"


def health_lock_name(cluster: str) -> str:
    """The health check's own lock (:func:`tasks.health.health_lock`): one check of a cluster at a time."""
    return f"health-{cluster}"


def ensure_lock(cluster: str) -> None:
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(lock_name(cluster), limit=1)


def force_unlock(cluster: str) -> list[str]:
    """Release the locks a killed run left behind, without waiting for their leases to expire: the
    cluster's lock, and the health check's (``health-<name>``: a killed check's replacement is finished
    by the next check, which would otherwise skip until the lease expires). Only for when no flow of
    that cluster is running: the limits are deleted (the dead run's leases go with them) and the next
    flow creates them again. Returns the names of the locks that existed."""
    from prefect.exceptions import ObjectNotFound

    released = []
    with get_client(sync_client=True) as client:
        for name in (lock_name(cluster), health_lock_name(cluster)):
            try:
                client.delete_global_concurrency_limit_by_name(name)
                released.append(name)
            except ObjectNotFound:
                pass
    return released


def hold(name: str, wait_s: float) -> contextlib.AbstractContextManager | None:
    """Take the one slot of the global concurrency limit ``name`` with a lease of :func:`~haplane.settings.lock_lease_s`: the
    entered context (exit it to release), or None when another run kept it for ``wait_s`` seconds.

    Each ask is one request that is seen through (Prefect's ``max_retries=0``, no client timeout):
    with ``timeout_seconds`` a slow API server counts as a holder, and a slot the server granted after
    the client stopped waiting stays taken by nobody until its lease ends (measured: most scheduled
    health checks of a loaded fleet "skipped" with no other check of their cluster running)."""
    deadline = time.monotonic() + wait_s
    while True:
        ctx = concurrency(name, occupy=1, strict=True, max_retries=0, lease_duration=settings.lock_lease_s())
        try:
            ctx.__enter__()
            return ctx
        except ConcurrencySlotAcquisitionError as exc:
            cause = exc.__cause__
            held = getattr(getattr(cause, "response", None), "status_code", None) == 423
            if not held:
                raise
            if time.monotonic() >= deadline:
                return None
            time.sleep(RETRY_HELD_S)


# Locks this flow run (and the subflows it runs in its thread) holds: the health check takes the cluster
# lock to decide and runs replace-replica under that same hold.
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("haplane_held_locks", default=frozenset())


@contextlib.contextmanager
def cluster_lock(cluster: str) -> Iterator[None]:
    """Hold the cluster's lock for the body; fail fast with :class:`ClusterBusy` if another flow has it.
    Re-entrant: a subflow of a flow that holds it runs under the same hold."""
    if cluster in _HELD.get():
        yield
        return
    ensure_lock(cluster)
    ctx = hold(lock_name(cluster), LOCK_WAIT_S)
    if ctx is None:
        raise ClusterBusy(
            f"another mutating flow is running on cluster {cluster!r} (lock {lock_name(cluster)!r} is held); "
            f"nothing was changed: wait for that run to finish, then start this one again")
    token = _HELD.set(_HELD.get() | {cluster})
    try:
        yield
    finally:
        _HELD.reset(token)
        ctx.__exit__(None, None, None)


def load_spec(cluster: str) -> ClusterSpec:
    names = ClusterNames(cluster)
    try:
        return ClusterSpec.load(names.spec_block)
    except ValueError as exc:
        raise ValueError(f"cluster {cluster!r} is unknown: no block {names.spec_block!r} "
                         f"(create it with create-cluster)") from exc


@probe(task_run_name="{step}")
def save_spec(cluster: str, spec: ClusterSpec, step: str = "spec") -> None:
    """Save the cluster's intended settings as block ``<cluster>-spec`` (create-cluster)."""
    spec.save(ClusterNames(cluster).spec_block, overwrite=True)


@probe(task_run_name="{step}")
def delete_spec(cluster: str, step: str = "spec") -> None:
    delete_block_document(ClusterNames(cluster).spec_block, ClusterSpec.get_block_type_slug())


@probe(task_run_name="observe {cluster}")
def observe_cluster(cluster: str, region: str, connection: str | None, tolerate_zones: bool = False) -> ClusterState:
    """Rebuild the cluster's picture from GCE and etcd (never cached); with ``tolerate_zones`` a zone
    whose API does not answer is recorded in ``unavailable_zones`` instead of failing the run."""
    cas, problem = read_cas(cluster, connection)
    from haplane.etcd import EtcdTLS

    tls = EtcdTLS.from_cas(cas) if cas else None
    state = observe(resolve_gce(connection), cluster, region, tls, cas.ca_bundle() if cas else None,
                    pki_problem=problem, uid=cluster_uid(cluster), tolerate_zones=tolerate_zones)
    if state.look_alikes:
        get_run_logger().warning("VMs with cluster %s's label but not its uid (look-alikes, left alone): %s",
                                 cluster, ", ".join(state.look_alikes))
    return state


@probe(task_run_name="zones of {region}")
def zones_of(region: str, connection: str | None) -> list[str]:
    """The zones of ``region``. A region GCE does not know and a GCE that cannot be reached (no or a
    wrong connection) are told apart: each names its own fix."""
    gce = resolve_gce(connection)  # a missing connection says so itself
    where = f"{gce.endpoint or 'real GCE (compute.googleapis.com)'}, project {gce.project!r}"
    try:
        return gce.list_zones(region)
    except gexc.NotFound as exc:
        raise ValueError(f"region {region!r} is unknown to GCE ({where}); pick a region such as europe-west1 "
                         f"or us-central1") from exc
    except Exception as exc:  # unreachable endpoint, no credentials, a zone API down
        raise ValueError(
            f"cannot reach GCE at {where} to list the zones of {region!r} ({type(exc).__name__}); nothing was "
            f"changed. The GCE connection is missing or wrong: pass connection=<name of a haplane-gce-connection "
            f"block> (connection={connection!r} was given), or set HAPLANE_GCE_ENDPOINT (the emulator's URL, "
            f"e.g. http://127.0.0.1:8787) and HAPLANE_PROJECT in the worker's environment") from None


def publish_plan(plan: Plan, change: Change) -> None:
    """Log the plan and keep it as the markdown artifact ``<cluster>-plan``, with the change id to resume by.

    One artifact per run: a second plan of the same run is added to the artifact the first created, and
    a retried run (the same flow run) replaces it, so a page showing the latest ``<cluster>-plan`` shows
    the whole run and the run history shows one version per run.
    """
    text = plan.markdown() + (f"\n- change id: `{change.change_id}` (a killed run is resumed by running the flow "
                              f"again with this change_id)")
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
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])), limit=1)
    return found[0].id if found else None


def replica_rows(state: ClusterState) -> list[dict[str, str]]:
    return [{
        "replica": r.name, "zone": r.zone, "internal IP": r.internal_ip or "-", "external IP": r.external_ip or "-",
        "etcd member": format(r.member_id, "x") if r.member_id is not None else "-", "role": r.role,
        "health": "healthy" if r.healthy else "; ".join(r.problems) or "unhealthy",
        "cert expiry": (r.cert_not_after or "-")[:10], "endpoint IP": state.endpoint_ip or "-",
    } for r in state.replicas]


@probe(task_run_name="report {state.cluster}")
def publish_report(state: ClusterState, note: str = "") -> list[dict[str, str]]:
    """The cluster's replica table as a Prefect table artifact (key ``<cluster>-replicas``)."""
    rows = replica_rows(state)
    lb = "load balancer" if state.load_balancer else "single replica's static IP"
    create_table_artifact(rows, key=f"{state.cluster}-replicas",
                          description=f"Replicas of {state.cluster}; endpoint {state.endpoint_ip} ({lb}). {note}")
    get_run_logger().info("replicas of %s (endpoint %s, %s):\n%s", state.cluster, state.endpoint_ip, lb,
                          format_table(rows))
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
def wait_api_ready(cluster: str, name: str, ip: str, step: str = "api-ready", timeout: float = 180.0) -> None:
    """Wait until the replica's API server answers /readyz (TLS verified against the cluster CA): a
    replica joins the load balancer's pool once it would pass the pool's health check."""
    import ssl
    import time

    import httpx

    from haplane.node import APISERVER_PORT

    cas = load_certs(cluster)
    if cas is None:
        raise RuntimeError(f"no PKI for cluster {cluster!r}: cannot verify {name}'s API server")
    ctx = ssl.create_default_context(cadata=cas.ca_bundle())
    deadline, last = time.monotonic() + timeout, "no answer yet"
    with httpx.Client(verify=ctx, timeout=2.0) as http:
        while time.monotonic() < deadline:
            try:
                resp = http.get(f"https://{ip}:{APISERVER_PORT}/readyz")
                if resp.status_code == 200:
                    return
                last = f"{resp.status_code} {resp.text.strip()}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
    raise TimeoutError(f"the API server of {name} ({ip}) was not ready after {timeout:.0f} s: {last}")


# --- the stranded VMs of a zone outage (haplane.remediation.decide_zones), kept in the spec -------------

def _update_stranded(cluster: str, update) -> None:
    """Re-read the spec and save ``update(stranded)``; records that are done (deleted and replaced) go."""
    names = ClusterNames(cluster)
    spec = ClusterSpec.load(names.spec_block)
    spec.stranded = [s for s in update(list(spec.stranded)) if not s.done]
    spec.save(names.spec_block, overwrite=True)


@probe(task_run_name="{step}")
def record_stranded(cluster: str, name: str, zone: str, step: str) -> None:
    from haplane.observe import now_utc
    from haplane.remediation import StrandedVm

    _update_stranded(cluster, lambda s: s if any(x.name == name for x in s) else
                     [*s, StrandedVm(name, zone, now_utc().isoformat(timespec="seconds"))])


@probe(task_run_name="{step}")
def record_replacement(cluster: str, name: str, replacement: str, step: str) -> None:
    from dataclasses import replace

    _update_stranded(cluster, lambda s: [replace(x, replacement=replacement) if x.name == name else x for x in s])


@probe(task_run_name="{step}")
def record_deleted(cluster: str, names: list[str], step: str) -> None:
    from dataclasses import replace

    _update_stranded(cluster, lambda s: [replace(x, deleted=True) if x.name in names else x for x in s])
def spec_where(cluster: str) -> SpecWhere | None:
    """Where the cluster's saved spec says it lives; None without a spec."""
    try:
        spec = ClusterSpec.load(ClusterNames(cluster).spec_block)
    except ValueError:
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

    found = [f"VM {i.name} ({i.zone})" for i in gce.list_instances(gce.list_zones(region),
                                                                      labels={LABEL_CLUSTER: cluster})
             if keep(i.labels.get(LABEL_UID))]
    named = [("address", names.address, region), ("forwarding_rule", names.forwarding_rule, region),
             ("target_pool", names.target_pool, region), ("health_check", names.health_check, None),
             *(("firewall", n, None) for n in (names.firewall_etcd_peer, names.firewall_etcd_client,
                                               names.firewall_apiserver))]
    for kind, name, where in named:
        description = gce.description_of(kind, name, where)
        if description is not None and keep(uid_in(description)):
            found.append(f"{kind.replace('_', ' ')} {name}")
    return found


def check_gone_from_gce(cluster: str, region: str, connection: str | None) -> None:
    """Before delete-cluster removes the CA and the spec: nothing of the cluster may be left in GCE."""
    left = gce_footprint(cluster, region, connection, ours_only=True)
    if left:
        raise RuntimeError(f"cluster {cluster!r} still has {', '.join(left)} in GCE; its spec and PKI are kept: "
                           f"run delete-cluster again")


def forget_cluster(cluster: str) -> list[str]:
    """After a cluster is gone from GCE: its health schedule and its locks (the limits
    ``cluster-<name>`` and ``health-<name>``). Returns what was removed."""
    from deployments.setup import remove_health_schedule

    removed = [f"schedule {slug}" for slug in remove_health_schedule(cluster)]
    return removed + [f"lock {limit}" for limit in force_unlock(cluster)]
