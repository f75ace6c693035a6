"""The plan of one replica's replacement, and where a resumed one stands: shared by replace-replica
and upgrade-cluster (which replaces its replicas one at a time, each as a change of its own)."""

from __future__ import annotations

from dataclasses import replace

from blocks.cluster import ClusterSpec
from haplane.core.model import ClusterState
from haplane.core.plans import ADD_PREFIX, REMOVE_PREFIX, Plan, plan_add, plan_removed, plan_replace
from haplane.core.topology import label_value
from tasks.steps import Change, remember

ACTION = "replace-replica"


def plan_replacement(
    change: Change,
    spec: ClusterSpec,
    known: list[str],
    replica_name: str,
    state: ClusterState,
    running: bool,
    action: str = ACTION,
) -> Plan:
    """Remove ``replica_name`` then add a new replica in its zone; resumed after the removal, the rest of
    the addition (the zone was remembered under ``change``). ``running`` is False in a dry run."""
    victim = state.replica(replica_name)
    if victim is not None:
        removal, addition = plan_replace(state, replica_name, change.change_id, known, spec.zones, spec.load_balancer)
        if running:  # kept for a run resumed once the replica is gone (a VM gone has no zone: "?")
            remember(change, "replaced-zone", victim.zone if victim.zone in known else None)
        return removal.then(addition, action)
    # resumed after the removal: the new replica goes where the old one was
    zone = remember(change, "replaced-zone", None) if running else None
    if zone is None and not any(r.change == label_value(change.change_id) for r in state.vms):
        plan_replace(state, replica_name, change.change_id, known)  # not a resumed replace: refuse
    addition = plan_add(state, zone, change.change_id, known, spec.zones, prefix=ADD_PREFIX)
    if zone is not None:  # the removal's last step again: it deletes the old replica's private keys
        return plan_removed(state, replica_name, zone, prefix=REMOVE_PREFIX).then(addition, action)
    return replace(addition, action=action)
