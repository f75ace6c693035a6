"""What each flow will do, decided from observed state alone. Pure: no I/O, no Prefect.

A plan says which replica, in which zone, whether the load balancer is
created, extended, shrunk or deleted, the etcd membership before and after,
and whether quorum allows it. Flows execute plans; ``dry_run=True`` prints
them. Expected durations use the published GCE figures of
:mod:`haplane.core.gce_timings` (the emulator's "gce" latency profile uses the same).

Unknown is not absent: a plan that would remove an etcd member or delete a
VM is refused when the etcd membership or a member's health could not be
observed (:attr:`haplane.core.model.ClusterState.etcd_unknowns`), naming what could
not be seen and what to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from haplane.core.endpoint import EndpointMode
from haplane.core.gce_timings import GCE_SECONDS
from haplane.core.model import MISSING, ZONE_OUT, ClusterState, LbChange, ReplicaState, Unknown
from haplane.core.quorum import Decision, MemberHealth, Reason, can_add, can_remove, can_replace, quorum
from haplane.core.quorum import unhealthy_reasons as classify
from haplane.core.steps import STEP_SCHEMA, PlanStep, Ref, StepKind, check_refs, step
from haplane.core.topology import (
    ClusterNames,
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
        raise PlanRefused(
            f"cannot {what}: "
            + "; ".join(u.text for u in unknowns)
            + ". Nothing was changed: haplane does not act on a view it could not verify "
            "(unknown is not absent); fix that and run again"
        )


@dataclass(frozen=True)
class Plan:
    """What a flow will do: typed steps (:mod:`haplane.core.steps`) and the decisions behind them."""

    action: str
    cluster: str
    steps: tuple[PlanStep, ...]
    voting_before: int
    voting_after: int
    expected_seconds: float
    reason: str = ""
    replica: str | None = None
    zone: str | None = None
    lb: LbChange = LbChange.NONE
    new_replicas: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (name, zone)
    downtime: str = ""  # when the plan takes the endpoint down, and for how long: said up front

    def __post_init__(self) -> None:
        check_refs(self.steps)

    @property
    def ids(self) -> tuple[str, ...]:
        """The step ids, in order: what a run checkpoints (see :data:`haplane.core.steps.STEP_SCHEMA`)."""
        return tuple(s.id for s in self.steps)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.steps)

    @property
    def even_note(self) -> str:
        if self.voting_after and self.voting_after % 2 == 0:
            return (
                f"the cluster is left with {self.voting_after} voting members, an even count: it tolerates "
                f"no more failures than {self.voting_after - 1}; add or remove one replica next"
            )
        return ""

    def markdown(self) -> str:
        lines = [f"## Plan: {self.action} on `{self.cluster}`", ""]
        lines += [
            f"{i}. {s.text} (`{s.id}`)" + (" — side by side with its neighbours" if s.parallel else "")
            for i, s in enumerate(self.steps, 1)
        ]
        lines += [
            "",
            f"- etcd voting members: {self.voting_before} (quorum {quorum(self.voting_before) if self.voting_before else '-'})"
            f" -> {self.voting_after} (quorum {quorum(self.voting_after) if self.voting_after else '-'})",
            f"- load balancer: {self.lb.value}",
            f"- expected duration on GCE: about {self.expected_seconds / 60:.1f} min",
            f"- step schema: {STEP_SCHEMA}",
        ]
        if self.reason:
            lines.append(f"- quorum: {self.reason}")
        if self.downtime:
            lines.append(f"- endpoint downtime: {self.downtime}")
        if self.even_note:
            lines.append(f"- note: {self.even_note}")
        return "\n".join(lines)

    def then(self, other: Plan, action: str) -> Plan:
        """This plan followed by ``other``, as one (replace = remove, then add)."""
        return Plan(
            action=action,
            cluster=self.cluster,
            steps=self.steps + other.steps,
            voting_before=self.voting_before,
            voting_after=other.voting_after,
            expected_seconds=self.expected_seconds + other.expected_seconds,
            reason="; ".join(r for r in (self.reason, other.reason) if r),
            replica=other.replica,
            zone=other.zone,
            lb=other.lb if other.lb is not LbChange.NONE else self.lb,
            new_replicas=self.new_replicas + other.new_replicas,
            downtime="; ".join(d for d in (self.downtime, other.downtime) if d),
        )


# membership changes: each starts with a verified etcd snapshot (a step of its plan, "snapshot-before")
SNAPSHOT_BEFORE = frozenset({"add-replica", "remove-replica", "replace-replica", "upgrade-cluster"})


def with_preamble(plan: Plan, keys: tuple[str, ...] = (), snapshot: bool = True) -> Plan:
    """``plan`` with what a run does before its own steps, as steps at its head: the cluster's keys made
    complete (``keys``: those a check of the PKI block found to move into Secret Manager or to make; none:
    no step), then, for a membership change (:data:`SNAPSHOT_BEFORE`) that changes anything, a verified
    snapshot (``snapshot`` False: skip_snapshot, no snapshot step). Both ids are new to these plans
    (``snapshot-before`` is the checkpoint key the snapshot always had): every other id stays as it is."""
    head = []
    if keys:
        head.append(
            step(
                StepKind.COMPLETE_KEYS,
                "complete-keys",
                f"complete the cluster's keys in Secret Manager ({', '.join(keys)}: moved out of the PKI block, "
                f"or made), before anything else",
                keys=tuple(keys),
            )
        )
    if snapshot and plan.action in SNAPSHOT_BEFORE and plan.steps:  # a plan with no step changes nothing
        head.append(
            step(
                StepKind.SNAPSHOT_BEFORE,
                "snapshot-before",
                "take and verify an etcd snapshot of the cluster (if it fails, the run stops with nothing changed)",
                action=plan.action,
            )
        )
    if not head:
        return plan
    return replace(plan, steps=(*head, *plan.steps))


def member_health(state: ClusterState) -> list[MemberHealth]:
    """The quorum rules' view of the observed replicas."""
    out = []
    for r in state.replicas:
        if r.member_id is None:
            continue
        reasons = classify(
            started=r.started,
            reachable=r.vm_status == "RUNNING" and r.etcd_ok,
            is_learner=r.learner,
            learner_caught_up=False,
        )
        out.append(MemberHealth(id=r.member_id, name=r.name, voting=not r.learner, reasons=reasons))
    return out


