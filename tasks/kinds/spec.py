"""The cluster's spec block: save-spec (all of it, or the ``settings`` given), delete-spec."""

from __future__ import annotations

from haplane.steps import StepKind
from tasks.cluster import delete_spec, save_spec
from tasks.kinds import Kind

KINDS = (
    Kind(
        StepKind.SAVE_SPEC,
        act=lambda run, s, a: save_spec(
            run.change.cluster, run.spec, step=s.id, settings=dict(a["settings"]) if "settings" in a else None
        ),
    ),
    Kind(StepKind.DELETE_SPEC, act=lambda run, s, a: delete_spec(run.change.cluster, step=s.id)),
)
