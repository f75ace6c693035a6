"""The flows' decisions, pure: plans from observed state (haplane/core/plans.py) and placement and naming
rules (haplane/core/topology.py). No I/O."""

from __future__ import annotations

import pytest

from haplane.core.model import ClusterState, ReplicaState
from haplane.core.plans import (
    PlanRefused,
    choose_victim,
    member_health,
    plan_add,
    plan_create,
    plan_delete,
    plan_delete_stranded,
    plan_remove,
    plan_removed,
    plan_replace,
)
from haplane.core.quorum import Reason
from haplane.core.steps import StepKind
from haplane.core.topology import (
    TopologyError,
    check_cluster_name,
    check_cluster_size,
    check_zones,
    label_value,
    next_zones,
    replica_name,
)

REGION = "us-central1"
KNOWN = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]


def replica(i: int, zone: str, **kw) -> ReplicaState:
    base = dict(
        name=f"c-master-{i}",
        zone=zone,
        vm_status="RUNNING",
        internal_ip=f"127.10.0.{i + 2}",
        external_ip=f"127.20.0.{i + 2}",
        change="create-1",
        member_id=100 + i,
        started=True,
        etcd_ok=True,
        api_ready=True,
        leader=i == 0,
    )
    base.update(kw)
    return ReplicaState(**base)


def cluster(
    *replicas: ReplicaState, lb: bool | None = None, endpoint: str = "127.30.0.2", address_status: str = "IN_USE"
) -> ClusterState:
    lb = len(replicas) > 1 if lb is None else lb
    return ClusterState(
        cluster="c",
        region=REGION,
        replicas=tuple(replicas),
        endpoint_ip=endpoint,
        address_status=address_status,
        load_balancer=lb,
        target_pool=lb,
    )


ONE = cluster(replica(0, "us-central1-a", external_ip="127.30.0.2"))
THREE = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b"), replica(2, "us-central1-c"))
DEAD = dict(etcd_ok=False, api_ready=False)


# --- topology -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zones", "existing", "count", "expected"),
    [
        (["a", "b", "c"], [], 3, ["a", "b", "c"]),
        (["a", "b", "c"], [], 5, ["a", "b", "c", "a", "b"]),
        (["a", "b", "c"], ["a", "a", "b"], 1, ["c"]),
        (["a", "b", "c"], ["a", "b", "c"], 1, ["a"]),  # ties go to the zone listed first
        (["a", "b"], ["x", "a"], 2, ["b", "a"]),  # a replica outside the zones does not count
    ],
)
def test_next_zones_fills_the_zone_with_the_fewest_replicas_first(zones, existing, count, expected):
    assert next_zones(zones, existing, count) == expected


def test_zones_must_be_known_zones_of_the_region():
    assert check_zones(REGION, ["us-central1-b", "us-central1-a", "us-central1-b"], KNOWN) == [
        "us-central1-b",
        "us-central1-a",
    ]
    with pytest.raises(TopologyError, match="not a zone of region 'us-central1'"):
        check_zones(REGION, ["europe-west1-b"], KNOWN)


@pytest.mark.parametrize(
    ("size", "words"), [(2, "worse than one"), (4, "even count"), (0, "at least 1"), (9, "maximum of 7")]
)
def test_sizes_other_than_1_3_5_7_are_refused_with_a_reason(size, words):
    with pytest.raises(TopologyError, match=words):
        check_cluster_size(size)
    for ok in (1, 3, 5, 7):
        check_cluster_size(ok)


@pytest.mark.parametrize("name", ["Prod", "1abc", "a_b", "a-", "x" * 31, ""])
def test_bad_cluster_names_are_refused(name):
    with pytest.raises(TopologyError, match="not valid"):
        check_cluster_name(name)


def test_names_are_fixed_by_the_change_and_labels_are_gce_safe():
    assert replica_name("c", "add-1", 0) == replica_name("c", "add-1", 0)
    assert replica_name("c", "add-1", 0) != replica_name("c", "add-2", 0)
    assert label_value("Replace-ABC/1.x") == "replace-abc-1-x"
    assert len(label_value("x" * 100)) == 63


# --- create ---------------------------------------------------------------------------------------


def test_create_three_spreads_over_zones_with_a_load_balancer():
    plan = plan_create("c", REGION, KNOWN[:3], 3, "create-1", KNOWN, None)
    assert [z for _, z in plan.new_replicas] == KNOWN[:3]
    assert plan.lb == "create" and plan.voting_before == 0 and plan.voting_after == 3
    assert any("forwarding rule" in s for s in plan.texts)
    assert plan.expected_seconds > 1200  # the seed's 20-minute load balancer is in the estimate