CERTS = "certificates for its internal IP and the endpoint IP (never an ephemeral IP)"


def plan_create(
    cluster: str,
    region: str,
    zones: list[str],
    replicas: int,
    change_id: str,
    known_zones: list[str],
    existing: ClusterState | None,
    mode: EndpointMode = EndpointMode.AS_NEEDED,
    leaf_minutes: int | None = None,
) -> Plan:
    """Create a cluster (``leaf_minutes``: how long its leaf certificates last; None: 1 year). The load balancer (when the mode has one at this size) is built beside the
    VMs, off the critical path: its forwarding rule, most of the wait on GCE, is submitted before
    the VMs and waited for last; the replicas join the pool once their API servers are ready."""
    check_cluster_size(replicas)
    zones = check_zones(region, zones, known_zones)
    mode = EndpointMode(mode)
    if (
        existing is not None
        and existing.replicas
        and not any(r.change == label_value(change_id) for r in existing.replicas)
    ):
        unfinished = sorted({r.change for r in existing.replicas if r.change and r.change.startswith("create-")})
        hint = (
            f"if an earlier create-cluster run failed, resume it with change_id={unfinished[0]!r}; "
            if unfinished
            else ""
        )
        raise PlanRefused(
            f"cluster {cluster!r} already exists with {len(existing.replicas)} replica(s); {hint}"
            f"use add-replica / remove-replica to change it, or delete-cluster first"
        )
    names = ClusterNames(cluster)
    placed = next_zones(zones, [], replicas)
    new = tuple((replica_name(cluster, change_id, i), z) for i, z in enumerate(placed))
    with_lb = mode.has_load_balancer(replicas)
    endpoint = Ref("address", "ip")
    steps = [
        step(
            StepKind.SAVE_SPEC,
            "spec",
            f"save the cluster's spec (block {names.spec_block}; endpoint mode {mode.value})",
        ),
        step(
            StepKind.CREATE_PKI,
            "pki",
            f"create the cluster CA and etcd CA (block {names.pki_block}), "
            f"unless they exist" + (f"; leaf certificates last {leaf_minutes} minutes" if leaf_minutes else ""),
            **({"leaf_minutes": leaf_minutes} if leaf_minutes else {}),
        ),
        step(
            StepKind.RESERVE_ADDRESS,
            "address",
            f"reserve the static endpoint IP ({names.address})",
            "network",
            region=region,
        ),
    ]
    # after the address: with no operator range given, the firewall admits the worker's egress toward it
    steps += [
        step(StepKind.FIREWALL, f"firewall/{n}", f"create firewall rule {n}", "firewalls", name=n)
        for n in (names.firewall_etcd_peer, names.firewall_etcd_client, names.firewall_apiserver)
    ]
    if with_lb:
        steps += [
            step(
                StepKind.HEALTH_CHECK, "health-check", f"create the HTTP health check ({names.health_check})", "network"
            ),
            step(
                StepKind.TARGET_POOL,
                "target-pool",
                f"create the target pool ({names.target_pool}), empty for now",
                region=region,
                instances=(),
            ),
            step(
                StepKind.FORWARDING_RULE,
                "forwarding-rule",
                "submit the forwarding rule on the endpoint IP (the "
                "load balancer; ~20 min on GCE): it is built while the VMs are, and waited for last",
                region=region,
                ip=endpoint,
                background=True,
            ),
        ]
    nat = None if with_lb else endpoint
    steps += [
        step(
            StepKind.CREATE_VM,
            f"vm/{n}",
            f"insert VM {n} in {z}" + (" with the endpoint IP as its external IP" if nat else ""),
            "vms",
            zone=z,
            name=n,
            nat_ip=nat,
        )
        for n, z in new
    ]
    initial = tuple((n, Ref(f"vm/{n}", "internal_ip")) for n, _ in new)
    steps += [
        step(
            StepKind.CONFIGURE,
            f"configure/{n}",
            f"issue {n}'s {CERTS}; start its etcd with the initial-cluster of all {replicas} member(s)",
            "configure",
            zone=z,
            name=n,
            endpoint_ip=endpoint,
            initial_cluster=initial,
            cluster_state="new",
        )
        for n, z in new
    ]
    steps.append(
        step(
            StepKind.WAIT_QUORUM,
            "quorum",
            f"wait for etcd quorum: {replicas} voting member(s), each answering a linearizable read",
            ips=tuple(ip for _, ip in initial),
            voting=replicas,
        )
    )
    vm_path = GCE_SECONDS["instance_insert"] + GCE_SECONDS["instance_update"] + 10
    seconds = GCE_SECONDS["address"] + GCE_SECONDS["firewall"] + vm_path
    lb = LbChange.NONE
    if with_lb:
        lb = LbChange.CREATE
        steps += [
            step(
                StepKind.WAIT_API,
                f"api-ready/{n}",
                f"wait until {n}'s API server is ready (it would pass the pool's health check)",
                name=n,
                ip=ip,
            )
            for n, ip in initial
        ]
        steps += [
            step(
                StepKind.TARGET_POOL,
                "pool-members",
                "add the replicas to the target pool",
                region=region,
                instances=tuple((z, n) for n, z in new),
            ),
            step(
                StepKind.AWAIT,
                "forwarding-rule/wait",
                "wait for the forwarding rule: the endpoint answers",
                step="forwarding-rule",
            ),
        ]
        lb_path = GCE_SECONDS["health_check"] + GCE_SECONDS["target_pool"] + GCE_SECONDS["forwarding_rule_insert"]
        seconds = GCE_SECONDS["address"] + max(GCE_SECONDS["firewall"] + vm_path + GCE_SECONDS["target_pool"], lb_path)
    return Plan(
        action="create-cluster",
        cluster=cluster,
        steps=tuple(steps),
        voting_before=0,
        voting_after=replicas,
        expected_seconds=seconds,
        lb=lb,
        new_replicas=new,
        reason=f"{replicas} voting member(s), quorum {quorum(replicas)}; endpoint mode {mode.value}",
    )


