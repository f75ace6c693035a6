"""The spec's record of VMs stranded in a zone that stopped answering (zone-outage): strand, strand-replaced,
strand-deleted."""

from __future__ import annotations

from haplane.steps import StepKind
from tasks.cluster import record_deleted, record_replacement, record_stranded
from tasks.kinds import Kind

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
