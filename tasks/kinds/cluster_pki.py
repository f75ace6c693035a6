"""The cluster's CAs and keys (its PKI block, their keys in Secret Manager): create-pki, delete-pki (the block
only: delete-cluster checks GCE's footprint and deletes the cluster's secrets in steps of their own before
it); rotate-certificates' changes to the block: start-ca-rotation, switch-cas, finish-ca-rotation (a CA
rotation's phases), renew-operator, rotate-service-account; complete-keys (a plan's head: the keys of a block
saved the old way moved to Secret Manager, a missing one made)."""

from __future__ import annotations

from prefect import get_run_logger

from haplane.core.steps import PlanStep, StepKind
from tasks.keys import ensure_keys
from tasks.kinds import Args, Kind, Run
from tasks.pki import (
    delete_cluster_pki,
    ensure_cluster_pki,
    finish_ca_rotation_task,
    renew_operator_cert,
    rotate_service_account,
    start_ca_rotation,
    switch_to_new_cas,
)
from tasks.steps import probe


@probe(task_run_name="{step}")
def complete_keys(cluster: str, connection: str | None, step: str) -> None:
    """The cluster's keys complete and out of the PKI block (:func:`tasks.keys.ensure_keys`: re-read under the
    cluster lock, so a key another run wrote meanwhile is kept)."""
    written = ensure_keys(cluster, connection)
    get_run_logger().info(
        "keys of %s written to Secret Manager: %s", cluster, ", ".join(written) or "none (done already)"
    )


def _rotate_service_account(run: Run, s: PlanStep, a: Args) -> None:
    kid = rotate_service_account(run.change, s.id)
    get_run_logger().info("service-account key %s; the plan delivers it to each replica in turn", kid)


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
    Kind(StepKind.START_CA_ROTATION, act=lambda run, s, a: start_ca_rotation(run.change, s.id) and None),
    Kind(StepKind.SWITCH_CAS, act=lambda run, s, a: switch_to_new_cas(run.change, s.id) and None),
    Kind(StepKind.FINISH_CA_ROTATION, act=lambda run, s, a: finish_ca_rotation_task(run.change, s.id) and None),
    Kind(StepKind.RENEW_OPERATOR, act=lambda run, s, a: renew_operator_cert(run.change, s.id) and None),
    Kind(StepKind.ROTATE_SERVICE_ACCOUNT, act=_rotate_service_account),
    Kind(StepKind.COMPLETE_KEYS, act=lambda run, s, a: complete_keys(run.change.cluster, run.change.connection, s.id)),
)