def plan_add(
    state: ClusterState,
    zone: str | None,
    change_id: str,
    known_zones: list[str],
    spread_over: list[str] | None = None,
    prefix: str = "",
) -> Plan:
    """Add one replica. ``zone`` must be in the cluster's region; without it, the zone with the fewest
    replicas among ``spread_over`` (the zones the cluster was created over), else among the region's.
    ``prefix`` goes before every step id (replace-replica's "add/")."""
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
            raise PlanRefused(
                f"replica {r.name} is still being added (change {r.change}): run add-replica with "
                f"change_id={r.change!r} to finish it, or remove it first; one change at a time"
            )
        decision = can_add(member_health(state))
        if not decision.allowed:
            raise PlanRefused(f"cannot add a replica to {state.cluster!r}: {decision.reason}")
        reason = decision.reason
    else:
        reason = f"resuming the add of {name}"
    candidates = [z for z in (spread_over or []) if z in known_zones] or sorted(known_zones)
    zone = zone or (mine[0].zone if mine else next_zones(candidates, [r.zone for r in state.vms], 1)[0])
    voting = len(state.voting)
    members = [r for r in state.vms if r.member_id is not None and r.name != name]
    member_ips = tuple(r.internal_ip for r in members)
    vm, learner, p = f"{prefix}vm/{name}", f"{prefix}learner/{name}", prefix
    ip = Ref(vm, "internal_ip")
    steps = [
        step(
            StepKind.CREATE_VM,
            vm,
            f"insert VM {name} in {zone} and wait for it to run",
            zone=zone,
            name=name,
            nat_ip=None,
        ),
        step(
            StepKind.ADD_LEARNER,
            learner,
            f"add {name} to etcd as a learner (it does not vote yet)",
            name=name,
            ip=ip,
            member_ips=member_ips,
        ),
        step(
            StepKind.CONFIGURE,
            f"{p}configure/{name}",
            f"issue {name}'s {CERTS}; write its metadata: its etcd joins with initial-cluster-state=existing",
            zone=zone,
            name=name,
            endpoint_ip=state.endpoint_ip,
            initial_cluster=tuple((r.name, r.internal_ip) for r in members) + ((name, ip),),
            cluster_state="existing",
        ),
        step(
            StepKind.PROMOTE,
            f"{p}promote/{name}",
            f"promote {name} to a voting member once it has caught up",
            name=name,
            member_id=Ref(learner, "member_id"),
            member_ips=member_ips,
        ),
        step(
            StepKind.WAIT_QUORUM,
            f"{p}quorum/{name}",
            f"wait for etcd quorum: {len(members) + 1} voting members, each answering a linearizable read",
            ips=member_ips + (ip,),
            voting=len(members) + 1,
        ),
    ]
    seconds = GCE_SECONDS["instance_insert"] + 2 * GCE_SECONDS["instance_update"] + 15
    # a replica without an external IP behind an existing load balancer means a 1 -> 2 move was
    # interrupted after its forwarding rule: finish that move (each of its steps looks first)
    unfinished_move = any(r.external_ip is None for r in state.vms if r.name != name and r.vm_status != ZONE_OUT)
    if state.load_balancer and not unfinished_move:
        lb = LbChange.EXTEND
        steps += [
            step(
                StepKind.WAIT_API,
                f"{p}api-ready/{name}",
                f"wait until {name}'s API server is ready (it would pass the pool's health check)",
                name=name,
                ip=ip,
            ),
            step(
                StepKind.POOL_ADD,
                f"{p}pool-add/{name}",
                f"add {name} to the target pool",
                region=state.region,
                zone=zone,
                name=name,
            ),
        ]
        seconds += GCE_SECONDS["target_pool"]
    else:
        lb = LbChange.CREATE
        first = next(r for r in state.vms if r.name != name)
        names = ClusterNames(state.cluster)
        steps += [
            step(StepKind.HEALTH_CHECK, f"{p}health-check", f"create the HTTP health check ({names.health_check})"),
            step(
                StepKind.TARGET_POOL,
                f"{p}target-pool",
                f"create the target pool with {first.name} and {name}",
                region=state.region,
                instances=((first.zone, first.name), (zone, name)),
            ),
            step(
                StepKind.RELEASE_IP,
                f"{p}release-ip/{first.name}",
                f"take the endpoint IP off {first.name} "
                f"({state.endpoint_ip}, its access config): the endpoint stops answering",
                zone=first.zone,
                name=first.name,
                only_if_ip=state.endpoint_ip,
            ),
            step(
                StepKind.FORWARDING_RULE,
                f"{p}forwarding-rule",
                "create the forwarding rule on the endpoint IP (~20 min on GCE): the endpoint answers again",
                region=state.region,
                ip=state.endpoint_ip,
            ),
            step(
                StepKind.EPHEMERAL_IP,
                f"{p}ephemeral-ip/{first.name}",
                f"give {first.name} a new ephemeral external IP",
                zone=first.zone,
                name=first.name,
            ),
        ]
        seconds += (
            GCE_SECONDS["health_check"]
            + GCE_SECONDS["target_pool"]
            + 2 * GCE_SECONDS["instance_update"]
            + GCE_SECONDS["forwarding_rule_insert"]
        )
    downtime = (
        (
            f"the endpoint does not answer while the forwarding rule is created (about "
            f"{GCE_SECONDS['forwarding_rule_insert'] / 60:.0f} min on GCE): the seed's IP move; "
            f"set-load-balancer to 'always' avoids it"
        )
        if lb is LbChange.CREATE
        else ""
    )
    return Plan(
        action="add-replica",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=voting,
        voting_after=voting + 1,
        expected_seconds=seconds,
        reason=reason,
        replica=name,
        zone=zone,
        lb=lb,
        new_replicas=((name, zone),),
        downtime=downtime,
    )


