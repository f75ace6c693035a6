"""Run a plan: each step kind maps to one task, called with the step's id and arguments.

The flows do not write their steps again: they hand the plan's steps
(:mod:`haplane.steps`, built by :mod:`haplane.plans`) to :func:`execute`, so the
dry run, the plan artifact and the run are one list. Every step leaves one
task run named by its step id (GCE steps also a ``wait ...`` task run), which
is how tests compare a run with its plan.

GCE steps go through :func:`tasks.operations.apply` (checkpointed submit, then
wait); consecutive steps sharing a ``parallel`` tag through ``apply_all``.
Values only an earlier step produces (:class:`haplane.steps.Ref`: the endpoint
IP, a new VM's internal IP and self link, a learner's member id) are recorded
in ``Run.outputs`` after that step and resolved when a later step runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger

from blocks.cluster import ClusterSpec
from haplane.node import ApiServerSpec, EtcdSpec, RestoreSpec, peer_url
from haplane.plans import Plan
from haplane.steps import PlanStep, StepKind, resolve
from haplane.topology import ClusterNames, label_value
from tasks.cluster import (
    check_gone_from_gce,
    delete_spec,
    observe_cluster,
    publish_plan,
    record_deleted,
    record_replacement,
    record_stranded,
    save_spec,
    wait_api_ready,
    zones_of,
)
from tasks.compute import submit_create_vm, submit_delete_vm
from tasks.etcd import add_learner, move_leader_away, promote, remove_member, wait_cluster_version, wait_quorum
from tasks.network import (
    default_operator_ranges,
    firewall_rules,
    submit_delete_firewall,
    submit_delete_forwarding_rule,
    submit_delete_health_check,
    submit_delete_target_pool,
    submit_drop_access_config,
    submit_firewall,
    submit_forwarding_rule,
    submit_give_access_config,
    submit_health_check,
    submit_pool_remove,
    submit_release_address,
    submit_reserve_address,
    submit_target_pool,
)
from tasks.operations import Started, Step, apply, apply_all, finish, start
from tasks.pki import (
    delete_cluster_pki,
    delete_cluster_secrets,
    delete_replica_secrets,
    ensure_cluster_pki,
    submit_configure_replica,
)
from tasks.replace import plan_replacement
from tasks.snapshots import save_member_snapshot
from tasks.steps import Change


@dataclass
class Run:
    """One execution of a plan: the change, the cluster's spec, and what its steps produced."""

    change: Change
    spec: ClusterSpec
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    down_since: float | None = None  # the endpoint stopped answering (an IP move is under way)
    pending: dict[str, Started] = field(default_factory=dict)  # steps submitted with background=True

    @property
    def names(self) -> ClusterNames:
        return ClusterNames(self.change.cluster)


# --- GCE steps: a kind -> the checkpointed submit to apply ------------------------------------------


def _link(run: Run, zone: str, name: str) -> str:
    return run.change.gce().instance_link(zone, name)


def _configure(run: Run, s: PlanStep, a: dict[str, Any]) -> Step:
    initial = ",".join(f"{n}={peer_url(ip)}" for n, ip in a["initial_cluster"])
    etcd = EtcdSpec(
        name=a["name"],
        initial_cluster=initial,
        initial_cluster_state=a["cluster_state"],
        initial_cluster_token=a.get("token") or run.change.cluster,
    )
    api = ApiServerSpec(quorum_reads=run.spec.quorum_reads, service_cluster_ip_range=run.spec.service_cidr)
    # restore-cluster: the new member's etcd starts from this snapshot (url, snapshot id, sha256)
    restore = {"restore": RestoreSpec(*a["restore"])} if a.get("restore") else {}
    return Step(submit_configure_replica, s.id, s.text, (a["zone"], a["name"], a["endpoint_ip"], etcd, api), restore)


def _firewall(run: Run, s: PlanStep, a: dict[str, Any]) -> Step:
    """A cluster firewall rule; with no operator range in the spec, etcd's client port admits this
    worker's own egress address toward the endpoint IP (reserved by the step before)."""
    operator = run.spec.operator_ranges
    if not operator:
        operator = default_operator_ranges(run.change.gce().get_address(run.spec.region, run.names.address).address)
        get_run_logger().info(
            "etcd's client port admits this worker's egress %s (operator_ranges not given; give "
            "them when workers reach the VMs through NAT or from other hosts)",
            operator[0],
        )
    rule = firewall_rules(run.change.cluster, run.spec.api_source_ranges, operator)[a["name"]]
    return Step(submit_firewall, s.id, s.text, (a["name"], rule))


