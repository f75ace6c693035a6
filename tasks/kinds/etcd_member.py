"""A replica's etcd membership, learner first: add-learner (its member id is the output), promote,
move-leader (leadership away before a removal), remove-member. The tasks are :mod:`tasks.etcd`'s."""

from __future__ import annotations

from haplane.steps import StepKind
from tasks.etcd import add_learner, move_leader_away, promote, remove_member
from tasks.kinds import Kind

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
