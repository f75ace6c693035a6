"""save-snapshot: a verified snapshot of one member's local store (no quorum needed; restore-cluster takes
it of the survivor before anything is deleted). Its outputs say where it went and how to check it.
snapshot-before: a membership change's verified snapshot, the head of its plan (one per change id; if it
fails, the run stops before its first change)."""

from __future__ import annotations

from haplane.core.steps import StepKind
from tasks.kinds import Kind
from tasks.snapshots import save_member_snapshot, snapshot_before_change

KINDS = (
    Kind(
        StepKind.SAVE_SNAPSHOT,
        act=lambda run, s, a: save_member_snapshot(run.change, s.id, run.spec, a["name"], a["ip"]),
    ),
    Kind(
        StepKind.SNAPSHOT_BEFORE,
        act=lambda run, s, a: snapshot_before_change(run.change, run.spec, a["action"], False, step=s.id) and None,
    ),
)