def choose_victim(state: ClusterState, zone: str, replica: str | None) -> ReplicaState:
    if replica is not None:
        found = state.replica(replica)
        if found is None:
            raise PlanRefused(
                f"cluster {state.cluster!r} has no replica named {replica!r}; replicas: "
                f"{[r.name for r in state.replicas]}"
            )
        if zone and found.zone not in (zone, "?"):
            raise PlanRefused(f"replica {replica!r} is in zone {found.zone}, not {zone}")
        return found
    in_zone = [r for r in state.replicas if r.zone == zone]
    if not in_zone:
        raise PlanRefused(
            f"cluster {state.cluster!r} has no replica in zone {zone!r}; zones in use: "
            f"{sorted({r.zone for r in state.replicas})}"
        )
    # an unhealthy one first, then a non-leader, then by name: removing a healthy leader costs an election
    return sorted(in_zone, key=lambda r: (r.healthy, r.leader, r.name))[0]


def plan_remove(
    state: ClusterState, zone: str, replica: str | None, prefix: str = "", mode: EndpointMode = EndpointMode.AS_NEEDED
) -> Plan:
    """Remove one replica: out of the target pool first (no request through the endpoint reaches a
    replica that is leaving), then etcd, then the VM. In ``always`` mode the load balancer stays at
    one replica, so 2 -> 1 only shrinks the pool; in ``as-needed`` mode 2 -> 1 deletes it and hands
    its IP back to the last replica (the seed's move, with its downtime)."""
    victim = choose_victim(state, zone, replica)
    refuse_on_unknown(f"remove {victim.name} from {state.cluster!r}", state.etcd_unknowns)
    vms = state.vms
    if len(state.replicas) <= 1 or (len(vms) <= 1 and victim.vm_status != MISSING):
        raise PlanRefused(
            f"{victim.name} is the last replica of {state.cluster!r}: never remove the last "
            f"replica; use delete-cluster to remove the whole cluster"
        )
    reason = "it is not an etcd member"
    if victim.member_id is not None:
        decision = can_remove(member_health(state), victim.member_id)
        if not decision.allowed:
            raise PlanRefused(f"cannot remove {victim.name}: {decision.reason}")
        reason = decision.reason
    voting = len(state.voting)
    after = voting - (1 if victim.member_id is not None and not victim.learner else 0)
    p, name = prefix, victim.name
    survivors = [r for r in vms if r.name != name and r.member_id is not None]
    survivor_ips = tuple(r.internal_ip for r in survivors if r.vm_status == "RUNNING")
    steps: list[PlanStep] = []
    remaining = [r for r in vms if r.name != name]
    keep_lb = EndpointMode(mode) is EndpointMode.ALWAYS
    # 2 -> 1, or a resumed one whose load balancer is already gone but whose IP is not handed back yet
    hand_back = (
        not keep_lb
        and len(remaining) == 1
        and (state.load_balancer or state.target_pool or state.address_status == "RESERVED")
    )
    lb = LbChange.NONE
    seconds = GCE_SECONDS["instance_delete"] + 5
    if not hand_back and state.target_pool:
        lb = LbChange.SHRINK
        if victim.vm_status not in (MISSING, ZONE_OUT):
            steps.append(
                step(
                    StepKind.POOL_REMOVE,
                    f"{p}pool-remove/{name}",
                    f"take {name} out of the target pool first: no request through the endpoint reaches it from now on",
                    region=state.region,
                    zone=victim.zone,
                    name=name,
                )
            )
            seconds += GCE_SECONDS["target_pool"]
    if victim.member_id is not None:
        if victim.leader:
            steps.append(
                step(
                    StepKind.MOVE_LEADER,
                    f"{p}move-leader/{name}",
                    f"move etcd leadership away from {name}",
                    name=name,
                    member_id=victim.member_id,
                    member_ips=survivor_ips + (victim.internal_ip,),
                    healthy_ids=tuple(r.member_id for r in survivors if r.etcd_ok and not r.learner),
                )
            )
        voters = sum(1 for r in survivors if not r.learner)
        steps += [
            step(
                StepKind.REMOVE_MEMBER,
                f"{p}member/{name}",
                f"remove {name} from etcd",
                name=name,
                member_id=victim.member_id,
                member_ips=survivor_ips,
            ),
            step(
                StepKind.WAIT_QUORUM,
                f"{p}quorum/{name}",
                f"wait for etcd quorum: {voters} voting member(s), each answering a linearizable read",
                ips=survivor_ips,
                voting=voters,
            ),
        ]
    downtime = ""
    if hand_back:
        lb = LbChange.DELETE
        last = remaining[0]
        names = ClusterNames(state.cluster)
        steps += [
            step(
                StepKind.DELETE_FORWARDING_RULE,
                f"{p}delete-forwarding-rule",
                "delete the forwarding rule (the load balancer; ~20 min on GCE): the endpoint stops answering",
                region=state.region,
            ),
            step(
                StepKind.DROP_EPHEMERAL_IP,
                f"{p}drop-ephemeral/{last.name}",
                f"drop {last.name}'s ephemeral external IP",
                zone=last.zone,
                name=last.name,
                unless_ip=state.endpoint_ip,
            ),
            step(
                StepKind.ENDPOINT_IP,
                f"{p}endpoint-ip/{last.name}",
                f"give {last.name} the endpoint IP {state.endpoint_ip} as its external IP: the endpoint answers again",
                zone=last.zone,
                name=last.name,
                ip=state.endpoint_ip,
            ),
            step(
                StepKind.DELETE_TARGET_POOL,
                f"{p}delete-target-pool",
                f"delete the target pool ({names.target_pool})",
                region=state.region,
            ),
            step(
                StepKind.DELETE_HEALTH_CHECK,
                f"{p}delete-health-check",
                f"delete the health check ({names.health_check})",
            ),
        ]
        seconds += (
            GCE_SECONDS["forwarding_rule_delete"]
            + 2 * GCE_SECONDS["instance_update"]
            + GCE_SECONDS["target_pool"]
            + GCE_SECONDS["health_check"]
        )
        downtime = (
            f"the endpoint does not answer from the forwarding rule's deletion until {last.name} carries "
            f"the IP (about {GCE_SECONDS['forwarding_rule_delete'] / 60:.0f} min on GCE): the seed's IP move"
        )
    if victim.vm_status != MISSING:
        steps.append(
            step(
                StepKind.DELETE_VM,
                f"{p}delete-vm/{name}",
                f"delete VM {name} in {victim.zone}",
                zone=victim.zone,
                name=name,
            )
        )
        steps.append(_delete_keys(p, name, "its VM is deleted"))
    else:  # the VM is gone (verified: not in any zone that answered); its private keys are not
        steps.append(_delete_keys(p, name))
    return Plan(
        action="remove-replica",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=voting,
        voting_after=after,
        expected_seconds=seconds,
        reason=reason,
        replica=name,
        zone=victim.zone,
        lb=lb,
        downtime=downtime,
    )


