"""Whose is a cluster name, and whose is a resource: the rules checked before changing anything.

Pure functions of what was found (the spec block, what GCE shows under the cluster's names).

- create-cluster refuses a name that exists anywhere: a spec in another region or project, or
  resources in GCE under the cluster's names without a spec (another workspace's cluster, or one
  whose spec was lost). The same region and project is a resumed create and goes on.
- restore-cluster, like delete-cluster, refuses a connection to another project than the spec's.
- delete-cluster refuses when the connection's project is not the spec's, and when GCE shows
  nothing of a cluster that has a spec (the connection or project is probably wrong, and deleting
  the blocks would lose the CA of a cluster that still runs) unless the caller says it is gone.

**Identity.** create-cluster gives a cluster a uid, kept in its spec and stamped on everything it
creates: the label ``haplane-uid`` on VMs, ``[haplane-uid=<uid>]`` in the description of the
address, pool, forwarding rule, firewall rules and health check. The flows act only on resources
carrying it; one with the cluster's name or label but another uid (or none) is a *look-alike*: it
is reported, never adopted, changed or deleted. A cluster created before uids has a spec without
one: it keeps the old rule (its name and label are enough) — recreate it to get the stronger one.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass


class OwnershipError(ValueError):
    pass


UID_RE = re.compile(r"\[haplane-uid=([a-z0-9]+)\]")


def new_uid() -> str:
    """A fresh cluster identity: 12 hex digits (a valid GCE label value)."""
    return uuid.uuid4().hex[:12]


def stamp(description: str, uid: str | None) -> str:
    """``description`` carrying the cluster's uid (unchanged without one: a cluster from before uids)."""
    return f"{description} [haplane-uid={uid}]".strip() if uid else description


def uid_in(description: str | None) -> str | None:
    match = UID_RE.search(description or "")
    return match.group(1) if match else None


def owned(found_uid: str | None, cluster_uid: str | None) -> bool:
    """Whether a resource carrying ``found_uid`` belongs to the cluster whose uid is ``cluster_uid``
    (a cluster without a uid predates them: its name or label is enough, as it was)."""
    return cluster_uid is None or found_uid == cluster_uid


class LookAlike(OwnershipError):
    """A resource under the cluster's name that is not the cluster's: never adopted or changed."""

    def __init__(self, what: str, cluster: str, found_uid: str | None, cluster_uid: str) -> None:
        super().__init__(
            f"{what} has the name of cluster {cluster!r} but is not its own (uid {found_uid or 'none'}, the "
            f"cluster's is {cluster_uid}); it was not adopted, changed or deleted: rename or remove it, or "
            f"check that the connection points at the right project"
        )


class NotOurs(OwnershipError):
    """A VM under a replica's planned name that this change did not create: never adopted, configured or keyed."""


def check_adoptable(
    vm: str, zone: str, labels: dict[str, str], cluster: str, cluster_uid: str | None, change_label: str
) -> None:
    """A create step that finds a VM of its planned name goes on only with the VM its own change made: the
    cluster's label and uid (labels ``haplane-cluster``, ``haplane-uid``) and this change's label
    (``haplane-change``). Replica names follow from the change id, and the plan naming them is published
    before the step runs, so anyone could make that VM first. Anything else is refused, naming it."""
    found = {
        "cluster": labels.get("haplane-cluster"),
        "uid": labels.get("haplane-uid"),
        "change": labels.get("haplane-change"),
    }
    wanted = {"cluster": cluster, "uid": cluster_uid if cluster_uid else found["uid"], "change": change_label}
    wrong = [f"{k} {found[k] or '(none)'!r} (expected {wanted[k]!r})" for k in wanted if found[k] != wanted[k]]
    if wrong:
        raise NotOurs(
            f"VM {vm} in {zone} has the name this change planned for a replica of cluster {cluster!r}, but this "
            f"change did not create it: {', '.join(wrong)}. It was not adopted: no certificate issued, no key "
            f"granted, nothing changed on it. Delete or rename that VM if it is left over, or run the change with "
            f"another change_id (the replica then gets another name)"
        )


def check_key_recipient(vm: str, accounts: tuple[str, ...] | list[str], own: str) -> None:
    """A replica's keys go only to a VM whose service account is the replica's own (Secret Manager grants
    read access to that account): a VM running as another account is refused before anything is issued."""
    if list(accounts) != [own]:
        raise NotOurs(
            f"VM {vm} runs as service account(s) {', '.join(accounts) or '(none)'}, not the replica's "
            f"own {own}: "
            f"no certificate was issued and no key granted to it. Delete that VM and run the change again"
        )


@dataclass(frozen=True)
class SpecWhere:
    """Where a saved spec says the cluster lives (``project`` None: a spec from before it was recorded)."""

    region: str
    project: str | None
    uid: str | None = None


def check_create(cluster: str, region: str, project: str, spec: SpecWhere | None, found: list[str]) -> None:
    """Refuse creating ``cluster`` when the name is taken (see module doc)."""
    if spec is not None:
        if spec.region != region or (spec.project is not None and spec.project != project):
            raise OwnershipError(
                f"cluster {cluster!r} already exists in region {spec.region!r} of project "
                f"{spec.project or '(not recorded)'!r} (block {cluster}-spec); nothing was changed: pick another "
                f"name, or delete that cluster first with delete-cluster"
            )
        return  # the same cluster: a resumed create
    if found:
        raise OwnershipError(
            f"GCE project {project!r} already has resources named for a cluster {cluster!r} but this workspace "
            f"has no spec for it ({', '.join(found)}); nothing was changed: pick another name, or remove those "
            f"resources if they are left over"
        )


def check_project(cluster: str, project: str, spec: SpecWhere, nothing: str = "nothing was deleted") -> None:
    """Refuse a destructive flow (delete-cluster, restore-cluster) on a connection to another project than
    the spec's: what it sees there is not the cluster."""
    if spec.project is not None and spec.project != project:
        raise OwnershipError(
            f"cluster {cluster!r} lives in project {spec.project!r} but the connection points at project "
            f"{project!r}; {nothing}: pass the connection of project {spec.project!r}"
        )


def check_delete(cluster: str, project: str, spec: SpecWhere, found: list[str], gone: bool) -> None:
    """Refuse deleting ``cluster`` when the view of it cannot be trusted (see module doc)."""
    check_project(cluster, project, spec)
    if not found and not gone:
        raise OwnershipError(
            f"GCE (project {project!r}) shows nothing of cluster {cluster!r}, whose spec says it was created in "
            f"region {spec.region!r}; nothing was deleted. If the connection is wrong, pass the right one; if "
            f"the cluster is truly gone, run delete-cluster again with gone=true to remove its spec, PKI, "
            f"health schedule and locks"
        )
