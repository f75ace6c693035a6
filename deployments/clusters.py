"""What a workspace has per cluster: schedules and automations, made and removed in this one place.

``haplane setup-workspace --cluster NAME`` makes them (:mod:`deployments.setup`); delete-cluster removes
them once the cluster is gone (:func:`forget_cluster`), every one that names the cluster, not a fixed list:

- a deployment schedule (of any deployment) whose parameters say ``cluster: NAME``, and the cluster's
  own health-check deployment ``health-check/health-NAME``;
- an automation tagged :func:`cluster_tag` (``cluster:NAME``, the tag haplane's runs of a cluster carry),
  or whose trigger or actions name the cluster: a resource ``haplane.cluster.NAME`` (or one under it,
  ``haplane.cluster.NAME.…``), a ``haplane.cluster`` label or a ``cluster`` parameter equal to NAME.

Names are not matched by prefix: ``haplane-prod-…`` also begins the names of cluster ``prod-a``'s.
Make a per-cluster automation with :func:`ensure_cluster_automation` (it adds the tag).

Nothing in tasks/ imports this module: the flows call it (delete-cluster), the setup command too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

HEALTH_DEPLOYMENT = "health-check/health-check"
SNAPSHOT_DEPLOYMENT = "snapshot-cluster/snapshot-cluster"
RESOURCE_PREFIX = "haplane.cluster."
_FREE_TEXT = frozenset({"name", "description"})  # what a person writes: never taken as naming a cluster


def say(msg: str) -> None:
    print(f"haplane setup-workspace: {msg}", flush=True)


def cluster_tag(cluster: str) -> str:
    return f"cluster:{cluster}"


def names_cluster(doc: Any, cluster: str) -> bool:
    """Whether an automation (its JSON document) names ``cluster`` (see the module doc). Pure."""
    if isinstance(doc, str):
        resource = f"{RESOURCE_PREFIX}{cluster}"
        return doc == resource or doc.startswith(resource + ".")
    if isinstance(doc, list):
        return any(names_cluster(v, cluster) for v in doc)
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in _FREE_TEXT:
                continue
            if key == "tags" and isinstance(value, list) and cluster_tag(cluster) in value:
                return True
            if key in ("cluster", "haplane.cluster") and (
                value == cluster or (isinstance(value, list) and cluster in value)
            ):
                return True
            if names_cluster(value, cluster):
                return True
    return False


def ensure_cluster_schedules(
    deployment_name: str, prefix: str, what: str, clusters: list[str], interval_s: float, connection: str | None
) -> None:
    """A schedule ``<prefix>-<cluster>`` of the deployment per cluster, every ``interval_s`` seconds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import IntervalSchedule

    schedule = IntervalSchedule(interval=dt.timedelta(seconds=interval_s))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        existing = {s.slug: s for s in client.read_deployment_schedules(deployment.id)}
        for c in clusters:
            slug, params = f"{prefix}-{c}", {"cluster": c, "connection": connection}
            if slug in existing:
                client.update_deployment_schedule(
                    deployment.id, existing[slug].id, active=True, schedule=schedule, parameters=params
                )
            else:
                client.create_deployment_schedules(deployment.id, [(schedule, True)], parameters=params, slug=slug)
            say(f"{what} of {c!r} every {interval_s:g} s (schedule {slug})")


def ensure_cluster_automation(cluster: str, automation: Any) -> Any:
    """Create or update (by name) a per-cluster Prefect automation, tagged :func:`cluster_tag` so that
    delete-cluster finds it whatever it is called."""
    from prefect.automations import Automation

    automation.tags = sorted({*(automation.tags or []), cluster_tag(cluster)})
    try:
        current = Automation.read(name=automation.name)
    except ValueError:
        current = None
    if current is None:
        automation.create()
    else:
        automation.id = current.id
        automation.update()
    return automation


def forget_cluster(cluster: str) -> list[str]:
    """Delete every schedule and automation that names the cluster (delete-cluster, once the cluster is
    gone from GCE). Returns what was removed."""
    from prefect.client.orchestration import get_client

    removed: list[str] = []
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            for s in client.read_deployment_schedules(deployment.id):
                if (s.parameters or {}).get("cluster") == cluster:
                    client.delete_deployment_schedule(deployment.id, s.id)
                    removed.append(f"schedule {s.slug or s.id} of {deployment.name}")
            if deployment.name == f"health-{cluster}" and (deployment.parameters or {}).get("cluster") == cluster:
                client.delete_deployment(deployment.id)  # the cluster's own health-check deployment
                removed.append(f"deployment {deployment.name}")
        for automation in client.read_automations():
            if names_cluster(automation.model_dump(mode="json"), cluster):
                client.delete_automation(automation.id)
                removed.append(f"automation {automation.name}")
    return removed