def test_create_one_puts_the_endpoint_ip_on_the_vm():
    plan = plan_create("c", REGION, KNOWN[:3], 1, "create-1", KNOWN, None)
    assert plan.lb == "none" and len(plan.new_replicas) == 1
    assert any("endpoint IP as its external IP" in s for s in plan.texts)


def test_create_refuses_an_existing_cluster_but_resumes_its_own_change():
    with pytest.raises(PlanRefused, match="already exists.*change_id='create-1'"):
        plan_create("c", REGION, KNOWN[:3], 3, "create-2", KNOWN, THREE)
    assert plan_create("c", REGION, KNOWN[:3], 3, "create-1", KNOWN, THREE).new_replicas


# --- add ------------------------------------------------------------------------------------------


def test_add_to_one_creates_the_load_balancer_and_passes_through_two():
    plan = plan_add(ONE, None, "add-1", KNOWN, ["us-central1-a", "us-central1-b", "us-central1-c"])
    assert plan.zone == "us-central1-b" and plan.lb == "create"
    assert plan.voting_before == 1 and plan.voting_after == 2 and "even count" in plan.even_note
    order = " | ".join(plan.texts)
    assert order.index("learner") < order.index("initial-cluster-state=existing") < order.index("promote")
    assert order.index("target pool") < order.index("take the endpoint IP off") < order.index("forwarding rule")


def test_add_goes_to_the_least_used_of_the_clusters_zones_or_a_named_one():
    assert plan_add(THREE, None, "add-1", KNOWN, KNOWN[:3]).zone == "us-central1-a"
    assert plan_add(THREE, None, "add-1", KNOWN).zone == "us-central1-f"  # no spec: any zone of the region
    plan = plan_add(THREE, "us-central1-c", "add-1", KNOWN, KNOWN[:3])
    assert plan.zone == "us-central1-c" and plan.lb == "extend" and plan.voting_after == 4
    with pytest.raises(TopologyError, match="not a zone of region"):
        plan_add(THREE, "europe-west1-b", "add-1", KNOWN)


def test_add_is_refused_while_another_add_is_unfinished_but_its_own_change_resumes():
    learning = cluster(*THREE.replicas, replica(3, "us-central1-f", learner=True, change="add-7"))
    with pytest.raises(PlanRefused, match="still being added.*change_id='add-7'"):
        plan_add(learning, None, "add-8", KNOWN)
    plan = plan_add(learning, None, "add-7", KNOWN)
    assert plan.replica == "c-master-3" and plan.zone == "us-central1-f" and "resuming" in plan.reason


def test_add_is_refused_while_a_voter_is_down():
    sick = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c"))
    with pytest.raises(PlanRefused, match="cannot add"):
        plan_add(sick, None, "add-1", KNOWN)


def test_an_interrupted_one_to_two_move_is_finished_on_resume():
    # the forwarding rule exists but the first replica has no external IP yet
    moved = cluster(replica(0, "us-central1-a", external_ip=None), replica(1, "us-central1-b", change="add-1"), lb=True)
    plan = plan_add(moved, None, "add-1", KNOWN)
    assert plan.replica == "c-master-1" and plan.lb == "create"


# --- remove ---------------------------------------------------------------------------------------


def test_remove_by_zone_prefers_an_unhealthy_then_a_non_leader():
    two_in_a = cluster(
        replica(0, "us-central1-a"),
        replica(1, "us-central1-a"),
        replica(2, "us-central1-b"),
        replica(3, "us-central1-c", **DEAD),
        replica(4, "us-central1-c"),
    )
    assert choose_victim(two_in_a, "us-central1-a", None).name == "c-master-1"  # c-master-0 leads
    assert choose_victim(two_in_a, "us-central1-c", None).name == "c-master-3"  # the dead one


def test_remove_drains_the_pool_then_moves_leadership_and_shrinks():
    plan = plan_remove(THREE, "us-central1-a", None)
    assert plan.replica == "c-master-0" and plan.texts[0].startswith("take c-master-0 out of the target pool")
    assert plan.texts[1].startswith("move etcd leadership away")
    assert plan.lb == "shrink" and plan.voting_after == 2 and "even count" in plan.even_note
    steps = " | ".join(plan.texts)
    assert steps.index("target pool") < steps.index("remove c-master-0 from etcd") < steps.index("delete VM")