def _lb(submit: Callable, args: Callable[[dict], tuple]) -> Callable[[Run, PlanStep, dict], Step]:
    return lambda run, s, a: Step(submit, s.id, s.text, args(a), progress_key=f"{run.change.cluster}-load-balancer")


GCE: dict[StepKind, Callable[[Run, PlanStep, dict[str, Any]], Step]] = {
    StepKind.RESERVE_ADDRESS: lambda run, s, a: Step(submit_reserve_address, s.id, s.text, (a["region"],)),
    StepKind.FIREWALL: _firewall,
    StepKind.CREATE_VM: lambda run, s, a: Step(
        submit_create_vm,
        s.id,
        s.text,
        (
            a["zone"],
            a["name"],
            run.spec.machine_type,
            run.names.labels(run.spec.multizone, run.spec.quorum_reads),
            [run.names.tag],
            a["nat_ip"],
            run.spec.etcd_version,
            run.spec.kubernetes_version,
        ),
    ),
    StepKind.CONFIGURE: _configure,
    StepKind.HEALTH_CHECK: lambda run, s, a: Step(submit_health_check, s.id, s.text),
    StepKind.TARGET_POOL: lambda run, s, a: Step(
        submit_target_pool, s.id, s.text, (a["region"], [_link(run, z, n) for z, n in a["instances"]])
    ),
    StepKind.POOL_ADD: lambda run, s, a: Step(
        submit_target_pool, s.id, s.text, (a["region"], [_link(run, a["zone"], a["name"])])
    ),
    StepKind.RELEASE_IP: lambda run, s, a: Step(
        submit_drop_access_config, s.id, s.text, (a["zone"], a["name"]), {"only_if_ip": a["only_if_ip"]}
    ),
    StepKind.FORWARDING_RULE: _lb(submit_forwarding_rule, lambda a: (a["region"], a["ip"])),
    StepKind.EPHEMERAL_IP: lambda run, s, a: Step(submit_give_access_config, s.id, s.text, (a["zone"], a["name"])),
    StepKind.POOL_REMOVE: lambda run, s, a: Step(
        submit_pool_remove, s.id, s.text, (a["region"], a.get("link") or _link(run, a["zone"], a["name"]))
    ),  # link: a VM gone, its zone unknown
    StepKind.DELETE_FORWARDING_RULE: _lb(submit_delete_forwarding_rule, lambda a: (a["region"],)),
    StepKind.DROP_EPHEMERAL_IP: lambda run, s, a: Step(
        submit_drop_access_config, s.id, s.text, (a["zone"], a["name"]), {"unless_ip": a["unless_ip"]}
    ),
    StepKind.ENDPOINT_IP: lambda run, s, a: Step(
        submit_give_access_config, s.id, s.text, (a["zone"], a["name"]), {"nat_ip": a["ip"]}
    ),
    StepKind.DELETE_TARGET_POOL: lambda run, s, a: Step(submit_delete_target_pool, s.id, s.text, (a["region"],)),
    StepKind.DELETE_HEALTH_CHECK: lambda run, s, a: Step(submit_delete_health_check, s.id, s.text),
    StepKind.DELETE_VM: lambda run, s, a: Step(submit_delete_vm, s.id, s.text, (a["zone"], a["name"])),
    StepKind.RELEASE_ADDRESS: lambda run, s, a: Step(submit_release_address, s.id, s.text, (a["region"],)),
    StepKind.DELETE_FIREWALL: lambda run, s, a: Step(submit_delete_firewall, s.id, s.text, (a["name"],)),
}


# --- other steps: etcd, PKI, blocks ---------------------------------------------------------------


def _add_learner(run: Run, s: PlanStep, a: dict[str, Any]) -> dict[str, Any]:
    return {"member_id": add_learner(run.change, s.id, list(a["member_ips"]), a["ip"])}


