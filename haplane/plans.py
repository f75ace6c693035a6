"""What each flow will do, decided from observed state alone. Pure: no I/O, no Prefect.

A plan says which replica, in which zone, whether the load balancer is
created, extended, shrunk or deleted, the etcd membership before and after,
and whether quorum allows it. Flows execute plans; ``dry_run=True`` prints
them. Expected durations use the published GCE figures of
:mod:`haplane.gce_timings` (the emulator's "gce" latency profile uses the same).

Unknown is not absent: a plan that would remove an etcd member or delete a
VM is refused when the etcd membership or a member's health could not be
observed (:attr:`haplane.model.ClusterState.etcd_unknowns`), naming what could
not be seen and what to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from haplane.gce_timings import GCE_SECONDS
from haplane.model import MISSING, ClusterState, LbChange, ReplicaState, Unknown
from haplane.quorum import Decision, MemberHealth, Reason, can_add, can_remove, can_replace, quorum
from haplane.quorum import unhealthy_reasons as classify
from haplane.topology import (
    TopologyError,
    check_cluster_size,
    check_zones,
    label_value,
    next_zones,
    replica_name,
)


class PlanRefused(TopologyError):
    """The rules refuse this change; nothing was changed."""


def refuse_on_unknown(what: str, unknowns: tuple[Unknown, ...] | list[Unknown]) -> None:
    """Refuse ``what`` when anything it depends on could not be observed."""
    if unknowns:
        raise PlanRefused(f"cannot {what}: " + "; ".join(u.text for u in unknowns) +
                          ". Nothing was changed: haplane does not act on a view it could not verify "
                          "(unknown is not absent); fix that and run again")


@dataclass(frozen=True)
class Plan:
    action: str
    cluster: str
    steps: tuple[str, ...]
    voting_before: int
    voting_after: int
    expected_seconds: float
    reason: str = ""
    replica: str | None = None
    zone: str | None = None
    lb: LbChange = LbChange.NONE
    new_replicas: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (name, zone)

    @property
    def even_note(self) -> str:
        if self.voting_after and self.voting_after % 2 == 0:
            return (f"the cluster is left with {self.voting_after} voting members, an even count: it tolerates "
                    f"no more failures than {self.voting_after - 1}; add or remove one replica next")
        return ""

    def markdown(self) -> str:
        lines = [f"## Plan: {self.action} on `{self.cluster}`", ""]
        lines += [f"{i}. {s}" for i, s in enumerate(self.steps, 1)]
        lines += ["", f"- etcd voting members: {self.voting_before} (quorum {quorum(self.voting_before) if self.voting_before else '-'})"
                  f" -> {self.voting_after} (quorum {quorum(self.voting_after) if self.voting_after else '-'})",
                  f"- load balancer: {self.lb}",
                  f"- expected duration on GCE: about {self.expected_seconds / 60:.1f} min"]
        if self.reason:
            lines.append(f"- quorum: {self.reason}")
        if self.even_note:
            lines.append(f"- note: {self.even_note}")
        return "\n".join(lines)


def member_health(state: ClusterState) -> list[MemberHealth]:
    """The quorum rules' view of the observed replicas."""
    out = []
    for r in state.replicas:
        if r.member_id is None:
            continue
        reasons = classify(started=r.started, reachable=r.vm_status == "RUNNING" and r.etcd_ok,
                           is_learner=r.learner, learner_caught_up=False)
        out.append(MemberHealth(id=r.member_id, name=r.name, voting=not r.learner, reasons=reasons))
    return out


def _join_steps(name: str, zone: str) -> list[str]:
    return [f"insert VM {name} in {zone} and wait for it to run",
            f"issue {name}'s certificates (internal IP, endpoint IP; no ephemeral IP)",
            f"add {name} to etcd as a learner",
            f"write {name}'s metadata: etcd joins with initial-cluster-state=existing",
            f"promote {name} when it has caught up; wait for quorum health"]