def test_two_to_one_hands_the_ip_back():
    two = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b"))
    plan = plan_remove(two, "us-central1-b", None)
    assert plan.lb == "delete" and plan.voting_after == 1 and not plan.even_note
    assert any("give c-master-0 the endpoint IP" in s for s in plan.texts)


def test_a_resumed_two_to_one_still_hands_the_ip_back():
    # the forwarding rule and pool are gone, the IP is reserved, the victim's VM is still there
    half = cluster(
        replica(0, "us-central1-a"), replica(1, "us-central1-b", member_id=None), lb=False, address_status="RESERVED"
    )
    assert plan_remove(half, "us-central1-b", None).lb == "delete"


def test_a_removal_resumed_once_its_replica_is_gone_deletes_it_again_and_nothing_else():
    # its run was killed while the VM was being deleted: VM and etcd member gone, its keys not yet
    two = cluster(replica(0, "us-central1-a"), replica(2, "us-central1-c"))
    plan = plan_removed(two, "c-master-1", "us-central1-b", prefix="remove/")
    assert plan.ids == ("remove/delete-vm/c-master-1", "remove/delete-keys/c-master-1") and plan.voting_after == 2
    assert plan.steps[0].arguments == {"zone": "us-central1-b", "name": "c-master-1"}
    assert plan.steps[1].arguments == {"name": "c-master-1"}
    # its VM was gone before the removal started: its private keys are still deleted
    assert plan_removed(two, "c-master-1", "?").ids == ("delete-keys/c-master-1",)
    with pytest.raises(PlanRefused, match="still in"):
        plan_removed(THREE, "c-master-1", "us-central1-b")


def test_a_replica_whose_vm_is_gone_has_its_member_and_keys_removed():
    lost = replica(1, "?", vm_status="MISSING", internal_ip="", external_ip="", etcd_ok=False, api_ready=False)
    state = cluster(replica(0, "us-central1-a"), lost, replica(2, "us-central1-c"))
    plan = plan_remove(state, "?", "c-master-1", mode="always")
    assert plan.ids[-1] == "delete-keys/c-master-1" and "member/c-master-1" in plan.ids
    assert not [i for i in plan.ids if i.startswith("delete-vm/")]
    assert plan.steps[-1].arguments == {"name": "c-master-1"}


@pytest.mark.parametrize(
    ("state", "zone", "name", "words"),
    [
        (ONE, "us-central1-a", None, "last replica"),
        (THREE, "us-central1-f", None, "no replica in zone"),
        (THREE, "us-central1-a", "nosuch", "no replica named 'nosuch'"),
        (THREE, "us-central1-b", "c-master-0", "is in zone us-central1-a"),
        (
            cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c")),
            "us-central1-c",
            None,
            "below the quorum",
        ),
    ],
)
def test_remove_refusals(state, zone, name, words):
    with pytest.raises(PlanRefused, match=words):
        plan_remove(state, zone, name)


# --- replace --------------------------------------------------------------------------------------


def test_replace_removes_first_then_adds_in_the_same_zone():
    sick = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c"))
    removal, addition = plan_replace(sick, "c-master-1", "replace-1", KNOWN)
    assert removal.replica == "c-master-1" and removal.voting_after == 2
    assert addition.zone == "us-central1-b" and addition.voting_before == 2 and addition.voting_after == 3
    assert addition.lb == "extend"


def test_replace_is_refused_when_quorum_would_be_lost():
    lost = cluster(
        replica(0, "us-central1-a", **DEAD), replica(1, "us-central1-b", **DEAD), replica(2, "us-central1-c")
    )
    with pytest.raises(PlanRefused, match="cannot replace"):
        plan_replace(lost, "c-master-0", "replace-1", KNOWN)


def test_member_health_marks_unreachable_members_and_learners():
    state = cluster(
        replica(0, "us-central1-a"),
        replica(1, "us-central1-b", **DEAD),
        replica(2, "us-central1-c", learner=True),
        replica(3, "us-central1-f", member_id=None),
    )
    health = {m.name: m for m in member_health(state)}
    assert set(health) == {"c-master-0", "c-master-1", "c-master-2"}  # a VM that is no member is not counted
    assert health["c-master-0"].healthy and Reason.UNREACHABLE in health["c-master-1"].reasons
    assert not health["c-master-2"].voting


