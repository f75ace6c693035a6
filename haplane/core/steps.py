"""The steps a plan is made of: typed, with stable ids. Pure: standard library only.

A plan (:mod:`haplane.core.plans`) is a tuple of :class:`PlanStep`. The dry-run
text, the plan artifact and the run all come from that one tuple: the flows
hand it to one executor (``tasks/execute.py``; each kind's handler is a module of ``tasks/kinds/``),
so what a plan says and what a run does cannot drift apart.

**Step ids are a persistence schema.** A step's id is its checkpoint key in
Prefect's result store and the seed of its GCE ``requestId``. Renaming one
orphans the checkpoints of a change in flight: a resumed run would not find
them and would send its GCE calls again. So the ids a plan produces are
pinned by tests (tests/unit/test_plans.py), and any change to them must come with
a new :data:`STEP_SCHEMA`. A change records the schema it started with; a
resumed change whose recorded schema differs is refused before any call.

A value only an earlier step produces (a new VM's internal IP, the etcd
member id of a learner just added, the endpoint IP just reserved) is a
:class:`Ref` to that step's named output, resolved by the executor when the
step runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# bump when any step id a plan produces changes (and say why in the commit); a step added where a plan
# had none (the "delete-keys/<name>" of a replica whose VM is gone) leaves every earlier checkpoint found
# 2: create-cluster builds the load balancer beside the VMs ("forwarding-rule/wait", "api-ready/<name>",
#    "pool-members"); add-replica waits for the API server before the pool ("api-ready/<name>")
STEP_SCHEMA = 2


class StepKind(StrEnum):
    SAVE_SPEC = "save-spec"
    CREATE_PKI = "create-pki"
    RESERVE_ADDRESS = "reserve-address"
    FIREWALL = "firewall"
    CREATE_VM = "create-vm"
    ADD_LEARNER = "add-learner"
    CONFIGURE = "configure"  # issue the replica's certificates, write its etcd/API-server settings
    PROMOTE = "promote"
    WAIT_QUORUM = "wait-quorum"
    HEALTH_CHECK = "health-check"
    TARGET_POOL = "target-pool"
    POOL_ADD = "pool-add"
    RELEASE_IP = "release-ip"  # take the endpoint IP off the first replica (1 -> 2)
    FORWARDING_RULE = "forwarding-rule"
    EPHEMERAL_IP = "ephemeral-ip"  # a new ephemeral external IP for the first replica (1 -> 2)
    MOVE_LEADER = "move-leader"
    REMOVE_MEMBER = "remove-member"
    POOL_REMOVE = "pool-remove"
    DELETE_FORWARDING_RULE = "delete-forwarding-rule"
    DROP_EPHEMERAL_IP = "drop-ephemeral-ip"  # the last replica's ephemeral IP goes (2 -> 1)
    ENDPOINT_IP = "endpoint-ip"  # the endpoint IP back on the last replica (2 -> 1)
    DELETE_TARGET_POOL = "delete-target-pool"
    DELETE_HEALTH_CHECK = "delete-health-check"
    DELETE_VM = "delete-vm"
    DELETE_KEYS = "delete-keys"  # a replica's private keys in Secret Manager, once its VM is deleted or gone
    RELEASE_ADDRESS = "release-address"
    DELETE_FIREWALL = "delete-firewall"
    CHECK_GONE = "check-gone"  # delete-cluster: GCE holds nothing of the cluster (else what follows does not run)
    DELETE_CLUSTER_KEYS = "delete-cluster-keys"  # every secret of the cluster in Secret Manager
    DELETE_PKI = "delete-pki"
    DELETE_SPEC = "delete-spec"
    WAIT_API = "wait-api"  # until the replica's API server is ready (it would pass the pool's check)
    AWAIT = "await"  # wait for a step submitted earlier with background=True (the forwarding rule)
    STRAND = "strand"  # record a dead zone's VM as stranded in the spec (before its member goes)
    STRAND_REPLACED = "strand-replaced"  # record the replica added for a stranded VM
    STRAND_DELETED = "strand-deleted"  # record stranded VMs as deleted (their zone answered)
    UPGRADE_REPLICA = "upgrade-replica"  # replace one replica with one at the target versions (its own plan)
    CLUSTER_VERSION = "cluster-version"  # wait for etcd's cluster version to be the one expected
    SAVE_SNAPSHOT = "save-snapshot"  # a verified snapshot of one member's local store (no quorum needed)
    # the head of a plan (haplane.core.plans.with_preamble)
    COMPLETE_KEYS = "complete-keys"  # keys of an old PKI block moved to Secret Manager, missing ones made
    SNAPSHOT_BEFORE = "snapshot-before"  # a membership change's verified snapshot, before its first step
    GROW = "grow"  # restore-cluster: one replica more through add-replica's path (a change of its own)
    # rotate-certificates (haplane.core.rotation.plan_rotation)
    START_CA_ROTATION = "start-ca-rotation"  # new CAs in the PKI block beside the current ones
    DELIVER_TRUST = "deliver-trust"  # a replica's trust bundle: both CAs, or the new ones alone
    WAIT_TRUST = "wait-trust"  # until the replica's etcd takes up its trust bundle
    SWITCH_CAS = "switch-cas"  # the new CAs sign from now on
    RENEW_OPERATOR = "renew-operator"  # a new operator etcd client certificate in the PKI block
    REISSUE_LEAVES = "reissue-leaves"  # new keys and certificates for one replica
    WAIT_SERVING = "wait-serving"  # until the replica serves the certificates in its metadata
    FINISH_CA_ROTATION = "finish-ca-rotation"  # the old CAs and their keys deleted
    ROTATE_SERVICE_ACCOUNT = "rotate-service-account"  # a new service-account signing key
    DELIVER_SERVICE_ACCOUNT = "deliver-service-account"  # the service-account keys to one replica


# Steps that destroy something that cannot be had back: refused on an unknown view (haplane.core.plans).
DESTRUCTIVE = frozenset(
    {
        StepKind.REMOVE_MEMBER,
        StepKind.DELETE_VM,
        StepKind.DELETE_KEYS,
        StepKind.RELEASE_ADDRESS,
        StepKind.DELETE_CLUSTER_KEYS,
        StepKind.DELETE_PKI,
    }
)

# The named outputs a step of each kind produces, for later steps to refer to.
OUTPUTS: dict[StepKind, tuple[str, ...]] = {
    StepKind.RESERVE_ADDRESS: ("ip",),
    StepKind.CREATE_VM: ("internal_ip", "self_link"),
    StepKind.ADD_LEARNER: ("member_id",),
    StepKind.SAVE_SNAPSHOT: ("where", "snapshot_id", "sha256", "revision"),
}


@dataclass(frozen=True)
class Ref:
    """The named output of an earlier step of the same plan."""

    step: str
    output: str

    def __str__(self) -> str:
        return f"<{self.output} of {self.step}>"


@dataclass(frozen=True)
class PlanStep:
    kind: StepKind
    id: str  # stable: the checkpoint key and the requestId seed (see the module doc)
    text: str  # what a person reads in the dry run and the plan artifact
    args: tuple[tuple[str, Any], ...] = ()  # arguments known at planning time (values or Refs)
    parallel: str | None = None  # consecutive steps with the same tag run side by side

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.args)

    def refs(self) -> Iterator[Ref]:
        yield from _refs([v for _, v in self.args])


def _refs(value: Any) -> Iterator[Ref]:
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _refs(v)


def step(kind: StepKind, id: str, text: str, parallel: str | None = None, **args: Any) -> PlanStep:
    return PlanStep(kind, id, text, tuple(args.items()), parallel)


def resolve(value: Any, outputs: dict[str, dict[str, Any]]) -> Any:
    """``value`` with every :class:`Ref` replaced by the output it names (KeyError if not produced yet)."""
    if isinstance(value, Ref):
        produced = outputs.get(value.step)
        if produced is None or value.output not in produced:
            raise KeyError(f"step output {value} is needed but that step has not produced it")
        return produced[value.output]
    if isinstance(value, tuple):
        return tuple(resolve(v, outputs) for v in value)
    if isinstance(value, list):
        return [resolve(v, outputs) for v in value]
    return value


def check_refs(steps: tuple[PlanStep, ...]) -> None:
    """Every Ref names an output of an earlier step (a plan that fails this is a bug, not bad input)."""
    seen: dict[str, StepKind] = {}
    for s in steps:
        for ref in s.refs():
            kind = seen.get(ref.step)
            if kind is None or ref.output not in OUTPUTS.get(kind, ()):
                raise ValueError(f"step {s.id} refers to {ref}, which no earlier step produces")
        if s.id in seen:
            raise ValueError(f"step id {s.id} appears twice in one plan")
        seen[s.id] = s.kind