def _delete_keys(prefix: str, name: str, why: str = "its VM is gone already") -> PlanStep:
    """A replica's private keys in Secret Manager: after its VM is deleted, or once it is found gone."""
    return step(
        StepKind.DELETE_KEYS,
        f"{prefix}delete-keys/{name}",
        f"delete the private keys of {name} from Secret Manager ({why})",
        name=name,
    )


def plan_removed(state: ClusterState, replica: str, zone: str, prefix: str = "") -> Plan:
    """A removal resumed once the replica's VM and etcd member are gone (its run was killed while the
    VM was being deleted): its last steps again. The VM's deletion looks first (no call for a VM that is
    gone; a resumed run waits on the deletion it submitted), then the replica's private keys are deleted
    from Secret Manager, which nothing else would do. A replica whose VM was gone before its removal
    started (zone "?") gets its keys deleted again (a step that finds none is done)."""
    if state.replica(replica) is not None:
        raise PlanRefused(f"{replica} is still in {state.cluster!r}: plan its removal, not its end")
    voting = len(state.voting)
    steps = (
        (_delete_keys(prefix, replica),)
        if zone == "?"
        else (
            step(
                StepKind.DELETE_VM,
                f"{prefix}delete-vm/{replica}",
                f"delete VM {replica} in {zone} (gone already)",
                zone=zone,
                name=replica,
            ),
            _delete_keys(prefix, replica, "its VM is deleted"),
        )
    )
    return Plan(
        action="remove-replica",
        cluster=state.cluster,
        voting_before=voting,
        voting_after=voting,
        steps=steps,
        expected_seconds=0,
        reason=f"resuming the removal of {replica}: its VM and etcd member are gone",
        replica=replica,
        zone=zone,
    )