# --- plans are data; step ids are a versioned schema ----------------------------------------------------

TWO = cluster(replica(0, "us-central1-a"), replica(1, "us-central1-b"))

# Step ids are checkpoint keys and requestId seeds: a change in flight after an upgrade finds its
# checkpoints only if they stay the same. Changing any of these is a deliberate act: bump
# haplane.core.steps.STEP_SCHEMA (a change recorded under another schema is then refused) and update this table.
PINNED_SCHEMA = 2
PINNED = {
    "create 3": (
        lambda: plan_create("c", REGION, KNOWN[:3], 3, "create-1", KNOWN, None),
        (
            "spec",
            "pki",
            "address",
            "firewall/c-etcd-peer",
            "firewall/c-etcd-client",
            "firewall/c-apiserver",
            "health-check",
            "target-pool",
            "forwarding-rule",
            "vm/c-master-f4cdf",
            "vm/c-master-66d92",
            "vm/c-master-62567",
            "configure/c-master-f4cdf",
            "configure/c-master-66d92",
            "configure/c-master-62567",
            "quorum",
            "api-ready/c-master-f4cdf",
            "api-ready/c-master-66d92",
            "api-ready/c-master-62567",
            "pool-members",
            "forwarding-rule/wait",
        ),
    ),
    "create 1 (always)": (
        lambda: plan_create("c", REGION, KNOWN[:3], 1, "create-1", KNOWN, None, "always"),
        (
            "spec",
            "pki",
            "address",
            "firewall/c-etcd-peer",
            "firewall/c-etcd-client",
            "firewall/c-apiserver",
            "health-check",
            "target-pool",
            "forwarding-rule",
            "vm/c-master-f4cdf",
            "configure/c-master-f4cdf",
            "quorum",
            "api-ready/c-master-f4cdf",
            "pool-members",
            "forwarding-rule/wait",
        ),
    ),
    "create 1 (as-needed)": (
        lambda: plan_create("c", REGION, KNOWN[:3], 1, "create-1", KNOWN, None),
        (
            "spec",
            "pki",
            "address",
            "firewall/c-etcd-peer",
            "firewall/c-etcd-client",
            "firewall/c-apiserver",
            "vm/c-master-f4cdf",
            "configure/c-master-f4cdf",
            "quorum",
        ),
    ),
    "add 1->2": (
        lambda: plan_add(ONE, None, "add-1", KNOWN, KNOWN[:3]),
        (
            "vm/c-master-4c643",
            "learner/c-master-4c643",
            "configure/c-master-4c643",
            "promote/c-master-4c643",
            "quorum/c-master-4c643",
            "health-check",
            "target-pool",
            "release-ip/c-master-0",
            "forwarding-rule",
            "ephemeral-ip/c-master-0",
        ),
    ),
    "add 2->3": (
        lambda: plan_add(TWO, None, "add-2", KNOWN, KNOWN[:3]),
        (
            "vm/c-master-c922a",
            "learner/c-master-c922a",
            "configure/c-master-c922a",
            "promote/c-master-c922a",
            "quorum/c-master-c922a",
            "api-ready/c-master-c922a",
            "pool-add/c-master-c922a",
        ),
    ),
    "remove 3->2": (
        lambda: plan_remove(THREE, "us-central1-a", None),
        (
            "pool-remove/c-master-0",
            "move-leader/c-master-0",
            "member/c-master-0",
            "quorum/c-master-0",
            "delete-vm/c-master-0",
            "delete-keys/c-master-0",
        ),
    ),
    "remove 2->1 (always)": (
        lambda: plan_remove(TWO, "us-central1-b", None, mode="always"),
        (
            "pool-remove/c-master-1",
            "member/c-master-1",
            "quorum/c-master-1",
            "delete-vm/c-master-1",
            "delete-keys/c-master-1",
        ),
    ),
    "remove 2->1": (
        lambda: plan_remove(TWO, "us-central1-b", None),
        (
            "member/c-master-1",
            "quorum/c-master-1",
            "delete-forwarding-rule",
            "drop-ephemeral/c-master-0",
            "endpoint-ip/c-master-0",
            "delete-target-pool",
            "delete-health-check",
            "delete-vm/c-master-1",
            "delete-keys/c-master-1",
        ),
    ),
    "replace": (
        lambda: plan_replace(THREE, "c-master-1", "replace-1", KNOWN, KNOWN[:3]),
        (
            "remove/pool-remove/c-master-1",
            "remove/member/c-master-1",
            "remove/quorum/c-master-1",
            "remove/delete-vm/c-master-1",
            "remove/delete-keys/c-master-1",
            "add/vm/c-master-fc142",
            "add/learner/c-master-fc142",
            "add/configure/c-master-fc142",
            "add/promote/c-master-fc142",
            "add/quorum/c-master-fc142",
            "add/api-ready/c-master-fc142",
            "add/pool-add/c-master-fc142",
        ),
    ),
}


