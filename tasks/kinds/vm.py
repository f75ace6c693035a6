"""Replica VMs: create-vm (bare, with haplane's startup script; its internal IP and self link are its
outputs), delete-vm (the VM only: its private keys are the delete-keys step after it). Each submit looks
before it acts and returns the operation to wait on."""

from __future__ import annotations

from prefect import get_run_logger

from haplane.cloud.gce import OpRef
from haplane.cloud.secretstore import service_account_email
from haplane.core.ownership import check_adoptable, owned
from haplane.core.steps import StepKind
from haplane.core.topology import LABEL_CHANGE, LABEL_UID, label_value
from haplane.core.versions import DEFAULT_ETCD_VERSION, DEFAULT_KUBERNETES_VERSION
from haplane.node.spec import ETCD_VERSION_KEY, KUBERNETES_VERSION_KEY
from haplane.node.startup import render_startup_script
from tasks.kinds import Kind, gce
from tasks.steps import Change, checkpoint, cluster_uid


@checkpoint
def submit_create_vm(
    change: Change,
    step: str,
    zone: str,
    name: str,
    machine_type: str,
    labels: dict[str, str],
    tags: list[str],
    nat_ip: str | None = None,
    etcd_version: str = DEFAULT_ETCD_VERSION,
    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
) -> OpRef | None:
    """Insert a replica VM (bare: its processes are configured once its IP is known) with haplane's startup
    script, asking for the cluster's etcd and kube-apiserver versions (the metadata the script installs from)."""
    gce = change.gce()
    uid = cluster_uid(change.cluster)
    found = gce.get_instance(zone, name)
    if found is not None:
        # ours only if this change made it (an earlier run of it): anything else is refused, never adopted
        check_adoptable(name, zone, found.labels, change.cluster, uid, label_value(change.change_id))
        get_run_logger().info("VM %s already exists in %s (made by this change); not inserting it again", name, zone)
        return None
    labels = {**labels, LABEL_CHANGE: label_value(change.change_id)}
    if uid:
        labels[LABEL_UID] = uid
    # The startup script is the same for every replica and holds no secret: it reads the replica's spec
    # and certificates from metadata at boot (real GCE; the emulator ignores the key).
    return gce.insert_instance(
        zone,
        name,
        machine_type=machine_type,
        labels=labels,
        metadata={
            "startup-script": render_startup_script(),
            ETCD_VERSION_KEY: etcd_version,
            KUBERNETES_VERSION_KEY: kubernetes_version,
        },
        tags=tags,
        external_ip=True,
        nat_ip=nat_ip,
        rid=change.rid(step),
        service_account=service_account_email(gce.project, name),
    )


@checkpoint
def submit_delete_vm(change: Change, step: str, zone: str, name: str) -> OpRef | None:
    gce = change.gce()
    vm = gce.get_instance(zone, name)
    if vm is None:
        get_run_logger().info("VM %s is already gone", name)
        return None
    if not owned(vm.labels.get(LABEL_UID), cluster_uid(change.cluster)):
        get_run_logger().warning(
            "VM %s has cluster %s's label but not its uid: a look-alike, not deleted", name, change.cluster
        )
        return None
    return gce.delete_instance(zone, name, rid=change.rid(step))


def _created(run, s, a) -> dict:
    vm = run.change.gce().get_instance(a["zone"], a["name"])
    return {"internal_ip": vm.internal_ip, "self_link": vm.self_link}


KINDS = (
    Kind(
        StepKind.CREATE_VM,
        submit=gce(
            submit_create_vm,
            lambda run, a: (
                a["zone"],
                a["name"],
                run.spec.machine_type,
                run.names.labels(run.spec.multizone, run.spec.quorum_reads),
                [run.names.tag],
                a["nat_ip"],
                run.spec.etcd_version,
                run.spec.kubernetes_version,
            ),
        ),
        produced=_created,
    ),
    Kind(StepKind.DELETE_VM, submit=gce(submit_delete_vm, lambda run, a: (a["zone"], a["name"]))),
)