def plan_replace(
    state: ClusterState,
    replica: str,
    change_id: str,
    known_zones: list[str],
    spread_over: list[str] | None = None,
    mode: EndpointMode = EndpointMode.AS_NEEDED,
    to_zone: str | None = None,
) -> tuple[Plan, Plan]:
    """Remove then add in the same zone; refused unless quorum holds at every step. The addition is
    planned on the state the removal leaves (its step ids start "add/", the removal's "remove/")."""
    victim = state.replica(replica)
    if victim is None:
        raise PlanRefused(
            f"cluster {state.cluster!r} has no replica named {replica!r}; replicas: {[r.name for r in state.replicas]}"
        )
    refuse_on_unknown(f"replace {replica} in {state.cluster!r}", state.etcd_unknowns)
    if victim.member_id is not None and not victim.learner:
        health = member_health(state)
        target = next(m for m in health if m.id == victim.member_id)
        if target.healthy:  # replacing a healthy member is allowed when quorum survives its removal
            health = [
                MemberHealth(m.id, m.name, m.voting, (Reason.UNREACHABLE,)) if m.id == target.id else m for m in health
            ]
        decision = can_replace(health, [victim.member_id])
        if not decision.allowed:
            raise PlanRefused(f"cannot replace {replica}: {decision.reason}")
    removal = plan_remove(state, victim.zone, replica, prefix=REMOVE_PREFIX, mode=mode)
    deleted = removal.lb is LbChange.DELETE
    after_removal = ClusterState(
        cluster=state.cluster,
        region=state.region,
        replicas=tuple(r for r in state.replicas if r.name != replica),
        endpoint_ip=state.endpoint_ip,
        address_status="RESERVED" if deleted else state.address_status,
        load_balancer=state.load_balancer and not deleted,
        target_pool=state.target_pool and not deleted,
        pool_members=tuple(n for n in state.pool_members if n != replica) if not deleted else (),
        settings=state.settings,
    )
    # a VM gone (zone "?"): the new replica goes to the least used zone
    zone = to_zone or (victim.zone if victim.zone in known_zones else None)
    addition = plan_add(after_removal, zone, change_id, known_zones, spread_over, prefix=ADD_PREFIX)
    return removal, addition


REMOVE_PREFIX, ADD_PREFIX = "remove/", "add/"


def plan_delete(state: ClusterState) -> Plan:
    """delete-cluster: the load balancer, the VMs, the endpoint IP, the firewall rules, the PKI and the
    spec. Every step looks first (it does nothing when its resource is gone), so a failed run is run again."""
    names = ClusterNames(state.cluster)
    region = state.region
    steps = [
        step(
            StepKind.DELETE_FORWARDING_RULE,
            "forwarding-rule",
            "delete the load balancer (forwarding rule)",
            region=region,
        ),
        step(
            StepKind.DELETE_TARGET_POOL, "target-pool", f"delete the target pool ({names.target_pool})", region=region
        ),
        step(StepKind.DELETE_HEALTH_CHECK, "health-check", f"delete the health check ({names.health_check})"),
    ]
    steps += [
        step(StepKind.DELETE_VM, f"vm/{r.name}", f"delete VM {r.name} in {r.zone}", "vms", zone=r.zone, name=r.name)
        for r in state.vms
    ]
    steps.append(step(StepKind.RELEASE_ADDRESS, "address", f"release the endpoint IP ({names.address})", region=region))
    steps += [
        step(StepKind.DELETE_FIREWALL, f"firewall/{n}", f"delete firewall rule {n}", "firewalls", name=n)
        for n in (names.firewall_etcd_peer, names.firewall_etcd_client, names.firewall_apiserver)
    ]
    steps += [
        step(StepKind.CHECK_GONE, "gone-from-gce", "check that GCE holds nothing of the cluster any more"),
        step(
            StepKind.DELETE_CLUSTER_KEYS,
            "keys",
            "delete the cluster's secrets from Secret Manager (the CAs' and the replicas' private keys)",
        ),
        step(StepKind.DELETE_PKI, "pki", f"delete the cluster's CAs (block {names.pki_block})"),
        step(StepKind.DELETE_SPEC, "spec", f"delete the cluster's spec (block {names.spec_block})"),
    ]
    seconds = (
        GCE_SECONDS["forwarding_rule_delete"]
        + GCE_SECONDS["target_pool"]
        + GCE_SECONDS["health_check"]
        + GCE_SECONDS["instance_delete"]
        + GCE_SECONDS["address"]
        + GCE_SECONDS["firewall"]
    )
    return Plan(
        action="delete-cluster",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=len(state.voting),
        voting_after=0,
        expected_seconds=seconds,
    )


