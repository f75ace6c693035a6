"""Whose is a cluster name: the rules create-cluster and delete-cluster check before changing anything.

Pure functions of what was found (the spec block, what GCE shows under the cluster's names).

- create-cluster refuses a name that exists anywhere: a spec in another region or project, or
  resources in GCE under the cluster's names without a spec (another workspace's cluster, or one
  whose spec was lost). The same region and project is a resumed create and goes on.
- delete-cluster refuses when the connection's project is not the spec's, and when GCE shows
  nothing of a cluster that has a spec (the connection or project is probably wrong, and deleting
  the blocks would lose the CA of a cluster that still runs) unless the caller says it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass


class OwnershipError(ValueError):
    pass


@dataclass(frozen=True)
class SpecWhere:
    """Where a saved spec says the cluster lives (``project`` None: a spec from before it was recorded)."""

    region: str
    project: str | None


def check_create(cluster: str, region: str, project: str, spec: SpecWhere | None, found: list[str]) -> None:
    """Refuse creating ``cluster`` when the name is taken (see module doc)."""
    if spec is not None:
        if spec.region != region or (spec.project is not None and spec.project != project):
            raise OwnershipError(
                f"cluster {cluster!r} already exists in region {spec.region!r} of project "
                f"{spec.project or '(not recorded)'!r} (block {cluster}-spec); nothing was changed: pick another "
                f"name, or delete that cluster first with delete-cluster")
        return  # the same cluster: a resumed create
    if found:
        raise OwnershipError(
            f"GCE project {project!r} already has resources named for a cluster {cluster!r} but this workspace "
            f"has no spec for it ({', '.join(found)}); nothing was changed: pick another name, or remove those "
            f"resources if they are left over")


def check_delete(cluster: str, project: str, spec: SpecWhere, found: list[str], gone: bool) -> None:
    """Refuse deleting ``cluster`` when the view of it cannot be trusted (see module doc)."""
    if spec.project is not None and spec.project != project:
        raise OwnershipError(
            f"cluster {cluster!r} lives in project {spec.project!r} but the connection points at project "
            f"{project!r}; nothing was deleted: pass the connection of project {spec.project!r}")
    if not found and not gone:
        raise OwnershipError(
            f"GCE (project {project!r}) shows nothing of cluster {cluster!r}, whose spec says it was created in "
            f"region {spec.region!r}; nothing was deleted. If the connection is wrong, pass the right one; if "
            f"the cluster is truly gone, run delete-cluster again with gone=true to remove its spec, PKI, "
            f"health schedule and locks")