def _delete_pki(run: Run, s: PlanStep) -> None:
    """The CA goes only once GCE holds nothing of the cluster (a wrong view must not cost the keys)."""
    check_gone_from_gce(run.change.cluster, run.spec.region, run.change.connection)
    # part of this step (no task run of its own): the secrets of any replica a lost VM left behind
    delete_cluster_secrets.fn(run.change)
    delete_cluster_pki(run.change.cluster, step=s.id)


def _upgrade_replica(run: Run, s: PlanStep, a: dict[str, Any]) -> None:
    """One replica of an upgrade replaced by one at the target versions (``run.spec``'s): a change of its
    own (``a["change"]``), planned on the cluster as observed now and run through this executor. Done
    already (the replica gone, its replacement a healthy voter): skipped. Not started yet: it waits
    for the cluster to be whole first (every replica healthy, no learner), as the upgrade's rules ask."""
    cluster, connection = run.change.cluster, run.change.connection
    sub = Change(cluster, a["change"], connection)
    state = observe_cluster(cluster, run.spec.region, connection)
    victim, new = state.replica(a["name"]), [r for r in state.vms if r.change == label_value(sub.change_id)]
    if victim is None and new and new[0].healthy and new[0].etcd_version == a["etcd_to"]:
        get_run_logger().info(
            "%s was replaced by %s (etcd %s) already: not again", a["name"], new[0].name, new[0].etcd_version
        )
        return None
    if victim is not None and not new:
        state = _wait_whole(run, a["name"], state)
    plan = plan_replacement(
        sub, run.spec, zones_of(run.spec.region, connection), a["name"], state, True, action="upgrade-replica"
    )
    publish_plan(plan, sub)
    execute(Run(sub, run.spec), plan)
    return None


def _wait_whole(run: Run, name: str, state: Any, timeout: float = 180.0) -> Any:
    """The cluster, once every replica is healthy and no learner is pending (between two replacements)."""
    from haplane.versions import VersionRefused, check_whole

    deadline = time.monotonic() + timeout
    while True:
        try:
            check_whole(state)
            return state
        except VersionRefused as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not replacing {name}: the cluster did not become whole in {timeout:.0f} s "
                    f"({exc}); nothing more was changed: look at the replica table, then resume "
                    f"with the same change_id"
                ) from None
        time.sleep(1.0)
        state = observe_cluster(run.change.cluster, run.spec.region, run.change.connection)


def _cluster_version(run: Run, s: PlanStep, a: dict[str, Any]) -> None:
    state = observe_cluster(run.change.cluster, run.spec.region, run.change.connection)
    wait_cluster_version(
        run.change.cluster,
        [r.internal_ip for r in state.voting if r.internal_ip],
        a["expect"],
        step=s.id,
        connection=run.change.connection,
    )


LOCAL: dict[StepKind, Callable[[Run, PlanStep, dict[str, Any]], dict[str, Any] | None]] = {
    StepKind.SAVE_SPEC: lambda run, s, a: save_spec(
        run.change.cluster, run.spec, step=s.id, settings=dict(a["settings"]) if "settings" in a else None
    ),
    StepKind.CREATE_PKI: lambda run, s, a: (
        ensure_cluster_pki(
            run.change.cluster, step=s.id, leaf_minutes=a.get("leaf_minutes"), connection=run.change.connection
        )
        and None
    ),
    StepKind.ADD_LEARNER: _add_learner,
    StepKind.PROMOTE: lambda run, s, a: promote(
        run.change, list(a["member_ips"]), a["member_id"], a["name"], step=s.id
    ),
    StepKind.WAIT_QUORUM: lambda run, s, a: wait_quorum(
        run.change.cluster, list(a["ips"]), expect_voting=a["voting"], step=s.id, connection=run.change.connection
    ),
    StepKind.MOVE_LEADER: lambda run, s, a: move_leader_away(
        run.change, list(a["member_ips"]), a["member_id"], a["name"], list(a["healthy_ids"]), step=s.id
    ),
    StepKind.REMOVE_MEMBER: lambda run, s, a: remove_member(
        run.change, s.id, list(a["member_ips"]), a["member_id"], a["name"]
    ),
    StepKind.DELETE_PKI: lambda run, s, a: _delete_pki(run, s),
    StepKind.DELETE_KEYS: lambda run, s, a: delete_replica_secrets(run.change, a["name"]) and None,
    StepKind.DELETE_SPEC: lambda run, s, a: delete_spec(run.change.cluster, step=s.id),
    StepKind.WAIT_API: lambda run, s, a: wait_api_ready(
        run.change.cluster, a["name"], a["ip"], step=s.id, connection=run.change.connection
    ),
    StepKind.AWAIT: lambda run, s, a: finish(run.change, run.pending.pop(a["step"]), s.id),
    StepKind.STRAND: lambda run, s, a: record_stranded(run.change.cluster, a["name"], a["zone"], step=s.id),
    StepKind.STRAND_REPLACED: lambda run, s, a: record_replacement(
        run.change.cluster, a["name"], a["replacement"], step=s.id
    ),
    StepKind.STRAND_DELETED: lambda run, s, a: record_deleted(run.change.cluster, list(a["names"]), step=s.id),
    StepKind.UPGRADE_REPLICA: _upgrade_replica,
    StepKind.CLUSTER_VERSION: _cluster_version,
    StepKind.SAVE_SNAPSHOT: lambda run, s, a: save_member_snapshot(run.change, s.id, run.spec, a["name"], a["ip"]),
}