@pytest.mark.parametrize("case", list(PINNED))
def test_step_ids_are_pinned(case):
    from haplane.core.steps import STEP_SCHEMA

    make, ids = PINNED[case]
    plan = make()
    if isinstance(plan, tuple):
        plan = plan[0].then(plan[1], "replace-replica")
    assert STEP_SCHEMA == PINNED_SCHEMA, "the step schema changed: update PINNED to what the plans produce now"
    assert plan.ids == ids


def test_the_dry_run_text_is_the_step_list():
    plan = plan_add(ONE, None, "add-1", KNOWN, KNOWN[:3])
    text = plan.markdown()
    for i, s in enumerate(plan.steps, 1):
        assert f"{i}. {s.text} (`{s.id}`)" in text
    # the seed's join order, with the certificates written after the learner is added (as the run does)
    kinds = [s.kind.value for s in plan.steps[:5]]
    assert kinds == ["create-vm", "add-learner", "configure", "promote", "wait-quorum"]


def test_values_produced_by_earlier_steps_are_explicit_references():
    from haplane.core.steps import Ref, resolve

    plan = plan_add(ONE, None, "add-1", KNOWN, KNOWN[:3])
    vm, learner, configure, promote = plan.steps[:4]
    assert learner.arguments["ip"] == Ref(vm.id, "internal_ip")
    assert promote.arguments["member_id"] == Ref(learner.id, "member_id")
    assert configure.arguments["initial_cluster"][-1] == (vm.arguments["name"], Ref(vm.id, "internal_ip"))
    assert resolve(configure.arguments["initial_cluster"], {vm.id: {"internal_ip": "127.1.2.3"}})[-1][1] == "127.1.2.3"
    with pytest.raises(KeyError, match="has not produced it"):
        resolve(promote.arguments["member_id"], {})


def test_a_plan_whose_reference_points_nowhere_is_a_bug():
    from haplane.core.plans import Plan
    from haplane.core.steps import Ref, StepKind, step

    with pytest.raises(ValueError, match="which no earlier step produces"):
        Plan(
            "x",
            "c",
            (step(StepKind.PROMOTE, "promote/x", "promote", member_id=Ref("learner/x", "member_id")),),
            1,
            2,
            0.0,
        )


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("remove 3->2", lambda: plan_remove(THREE, "us-central1-a", None)),
        (
            "remove a member whose VM is gone",
            lambda: plan_remove(
                cluster(
                    replica(0, "us-central1-a"),
                    replica(1, "us-central1-b"),
                    replica(2, "?", vm_status="MISSING", internal_ip="", etcd_ok=False, api_ready=False, leader=False),
                ),
                "?",
                "c-master-2",
            ),
        ),
    ],
)
def test_removal_steps_follow_the_remove_order(case, make):
    """Out of the pool -> leadership away -> member removed -> VM deleted (or, for a VM that is gone, its
    keys); no pool or VM step for a VM that is gone."""
    kinds = [s.kind.value for s in make().steps]
    order = ["pool-remove", "move-leader", "remove-member", "wait-quorum", "delete-vm", "delete-keys"]
    assert kinds == [k for k in order if k in kinds]
    if case.startswith("remove a member"):
        assert "delete-vm" not in kinds and "pool-remove" not in kinds


# --- the plan says what the run does -------------------------------------------------------------------


def _stranded_two() -> tuple[ClusterState, list[tuple[str, str]]]:
    state = cluster(
        replica(0, "us-central1-a"), replica(1, "us-central1-b", member_id=None), replica(2, "us-central1-c")
    )
    return state, [("c-master-1", "us-central1-b")]


DELETES_VMS = {
    "remove 3->2": lambda: plan_remove(THREE, "us-central1-a", None),
    "remove 2->1": lambda: plan_remove(TWO, "us-central1-b", None),
    "removal resumed": lambda: plan_removed(TWO_OF_THREE, "c-master-1", "us-central1-b", prefix="remove/"),
    "replace": lambda: plan_replace(THREE, "c-master-1", "replace-1", KNOWN, KNOWN[:3])[0],
    "stranded": lambda: plan_delete_stranded(*_stranded_two()),
}
TWO_OF_THREE = cluster(replica(0, "us-central1-a"), replica(2, "us-central1-c"))


