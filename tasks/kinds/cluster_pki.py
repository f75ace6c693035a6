"""The cluster's CAs (its PKI block, their keys in Secret Manager): create-pki, delete-pki (the block only:
delete-cluster checks GCE's footprint and deletes the cluster's secrets in steps of their own before it)."""

from __future__ import annotations

from haplane.core.steps import StepKind
from tasks.kinds import Kind
from tasks.pki import delete_cluster_pki, ensure_cluster_pki

KINDS = (
    Kind(
        StepKind.CREATE_PKI,
        act=lambda run, s, a: (
            ensure_cluster_pki(
                run.change.cluster, step=s.id, leaf_minutes=a.get("leaf_minutes"), connection=run.change.connection
            )
            and None
        ),
    ),
    Kind(StepKind.DELETE_PKI, act=lambda run, s, a: delete_cluster_pki(run.change.cluster, step=s.id)),
)