def plan_set_load_balancer(state: ClusterState, current: EndpointMode, target: EndpointMode) -> Plan:
    """Convert a cluster's endpoint mode. Only a 1-replica cluster changes anything in GCE (with more
    replicas both modes have the load balancer): as-needed -> always is the seed's 1 -> 2 IP move without
    the new replica, always -> as-needed its 2 -> 1 move; both have that move's one-time downtime."""
    current, target = EndpointMode(current), EndpointMode(target)
    if not state.vms:
        raise PlanRefused(f"cluster {state.cluster!r} has no replicas in region {state.region}: create it first")
    pending = [r for r in state.replicas if r.learner or (r.member_id is None and r.vm_status != "MISSING")]
    if pending:
        raise PlanRefused(
            f"replica {pending[0].name} is still being added (change {pending[0].change}): finish or "
            f"remove it first; one change at a time"
        )
    single = len(state.vms) == 1
    voting = len(state.voting)
    common = dict(
        action="set-load-balancer",
        cluster=state.cluster,
        voting_before=voting,
        voting_after=voting,
        reason=f"endpoint mode {current.value} -> {target.value}",
    )
    last = state.vms[0].name
    # what GCE shows decides, not the spec alone: a conversion interrupted half-way is finished
    needs_lb = target is EndpointMode.ALWAYS and single and not state.load_balancer
    drops_lb = target is EndpointMode.AS_NEEDED and single and (state.load_balancer or state.target_pool)
    names = ClusterNames(state.cluster)
    r = state.vms[0]
    settings = (("load_balancer", target.value),)  # that field alone, onto the spec as saved then
    record = step(
        StepKind.SAVE_SPEC,
        "spec",
        f"record endpoint mode {target.value!r} in the cluster's spec ({names.spec_block})",
        settings=settings,
    )
    if needs_lb:
        steps = (
            step(StepKind.HEALTH_CHECK, "health-check", f"create the HTTP health check ({names.health_check})"),
            step(
                StepKind.TARGET_POOL,
                "target-pool",
                f"create the target pool with {last}",
                region=state.region,
                instances=((r.zone, r.name),),
            ),
            step(
                StepKind.RELEASE_IP,
                f"release-ip/{last}",
                f"take the endpoint IP off {last} ({state.endpoint_ip}, "
                f"its access config): the endpoint stops answering",
                zone=r.zone,
                name=last,
                only_if_ip=state.endpoint_ip,
            ),
            step(
                StepKind.FORWARDING_RULE,
                "forwarding-rule",
                "create the forwarding rule on the endpoint IP (~20 min on GCE): the endpoint answers again",
                region=state.region,
                ip=state.endpoint_ip,
            ),
            step(
                StepKind.EPHEMERAL_IP,
                f"ephemeral-ip/{last}",
                f"give {last} a new ephemeral external IP",
                zone=r.zone,
                name=last,
            ),
            record,
        )
        seconds = (
            GCE_SECONDS["health_check"]
            + GCE_SECONDS["target_pool"]
            + 2 * GCE_SECONDS["instance_update"]
            + GCE_SECONDS["forwarding_rule_insert"]
        )
        downtime = (
            f"one time: the IP moves from {last} onto the forwarding rule; the endpoint does not answer "
            f"while the rule is created (about {GCE_SECONDS['forwarding_rule_insert'] / 60:.0f} min on GCE)"
        )
        return Plan(steps=steps, expected_seconds=seconds, lb=LbChange.CREATE, downtime=downtime, **common)
    if drops_lb:
        steps = (
            step(
                StepKind.DELETE_FORWARDING_RULE,
                "delete-forwarding-rule",
                "delete the forwarding rule (~20 min on GCE): the endpoint stops answering",
                region=state.region,
            ),
            step(
                StepKind.DROP_EPHEMERAL_IP,
                f"drop-ephemeral/{last}",
                f"drop {last}'s ephemeral external IP",
                zone=r.zone,
                name=last,
                unless_ip=state.endpoint_ip,
            ),
            step(
                StepKind.ENDPOINT_IP,
                f"endpoint-ip/{last}",
                f"give {last} the endpoint IP {state.endpoint_ip} as its external IP: the endpoint answers again",
                zone=r.zone,
                name=last,
                ip=state.endpoint_ip,
            ),
            step(
                StepKind.DELETE_TARGET_POOL,
                "delete-target-pool",
                f"delete the target pool ({names.target_pool})",
                region=state.region,
            ),
            step(
                StepKind.DELETE_HEALTH_CHECK, "delete-health-check", f"delete the health check ({names.health_check})"
            ),
            record,
        )
        seconds = (
            GCE_SECONDS["forwarding_rule_delete"]
            + 2 * GCE_SECONDS["instance_update"]
            + GCE_SECONDS["target_pool"]
            + GCE_SECONDS["health_check"]
        )
        downtime = (
            f"one time: the IP moves from the forwarding rule back onto {last}; the endpoint does not answer "
            f"while the rule is deleted (about {GCE_SECONDS['forwarding_rule_delete'] / 60:.0f} min on GCE)"
        )
        return Plan(steps=steps, expected_seconds=seconds, lb=LbChange.DELETE, downtime=downtime, **common)
    if current is target:
        return Plan(steps=(), expected_seconds=0, **common)
    later = (
        "the load balancer stays while there are 2 or more replicas; going 2 -> 1 deletes it and hands its IP "
        "back (the seed's move, with its downtime)"
        if target is EndpointMode.AS_NEEDED
        else "the load balancer is already there; it now stays when the cluster shrinks to 1 replica"
    )
    return Plan(
        steps=(
            step(
                StepKind.SAVE_SPEC,
                "spec",
                f"record endpoint mode {target.value!r} in the cluster's spec; {later}",
                settings=settings,
            ),
        ),
        expected_seconds=0,
        **common,
    )