def plan_create(cluster: str, region: str, zones: list[str], replicas: int, change_id: str,
                known_zones: list[str], existing: ClusterState | None) -> Plan:
    check_cluster_size(replicas)
    zones = check_zones(region, zones, known_zones)
    if existing is not None and existing.replicas and not any(r.change == label_value(change_id) for r in existing.replicas):
        unfinished = sorted({r.change for r in existing.replicas if r.change and r.change.startswith("create-")})
        hint = (f"if an earlier create-cluster run failed, resume it with change_id={unfinished[0]!r}; "
                if unfinished else "")
        raise PlanRefused(f"cluster {cluster!r} already exists with {len(existing.replicas)} replica(s); {hint}"
                          f"use add-replica / remove-replica to change it, or delete-cluster first")
    placed = next_zones(zones, [], replicas)
    new = tuple((replica_name(cluster, change_id, i), z) for i, z in enumerate(placed))
    steps = [f"create the cluster CA and etcd CA (block {cluster}-pki)",
             "reserve the static endpoint IP", "create firewall rules (etcd peer, etcd client, API server)",
             f"insert {replicas} VM(s) in parallel: " + ", ".join(f"{n} ({z})" for n, z in new),
             "issue each replica's certificates; start etcd with initial-cluster of all members",
             "wait for etcd quorum and every API server ready"]
    lb = LbChange.NONE
    seconds = GCE_SECONDS["address"] + GCE_SECONDS["firewall"] + GCE_SECONDS["instance_insert"] + \
        GCE_SECONDS["instance_update"] + 10
    if replicas > 1:
        lb = LbChange.CREATE
        steps += ["create the HTTP health check and the target pool with every replica",
                  "create the forwarding rule on the endpoint IP (the load balancer; ~20 min on GCE)"]
        seconds += GCE_SECONDS["health_check"] + GCE_SECONDS["target_pool"] + GCE_SECONDS["forwarding_rule_insert"]
    else:
        steps[3] += " with the endpoint IP as its external IP"
    return Plan(action="create-cluster", cluster=cluster, steps=tuple(steps), voting_before=0,
                voting_after=replicas, expected_seconds=seconds, lb=lb, new_replicas=new,
                reason=f"{replicas} voting member(s), quorum {quorum(replicas)}")


def plan_add(state: ClusterState, zone: str | None, change_id: str, known_zones: list[str],
             spread_over: list[str] | None = None) -> Plan:
    """Add one replica. ``zone`` must be in the cluster's region; without it, the zone with the fewest
    replicas among ``spread_over`` (the zones the cluster was created over), else among the region's."""
    if not state.vms:
        raise PlanRefused(f"cluster {state.cluster!r} has no replicas in region {state.region}: create it first")
    if state.membership_unknown is not None:  # the quorum check and the resume both need the member list
        refuse_on_unknown(f"add a replica to {state.cluster!r}", [state.membership_unknown])
    if zone is not None:
        check_zones(state.region, [zone], known_zones)
    # an unfinished add of this change is resumed, another one blocks
    mine = [r for r in state.vms if r.change == label_value(change_id)]
    name = mine[0].name if mine else replica_name(state.cluster, change_id, 0)
    if not mine:
        pending = [r for r in state.replicas if r.learner or (r.member_id is None and r.vm_status != MISSING)]
        if pending:
            r = pending[0]
            raise PlanRefused(f"replica {r.name} is still being added (change {r.change}): run add-replica with "
                              f"change_id={r.change!r} to finish it, or remove it first; one change at a time")
        decision = can_add(member_health(state))
        if not decision.allowed:
            raise PlanRefused(f"cannot add a replica to {state.cluster!r}: {decision.reason}")
        reason = decision.reason
    else:
        reason = f"resuming the add of {name}"
    candidates = [z for z in (spread_over or []) if z in known_zones] or sorted(known_zones)
    zone = zone or (mine[0].zone if mine else next_zones(candidates, [r.zone for r in state.vms], 1)[0])
    voting = len(state.voting)
    steps = _join_steps(name, zone)
    seconds = GCE_SECONDS["instance_insert"] + 2 * GCE_SECONDS["instance_update"] + 15
    # a replica without an external IP behind an existing load balancer means a 1 -> 2 move was
    # interrupted after its forwarding rule: finish that move (each of its steps looks first)
    unfinished_move = any(r.external_ip is None for r in state.vms if r.name != name)
    if state.load_balancer and not unfinished_move:
        lb = LbChange.EXTEND
        steps.append(f"add {name} to the target pool")
        seconds += GCE_SECONDS["target_pool"]
    else:
        lb = LbChange.CREATE
        steps += ["create the HTTP health check and the target pool with both replicas",
                  "take the endpoint IP off the first replica (its access config): the endpoint stops answering",
                  "create the forwarding rule on the endpoint IP (~20 min on GCE): the endpoint answers again",
                  "give the first replica a new ephemeral external IP"]
        seconds += GCE_SECONDS["health_check"] + GCE_SECONDS["target_pool"] + 2 * GCE_SECONDS["instance_update"] + \
            GCE_SECONDS["forwarding_rule_insert"]
    return Plan(action="add-replica", cluster=state.cluster, steps=tuple(steps), voting_before=voting,
                voting_after=voting + 1, expected_seconds=seconds, reason=reason, replica=name, zone=zone, lb=lb,
                new_replicas=((name, zone),))