# --- what a step produced, and the endpoint's downtime ------------------------------------------------


def _produced(run: Run, s: PlanStep, a: dict[str, Any]) -> dict[str, Any] | None:
    gce = run.change.gce()
    if s.kind is StepKind.RESERVE_ADDRESS:
        return {"ip": gce.get_address(a["region"], run.names.address).address}
    if s.kind is StepKind.CREATE_VM:
        vm = gce.get_instance(a["zone"], a["name"])
        return {"internal_ip": vm.internal_ip, "self_link": vm.self_link}
    return None


def _before(run: Run, s: PlanStep) -> None:
    if s.kind in (StepKind.RELEASE_IP, StepKind.DELETE_FORWARDING_RULE) and run.down_since is None:
        run.down_since = time.monotonic()


def _after(run: Run, s: PlanStep, a: dict[str, Any]) -> None:
    logger = get_run_logger()
    if s.kind is StepKind.RELEASE_IP:
        logger.warning("endpoint %s is down until the load balancer answers", a["only_if_ip"])
    elif s.kind is StepKind.DELETE_FORWARDING_RULE and run.down_since is not None:
        logger.warning("the load balancer is gone: the endpoint is down until a replica carries its IP")
    elif s.kind is StepKind.DELETE_VM:  # its private keys go with it, as part of the step
        delete_replica_secrets.fn(run.change, a["name"])
    elif s.kind in (StepKind.FORWARDING_RULE, StepKind.ENDPOINT_IP) and run.down_since is not None:
        downtime = time.monotonic() - run.down_since
        run.figures["endpoint_downtime_s"] = downtime
        run.down_since = None
        logger.info("endpoint %s answers again; it was down %.1f s", a["ip"], downtime)


# --- the executor -------------------------------------------------------------------------------------


def groups(steps: tuple[PlanStep, ...]) -> list[list[PlanStep]]:
    """Consecutive steps with one ``parallel`` tag form a group; every other step is a group of one."""
    out: list[list[PlanStep]] = []
    for s in steps:
        if out and s.parallel is not None and out[-1][-1].parallel == s.parallel:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def execute(run: Run, plan: Plan) -> dict[str, float]:
    """Run the plan's steps in order (a group side by side); returns measured figures."""
    for group in groups(plan.steps):
        resolved = [(s, {k: resolve(v, run.outputs) for k, v in s.args}) for s in group]
        for s, _ in resolved:
            _before(run, s)
        if len(group) > 1 and all(s.kind in GCE for s in group):
            apply_all(run.change, [GCE[s.kind](run, s, a) for s, a in resolved])
        else:
            for s, a in resolved:
                if s.kind in GCE and a.get("background"):  # submitted now, waited for by a later AWAIT step
                    run.pending[s.id] = start(run.change, GCE[s.kind](run, s, a))
                elif s.kind in GCE:
                    apply(run.change, GCE[s.kind](run, s, a))
                else:
                    produced = LOCAL[s.kind](run, s, a)
                    if produced:
                        run.outputs[s.id] = produced
        for s, a in resolved:
            produced = _produced(run, s, a)
            if produced:
                run.outputs[s.id] = produced
            _after(run, s, a)
    return run.figures
