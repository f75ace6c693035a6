"""save-snapshot: a verified snapshot of one member's local store (no quorum needed; restore-cluster takes
it of the survivor before anything is deleted). Its outputs say where it went and how to check it."""

from __future__ import annotations

from haplane.core.steps import StepKind
from tasks.kinds import Kind
from tasks.snapshots import save_member_snapshot

KINDS = (
    Kind(
        StepKind.SAVE_SNAPSHOT,
        act=lambda run, s, a: save_member_snapshot(run.change, s.id, run.spec, a["name"], a["ip"]),
    ),
)
