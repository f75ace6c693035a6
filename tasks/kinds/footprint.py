"""check-gone: delete-cluster's check that GCE holds nothing of the cluster any more (its own resources,
by uid), before the steps that delete what cannot be had back (its keys, its CAs, its spec). Something
left, or a zone that does not answer, fails the step: those steps do not run."""

from __future__ import annotations

from haplane.core.steps import StepKind
from tasks.cluster import gce_footprint
from tasks.kinds import Kind
from tasks.steps import probe


@probe(task_run_name="{step}")
def check_gone_from_gce(cluster: str, region: str, connection: str | None, step: str) -> None:
    """Before delete-cluster removes the keys, the CA and the spec: nothing of the cluster may be left in GCE."""
    left = gce_footprint(cluster, region, connection, ours_only=True)
    if left:
        raise RuntimeError(
            f"cluster {cluster!r} still has {', '.join(left)} in GCE; its keys, spec and PKI are kept: "
            f"run delete-cluster again"
        )


KINDS = (
    Kind(
        StepKind.CHECK_GONE,
        act=lambda run, s, a: check_gone_from_gce(
            run.change.cluster, run.spec.region, run.change.connection, step=s.id
        ),
    ),
)