def plan_zone_move(
    state: ClusterState,
    replica: str,
    to_zone: str | None,
    change_id: str,
    known_zones: list[str],
    spread_over: list[str] | None = None,
    add_now: bool = True,
) -> Plan:
    """Move a replica out of a zone whose API does not answer (:func:`haplane.core.remediation.decide_zones`
    decided it): record its VM as stranded *first* (a crash after the removal still leaves it to be
    deleted), remove its etcd member (its peers refuse it from then on: it cannot rejoin as a voter),
    take it out of the target pool, wait for quorum; then, with ``add_now``, add a replica in
    ``to_zone`` (the add-replica steps, ids prefixed "add/") and record it as the replacement."""
    victim = state.replica(replica)
    if victim is None or victim.vm_status != ZONE_OUT or victim.member_id is None:
        raise PlanRefused(f"{replica} is not an etcd member in a zone that does not answer: nothing to move")
    refuse_on_unknown(
        f"move {replica} out of zone {victim.zone}", [state.membership_unknown] if state.membership_unknown else []
    )
    alive = [
        r
        for r in state.replicas
        if r.name != replica and r.member_id is not None and r.vm_status == "RUNNING" and r.etcd_ok
    ]
    ips = tuple(r.internal_ip for r in alive)
    voters = sum(1 for r in state.replicas if r.name != replica and r.member_id is not None and not r.learner)
    steps = [
        step(
            StepKind.STRAND,
            f"strand/{replica}",
            f"record {replica}'s VM in zone {victim.zone} as stranded (deleted once the zone answers)",
            name=replica,
            zone=victim.zone,
        ),
        step(
            StepKind.REMOVE_MEMBER,
            f"member/{replica}",
            f"remove {replica} from etcd: its peers refuse it from now on, so its VM cannot rejoin as a voter",
            name=replica,
            member_id=victim.member_id,
            member_ips=ips,
        ),
    ]
    if replica in state.pool_members:
        steps.append(
            step(
                StepKind.POOL_REMOVE,
                f"pool-remove/{replica}",
                f"take {replica} out of the target pool",
                region=state.region,
                zone=victim.zone,
                name=replica,
            )
        )
    steps.append(
        step(
            StepKind.WAIT_QUORUM,
            f"quorum/{replica}",
            f"wait for etcd quorum: {voters} voting member(s)",
            ips=ips,
            voting=voters,
        )
    )
    voting = len(state.voting)
    removal = Plan(
        action="zone-move",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=voting,
        voting_after=voting - (0 if victim.learner else 1),
        expected_seconds=GCE_SECONDS["target_pool"] + 5,
        replica=replica,
        zone=victim.zone,
        reason=f"{replica}'s zone {victim.zone} does not answer",
    )
    if not add_now:
        return removal
    after = ClusterState(
        cluster=state.cluster,
        region=state.region,
        replicas=tuple(r for r in state.replicas if r.name != replica),
        endpoint_ip=state.endpoint_ip,
        address_status=state.address_status,
        load_balancer=state.load_balancer,
        target_pool=state.target_pool,
        pool_members=tuple(n for n in state.pool_members if n != replica),
        settings=state.settings,
        unavailable_zones=state.unavailable_zones,
    )
    return removal.then(plan_replacement_of(after, replica, to_zone, change_id, known_zones, spread_over), "zone-move")


def plan_replacement_of(
    state: ClusterState,
    stranded: str,
    zone: str | None,
    change_id: str,
    known_zones: list[str],
    spread_over: list[str] | None = None,
) -> Plan:
    """Add the replacement of a stranded VM (add-replica's steps, ids prefixed "add/") and record it."""
    addition = plan_add(state, zone, change_id, known_zones, spread_over, prefix=ADD_PREFIX)
    record = step(
        StepKind.STRAND_REPLACED,
        f"replaced/{stranded}",
        f"record {addition.replica} as the replacement of {stranded}",
        name=stranded,
        replacement=addition.replica,
    )
    return Plan(
        action="zone-add",
        cluster=state.cluster,
        steps=addition.steps + (record,),
        voting_before=addition.voting_before,
        voting_after=addition.voting_after,
        expected_seconds=addition.expected_seconds,
        reason=addition.reason,
        replica=addition.replica,
        zone=addition.zone,
        lb=addition.lb,
        new_replicas=addition.new_replicas,
    )


def plan_delete_stranded(state: ClusterState, stranded: list[tuple[str, str]]) -> Plan:
    """Delete stranded VMs (``(name, zone)``) whose zone answers again; refused for any that is an etcd
    member again (they were removed when their zone was out and must not have rejoined)."""
    refuse_on_unknown("delete stranded VMs", state.etcd_unknowns)
    steps: list[PlanStep] = []
    for name, zone in stranded:
        r = state.replica(name)
        if r is not None and r.member_id is not None:
            raise PlanRefused(
                f"stranded VM {name} is an etcd member again: not deleting it; a person must look "
                f"(remove-replica by name)"
            )
        if name in state.pool_members:
            steps.append(
                step(
                    StepKind.POOL_REMOVE,
                    f"pool-remove/{name}",
                    f"take {name} out of the target pool",
                    region=state.region,
                    zone=zone,
                    name=name,
                )
            )
        steps.append(
            step(
                StepKind.DELETE_VM,
                f"delete-vm/{name}",
                f"delete stranded VM {name} in {zone}",
                "vms",
                zone=zone,
                name=name,
            )
        )
    steps += [_delete_keys("", name, "its VM is deleted") for name, _ in stranded]
    steps.append(
        step(
            StepKind.STRAND_DELETED,
            "stranded-deleted",
            "record the stranded VM(s) as deleted",
            names=tuple(n for n, _ in stranded),
        )
    )
    voting = len(state.voting)
    return Plan(
        action="zone-clean",
        cluster=state.cluster,
        steps=tuple(steps),
        voting_before=voting,
        voting_after=voting,
        expected_seconds=GCE_SECONDS["instance_delete"],
        reason="none of them is an etcd member",
    )


def decision_text(decision: Decision) -> str:
    return ("allowed: " if decision.allowed else "refused: ") + decision.reason
