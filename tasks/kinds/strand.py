"""The spec's record of VMs stranded in a zone that stopped answering (zone-outage,
:func:`haplane.core.remediation.decide_zones`): strand, strand-replaced, strand-deleted."""

from __future__ import annotations

from blocks.store import update_spec
from haplane.core.steps import StepKind
from tasks.kinds import Kind
from tasks.steps import probe


def _update_stranded(cluster: str, update) -> None:
    """Save ``update(stranded)`` onto the spec as saved now; records that are done (deleted and replaced) go."""
    update_spec(
        cluster,
        lambda spec: spec.model_copy(update={"stranded": [s for s in update(list(spec.stranded)) if not s.done]}),
    )


@probe(task_run_name="{step}")
def record_stranded(cluster: str, name: str, zone: str, step: str) -> None:
    from haplane.cloud.observe import now_utc
    from haplane.core.remediation import StrandedVm

    _update_stranded(
        cluster,
        lambda s: (
            s
            if any(x.name == name for x in s)
            else [*s, StrandedVm(name, zone, now_utc().isoformat(timespec="seconds"))]
        ),
    )


@probe(task_run_name="{step}")
def record_replacement(cluster: str, name: str, replacement: str, step: str) -> None:
    from dataclasses import replace

    _update_stranded(cluster, lambda s: [replace(x, replacement=replacement) if x.name == name else x for x in s])


@probe(task_run_name="{step}")
def record_deleted(cluster: str, names: list[str], step: str) -> None:
    from dataclasses import replace

    _update_stranded(cluster, lambda s: [replace(x, deleted=True) if x.name in names else x for x in s])


KINDS = (
    Kind(StepKind.STRAND, act=lambda run, s, a: record_stranded(run.change.cluster, a["name"], a["zone"], step=s.id)),
    Kind(
        StepKind.STRAND_REPLACED,
        act=lambda run, s, a: record_replacement(run.change.cluster, a["name"], a["replacement"], step=s.id),
    ),
    Kind(
        StepKind.STRAND_DELETED,
        act=lambda run, s, a: record_deleted(run.change.cluster, list(a["names"]), step=s.id),
    ),
)
