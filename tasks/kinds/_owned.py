"""Ownership checks the GCE kinds share: is a resource under the cluster's name the cluster's own (its uid
in the description), or a look-alike that is refused (before creating) or kept (before deleting)?"""

from __future__ import annotations

from prefect import get_run_logger

from haplane.core.ownership import LookAlike, owned, stamp, uid_in
from tasks.steps import Change, cluster_uid


def presence(change: Change, kind: str, name: str, region: str | None = None) -> str:
    """``absent``, ``ours`` (carries the cluster's uid) or ``foreign`` (a look-alike under its name)."""
    description = change.gce().description_of(kind, name, region)
    if description is None:
        return "absent"
    return "ours" if owned(uid_in(description), cluster_uid(change.cluster)) else "foreign"


def refuse_look_alike(change: Change, kind: str, name: str, region: str | None = None) -> bool:
    """Before creating: True if the cluster's own resource is there already; a look-alike is refused."""
    found = presence(change, kind, name, region)
    if found == "foreign":
        uid = cluster_uid(change.cluster) or ""
        raise LookAlike(
            f"{kind.replace('_', ' ')} {name}",
            change.cluster,
            uid_in(change.gce().description_of(kind, name, region)),
            uid,
        )
    return found == "ours"


def ours_to_delete(change: Change, kind: str, name: str, region: str | None = None) -> bool:
    """Before deleting: True if the cluster's own resource is there; a look-alike is reported and kept."""
    found = presence(change, kind, name, region)
    if found == "foreign":
        get_run_logger().warning(
            "%s %s has cluster %s's name but not its uid: a look-alike, not deleted",
            kind.replace("_", " "),
            name,
            change.cluster,
        )
    return found == "ours"


def described(change: Change, what: str) -> str:
    return stamp(f"haplane cluster {change.cluster}: {what}", cluster_uid(change.cluster))