def choose_victim(state: ClusterState, zone: str, replica: str | None) -> ReplicaState:
    if replica is not None:
        found = state.replica(replica)
        if found is None:
            raise PlanRefused(f"cluster {state.cluster!r} has no replica named {replica!r}; replicas: "
                              f"{[r.name for r in state.replicas]}")
        if zone and found.zone not in (zone, "?"):
            raise PlanRefused(f"replica {replica!r} is in zone {found.zone}, not {zone}")
        return found
    in_zone = [r for r in state.replicas if r.zone == zone]
    if not in_zone:
        raise PlanRefused(f"cluster {state.cluster!r} has no replica in zone {zone!r}; zones in use: "
                          f"{sorted({r.zone for r in state.replicas})}")
    # an unhealthy one first, then a non-leader, then by name: removing a healthy leader costs an election
    return sorted(in_zone, key=lambda r: (r.healthy, r.leader, r.name))[0]


def plan_remove(state: ClusterState, zone: str, replica: str | None) -> Plan:
    victim = choose_victim(state, zone, replica)
    refuse_on_unknown(f"remove {victim.name} from {state.cluster!r}", state.etcd_unknowns)
    vms = state.vms
    if len(state.replicas) <= 1 or (len(vms) <= 1 and victim.vm_status != MISSING):
        raise PlanRefused(f"{victim.name} is the last replica of {state.cluster!r}: never remove the last "
                          f"replica; use delete-cluster to remove the whole cluster")
    reason = "it is not an etcd member"
    if victim.member_id is not None:
        decision = can_remove(member_health(state), victim.member_id)
        if not decision.allowed:
            raise PlanRefused(f"cannot remove {victim.name}: {decision.reason}")
        reason = decision.reason
    voting = len(state.voting)
    after = voting - (1 if victim.member_id is not None and not victim.learner else 0)
    steps = []
    if victim.leader:
        steps.append(f"move etcd leadership away from {victim.name}")
    if victim.member_id is not None:
        steps.append(f"remove {victim.name} from etcd")
    remaining = [r for r in vms if r.name != victim.name]
    seconds = GCE_SECONDS["instance_delete"] + 5
    lb = LbChange.NONE
    # 2 -> 1, or a resumed one whose load balancer is already gone but whose IP is not handed back yet
    if len(remaining) == 1 and (state.load_balancer or state.target_pool or state.address_status == "RESERVED"):
        lb = LbChange.DELETE
        last = remaining[0].name
        steps += ["delete the forwarding rule (the load balancer; ~20 min on GCE): the endpoint stops answering",
                  f"give {last} the endpoint IP as its external IP (dropping its ephemeral one): it answers again",
                  "delete the target pool and the health check"]
        seconds += GCE_SECONDS["forwarding_rule_delete"] + 2 * GCE_SECONDS["instance_update"] + \
            GCE_SECONDS["target_pool"] + GCE_SECONDS["health_check"]
    elif state.target_pool:
        lb = LbChange.SHRINK
        steps.append(f"take {victim.name} out of the target pool")
        seconds += GCE_SECONDS["target_pool"]
    if victim.vm_status != MISSING:
        steps.append(f"delete VM {victim.name} in {victim.zone}")
    return Plan(action="remove-replica", cluster=state.cluster, steps=tuple(steps), voting_before=voting,
                voting_after=after, expected_seconds=seconds, reason=reason, replica=victim.name,
                zone=victim.zone, lb=lb)


def plan_replace(state: ClusterState, replica: str, change_id: str, known_zones: list[str]) -> tuple[Plan, Plan]:
    """Remove then add in the same zone; refused unless quorum holds at every step."""
    victim = state.replica(replica)
    if victim is None:
        raise PlanRefused(f"cluster {state.cluster!r} has no replica named {replica!r}; replicas: "
                          f"{[r.name for r in state.replicas]}")
    refuse_on_unknown(f"replace {replica} in {state.cluster!r}", state.etcd_unknowns)
    if victim.member_id is not None and not victim.learner:
        health = member_health(state)
        target = next(m for m in health if m.id == victim.member_id)
        if target.healthy:  # replacing a healthy member is allowed when quorum survives its removal
            health = [MemberHealth(m.id, m.name, m.voting, (Reason.UNREACHABLE,)) if m.id == target.id else m
                      for m in health]
        decision = can_replace(health, [victim.member_id])
        if not decision.allowed:
            raise PlanRefused(f"cannot replace {replica}: {decision.reason}")
    removal = plan_remove(state, victim.zone, replica)
    after_removal = ClusterState(
        cluster=state.cluster, region=state.region, replicas=tuple(r for r in state.replicas if r.name != replica),
        endpoint_ip=state.endpoint_ip, address_status=state.address_status,
        load_balancer=state.load_balancer and removal.lb is not LbChange.DELETE,
        target_pool=state.target_pool and removal.lb is not LbChange.DELETE, settings=state.settings)
    addition = plan_add(after_removal, victim.zone, change_id, known_zones)
    return removal, addition


def decision_text(decision: Decision) -> str:
    return ("allowed: " if decision.allowed else "refused: ") + decision.reason
