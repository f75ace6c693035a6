"""configure: issue a replica's certificates and write its etcd and API-server settings (and, for
restore-cluster, the snapshot its etcd starts from) into its metadata. The submit task is
:func:`tasks.pki.submit_configure_replica`, which shares the PKI's key handling with certificate rotation."""

from __future__ import annotations

from haplane.core.steps import PlanStep, StepKind
from haplane.node.spec import ApiServerSpec, EtcdSpec, RestoreSpec, peer_url
from tasks.kinds import Args, Kind, Run
from tasks.operations import Step
from tasks.pki import submit_configure_replica


def _configure(run: Run, s: PlanStep, a: Args) -> Step:
    initial = ",".join(f"{n}={peer_url(ip)}" for n, ip in a["initial_cluster"])
    etcd = EtcdSpec(
        name=a["name"],
        initial_cluster=initial,
        initial_cluster_state=a["cluster_state"],
        initial_cluster_token=a.get("token") or run.change.cluster,
    )
    api = ApiServerSpec(quorum_reads=run.spec.quorum_reads, service_cluster_ip_range=run.spec.service_cidr)
    # restore-cluster: the new member's etcd starts from this snapshot (url, snapshot id, sha256)
    restore = {"restore": RestoreSpec(*a["restore"])} if a.get("restore") else {}
    return Step(submit_configure_replica, s.id, s.text, (a["zone"], a["name"], a["endpoint_ip"], etcd, api), restore)


KINDS = (Kind(StepKind.CONFIGURE, submit=_configure),)
