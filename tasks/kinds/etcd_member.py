"""A replica's etcd membership, learner first: add-learner (its member id is the output), promote,
move-leader (leadership away before a removal), remove-member. Each looks at the membership first and
does nothing when the change is already there."""

from __future__ import annotations

from contextlib import closing

from prefect import get_run_logger

from haplane.cloud.etcd import add_member_when_ready, promote_when_ready, remove_member_when_ready
from haplane.core.steps import StepKind
from haplane.node.spec import peer_url
from tasks.etcd import operator_client
from tasks.kinds import Kind
from tasks.steps import Change, checkpoint, probe


@checkpoint
def add_learner(change: Change, step: str, member_ips: list[str], new_ip: str) -> int:
    """Add the new replica as a non-voting learner; returns its member id."""
    with closing(operator_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        for m in etcd.member_list():
            if peer_url(new_ip) in m.peer_urls:
                get_run_logger().info("member %s for %s already exists", m.hex_id, new_ip)
                return m.id
        added = add_member_when_ready(etcd, [peer_url(new_ip)], learner=True)
        get_run_logger().info("added learner %s for %s", added.member.hex_id, new_ip)
        return added.member.id


@probe(retries=2, retry_delay_seconds=3, task_run_name="{step}")
def promote(
    change: Change, member_ips: list[str], member_id: int, name: str, timeout: float = 120.0, step: str = "promote"
) -> None:
    """Promote the learner once it has caught up with the leader (retried until then)."""
    with closing(operator_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        member = next((m for m in etcd.member_list() if m.id == member_id), None)
        if member is None:
            raise RuntimeError(f"etcd member {member_id:x} ({name}) is not in the cluster")
        if not member.is_learner:
            return
        promote_when_ready(etcd, member_id, timeout=timeout)
        get_run_logger().info("promoted %s (%x) to a voting member", name, member_id)


@probe(retries=2, retry_delay_seconds=3, task_run_name="{step}")
def move_leader_away(
    change: Change, member_ips: list[str], member_id: int, name: str, healthy_ids: list[int], step: str = "move-leader"
) -> None:
    """If ``member_id`` leads, hand leadership to a healthy voting member first."""
    with closing(operator_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        leader_id, _ = etcd.leader()
        if leader_id != member_id:
            return
        target = next((i for i in healthy_ids if i != member_id), None)
        if target is None:
            raise RuntimeError(f"{name} leads etcd and no other healthy voting member can take over")
        etcd.move_leader(target)
        get_run_logger().info("moved etcd leadership from %s to %x", name, target)


@checkpoint
def remove_member(change: Change, step: str, member_ips: list[str], member_id: int, name: str) -> None:
    with closing(operator_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        if not any(m.id == member_id for m in etcd.member_list()):
            return
        remove_member_when_ready(etcd, member_id)
        get_run_logger().info("removed etcd member %s (%x)", name, member_id)


KINDS = (
    Kind(
        StepKind.ADD_LEARNER,
        act=lambda run, s, a: {"member_id": add_learner(run.change, s.id, list(a["member_ips"]), a["ip"])},
    ),
    Kind(
        StepKind.PROMOTE,
        act=lambda run, s, a: promote(run.change, list(a["member_ips"]), a["member_id"], a["name"], step=s.id),
    ),
    Kind(
        StepKind.MOVE_LEADER,
        act=lambda run, s, a: move_leader_away(
            run.change, list(a["member_ips"]), a["member_id"], a["name"], list(a["healthy_ids"]), step=s.id
        ),
    ),
    Kind(
        StepKind.REMOVE_MEMBER,
        act=lambda run, s, a: remove_member(run.change, s.id, list(a["member_ips"]), a["member_id"], a["name"]),
    ),
)