@pytest.mark.parametrize("case", list(DELETES_VMS))
def test_a_deleted_vms_private_keys_are_a_step_after_it(case):
    """The run deletes a replica's keys in Secret Manager when it deletes its VM: the dry run lists that
    step (``delete-keys/<name>``, after the VM's deletion), the run does not do it on the side."""
    steps = DELETES_VMS[case]().steps
    vms = [(i, s.arguments["name"]) for i, s in enumerate(steps) if s.kind is StepKind.DELETE_VM]
    assert vms
    for i, name in vms:
        keys = [s for s in steps[i + 1 :] if s.kind is StepKind.DELETE_KEYS and s.arguments["name"] == name]
        assert len(keys) == 1 and keys[0].id.endswith(f"delete-keys/{name}"), [s.id for s in steps]


def test_delete_cluster_checks_gce_is_empty_before_the_keys_and_cas_go():
    """delete-cluster: every GCE deletion, then the footprint check, then the secrets, the CAs, the spec;
    each a step of its own (the check failing stops the run before anything that cannot be had back)."""
    plan = plan_delete(THREE)
    kinds = [s.kind for s in plan.steps]
    tail = [StepKind.CHECK_GONE, StepKind.DELETE_CLUSTER_KEYS, StepKind.DELETE_PKI, StepKind.DELETE_SPEC]
    assert kinds[-4:] == tail
    assert plan.ids[-4:] == ("gone-from-gce", "keys", "pki", "spec")
    assert not set(kinds[:-4]) & set(tail) and StepKind.DELETE_VM in kinds[:-4]


def test_every_step_kind_has_a_handler():
    from haplane.core.steps import StepKind
    from tasks.kinds import registry

    assert set(registry()) == set(StepKind)


def test_side_by_side_steps_are_grouped_and_nothing_else():
    """create 3: the address, then the three firewall rules (they may admit the worker's egress toward the
    address), the health check, then the three VMs, then the
    three configurations run side by side; every other step alone, in plan order (the forwarding rule is
    submitted alone and waited for by the last step)."""
    from tasks.execute import groups

    plan = plan_create("c", REGION, KNOWN[:3], 3, "create-1", KNOWN, None)
    shape = [(g[0].kind.value, len(g)) for g in groups(plan.steps)]
    assert shape == [
        ("save-spec", 1),
        ("create-pki", 1),
        ("reserve-address", 1),
        ("firewall", 3),
        ("health-check", 1),
        ("target-pool", 1),
        ("forwarding-rule", 1),
        ("create-vm", 3),
        ("configure", 3),
        ("wait-quorum", 1),
        ("wait-api", 1),
        ("wait-api", 1),
        ("wait-api", 1),
        ("target-pool", 1),
        ("await", 1),
    ]
    assert [s.id for g in groups(plan.steps) for s in g] == list(plan.ids)


def test_what_a_run_does_before_its_own_steps_is_at_the_head_of_its_plan():
    """The keys of an old PKI block moved (or a missing one made) and a membership change's snapshot are steps
    of the plan, before its first change; every id of the plan's own steps stays as it was."""
    from haplane.core.plans import with_preamble

    add = plan_add(ONE, None, "add-1", KNOWN, KNOWN[:3])
    plan = with_preamble(add, ("snapshot", "sa"))
    assert plan.ids == ("complete-keys", "snapshot-before", *add.ids)
    assert [s.kind for s in plan.steps[:2]] == [StepKind.COMPLETE_KEYS, StepKind.SNAPSHOT_BEFORE]
    assert "snapshot, sa" in plan.steps[0].text
    assert with_preamble(add, (), snapshot=False) == add  # skip_snapshot, keys complete: nothing before
    assert with_preamble(add).ids == ("snapshot-before", *add.ids)
    create = plan_create("c", REGION, KNOWN[:3], 3, "create-1", KNOWN, None)
    assert with_preamble(create).ids == create.ids  # not a membership change: no snapshot
    nothing = plan_remove(THREE, "us-central1-a", None)
    empty = type(nothing)(**{**nothing.__dict__, "steps": ()})
    assert with_preamble(empty).ids == ()  # a plan that changes nothing takes no snapshot
