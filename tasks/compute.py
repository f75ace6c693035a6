"""Compute tasks: replica VMs. Each submit looks before it acts and returns the operation to wait on."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from haplane.gce import GceOperationError, OpRef
from haplane.startup import render_startup_script
from haplane.topology import LABEL_CHANGE, label_value
from tasks.steps import Change, checkpoint, probe


@checkpoint
def submit_create_vm(change: Change, step: str, zone: str, name: str, machine_type: str,
                     labels: dict[str, str], tags: list[str], nat_ip: str | None = None) -> OpRef | None:
    """Insert a replica VM (bare: its processes are configured once its IP is known) with haplane's startup script."""
    gce = change.gce()
    if gce.get_instance(zone, name) is not None:
        get_run_logger().info("VM %s already exists in %s; not inserting it again", name, zone)
        return None
    labels = {**labels, LABEL_CHANGE: label_value(change.change_id)}
    # The startup script is the same for every replica and holds no secret: it reads the replica's spec
    # and certificates from metadata at boot (real GCE; the emulator ignores the key).
    return gce.insert_instance(zone, name, machine_type=machine_type, labels=labels,
                               metadata={"startup-script": render_startup_script()},
                               tags=tags, external_ip=True, nat_ip=nat_ip, rid=change.rid(step))


@checkpoint
def submit_delete_vm(change: Change, step: str, zone: str, name: str) -> OpRef | None:
    gce = change.gce()
    if gce.get_instance(zone, name) is None:
        get_run_logger().info("VM %s is already gone", name)
        return None
    return gce.delete_instance(zone, name, rid=change.rid(step))


@probe(retries=2, retry_delay_seconds=2, task_run_name="wait {what}")
def wait_op(change: Change, op: OpRef | None, what: str, timeout: float = 900.0,
            progress_key: str | None = None) -> None:
    """Wait for a submitted operation; ``None`` means there was nothing to do.

    With ``progress_key`` the wait is reported as a Prefect progress artifact (GCE's own
    ``progress`` of the operation), for the long load-balancer waits people watch in the UI."""
    if op is None or op.done:
        return
    logger = get_run_logger()
    logger.info("waiting for %s (operation %s)", what, op.name)
    on_progress, poll_s = None, None
    if progress_key:
        artifact = create_progress_artifact(0.0, key=progress_key, description=f"{what}: operation {op.name}")
        last = [0.0]

        def on_progress(raw: object, waited: float) -> None:
            value = float(getattr(raw, "progress", 0) or 0)
            if value != last[0]:
                last[0] = value
                update_progress_artifact(artifact, value, description=f"{what}: {value:.0f}% after {waited:.0f} s")

        poll_s = 2.0
    try:
        change.gce().wait(op, timeout=timeout, on_progress=on_progress, poll_s=poll_s)
    except GceOperationError as exc:
        logger.error("%s failed: %s", what, exc)
        raise
    if progress_key:
        update_progress_artifact(artifact, 100.0, description=f"{what}: done")


def wait_all(change: Change, ops: dict[str, OpRef | None], timeout: float = 900.0) -> None:
    """Wait for several operations concurrently (one task run each)."""
    futures = [wait_op.submit(change, op, what, timeout) for what, op in ops.items()]
    for f in futures:
        f.result()
