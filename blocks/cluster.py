"""Settings blocks: where a cluster lives and how to reach Compute Engine.

Blocks hold settings and credentials only; the cluster's *state* is always
observed from GCE (instance labels) and etcd (membership), never stored here.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from prefect_gcp import GcpCredentials
from pydantic import Field, SecretStr

from haplane import settings
from haplane.cloud.gce import Gce, token_credentials
from haplane.core.endpoint import EndpointMode
from haplane.core.remediation import StrandedVm
from haplane.core.versions import DEFAULT_ETCD_VERSION, DEFAULT_KUBERNETES_VERSION


class GceConnection(Block):
    """How to reach Compute Engine: a project, and either real GCE or an endpoint (the emulator)."""

    _block_type_name: ClassVar[str] = "haplane GCE Connection"
    _block_type_slug: ClassVar[str] = "haplane-gce-connection"
    _description: ClassVar[str] = (
        "Project and endpoint for Compute Engine. Leave the endpoint empty for real GCE "
        "(credentials from the GCP Credentials block, else application default credentials)."
    )

    project: str = Field(description="GCE project id")
    endpoint: str | None = Field(
        default=None,
        description="API endpoint, e.g. http://127.0.0.1:8787 for the haplane emulator; empty for real GCE",
    )
    gcp_credentials: GcpCredentials | None = Field(
        default=None, description="prefect-gcp credentials for real GCE (unused with an endpoint)"
    )
    token: SecretStr | None = Field(
        default=None,
        description="With an endpoint (the emulator): the workers' bearer token, which its Secret "
        "Manager requires (the file workers-token in the emulator's state directory)",
    )

    def gce(self) -> Gce:
        creds = None
        if not self.endpoint and self.gcp_credentials is not None:
            creds = self.gcp_credentials.get_credentials_from_service_account()
        elif self.endpoint and self.token is not None:
            creds = token_credentials(self.token.get_secret_value())
        return Gce(project=self.project, endpoint=self.endpoint, credentials=creds)


def resolve_gce(connection: str | None) -> Gce:
    """A saved :class:`GceConnection` by name, else ``HAPLANE_GCE_ENDPOINT`` / ``HAPLANE_PROJECT``."""
    if connection:
        try:
            block = GceConnection.load(connection)
        except ValueError as exc:
            raise ValueError(
                f"no haplane-gce-connection block named {connection!r}: create it with `haplane setup-workspace "
                f"--project PROJECT [--endpoint URL] --connection {connection}` (or under Blocks in the UI), or "
                f"leave connection empty to use HAPLANE_PROJECT / HAPLANE_GCE_ENDPOINT of the worker"
            ) from exc
        return block.gce()
    if not settings.project():
        raise ValueError(
            "no GCE connection: pass connection=<name of a haplane-gce-connection block>, "
            "or set HAPLANE_PROJECT (and HAPLANE_GCE_ENDPOINT for the emulator)"
        )
    return Gce.from_env()


MULTIZONE_TEXT = (
    "MULTIZONE (the seed's setting, inherited by every replica): true spreads replicas over the "
    "listed zones; false keeps the cluster in one zone (more than one zone is then refused)"
)
QUORUM_READS_NOTE = (
    "Kubernetes removed --etcd-quorum-read in 1.12: kube-apiserver's etcd3 storage always reads "
    "with quorum, so there is no flag to set. haplane only records the value (VM label "
    "haplane-quorum-reads, the haplane-apiserver metadata) and the startup script logs it"
)
QUORUM_READS_TEXT = f"Deprecated, no effect: the seed's ENABLE_ETCD_QUORUM_READ. {QUORUM_READS_NOTE}"


class ClusterSpec(Block):
    """The intended settings of one cluster, saved by create-cluster as ``<cluster>-spec``."""

    _block_type_name: ClassVar[str] = "haplane Cluster Spec"
    _block_type_slug: ClassVar[str] = "haplane-cluster-spec"
    _description: ClassVar[str] = (
        "Settings of one HA control plane: region, zones, MULTIZONE and quorum reads (inherited by "
        "every replica added later), machine type and the ranges the firewall admits."
    )

    cluster: str = Field(description="Cluster name")
    region: str = Field(description="GCE region: every replica is in one of its zones")
    zones: list[str] = Field(description="Zones replicas are spread over")
    multizone: bool = Field(default=True, description=MULTIZONE_TEXT)
    quorum_reads: bool = Field(default=False, description=QUORUM_READS_TEXT)
    machine_type: str = Field(default="e2-standard-2", description="Machine type of each replica")
    api_source_ranges: list[str] = Field(
        default_factory=lambda: ["0.0.0.0/0"], description="Ranges allowed to reach the API server port"
    )
    operator_ranges: list[str] = Field(
        default_factory=list,
        description="Ranges the operator (Prefect worker) reaches etcd from "
        "(create-cluster detects the worker's egress if none)",
    )
    service_cidr: str = Field(default="10.0.0.0/24", description="Kubernetes service range")
    # Specs saved before this field existed were clusters of the seed's way: they read as "as-needed".
    load_balancer: EndpointMode = Field(
        default=EndpointMode.AS_NEEDED,
        description="Endpoint mode: 'always' (a load balancer on the static IP from the first replica; "
        "scaling is only target-pool changes) or 'as-needed' (the seed's: no load balancer at 1 "
        "replica, the IP moves at 1 <-> 2)",
    )
    zones_out: dict[str, str] = Field(
        default_factory=dict,
        description="Zones the health check found not answering, with when it first saw each (ISO time); "
        "written by the health check",
    )
    stranded: list[StrandedVm] = Field(
        default_factory=list,
        description="VMs left in a dead zone after their etcd member was removed and replaced elsewhere; "
        "the health check deletes each when its zone answers again (they must never rejoin)",
    )
    project: str | None = Field(
        default=None,
        description="GCE project the cluster lives in (recorded at create; empty for clusters created before it was)",
    )
    uid: str | None = Field(
        default=None,
        description="The cluster's identity, stamped on everything it creates (empty for clusters created before uids)",
    )
    unhealthy_grace_s: float = Field(
        default=10.0,
        ge=10.0,
        le=86400.0,
        description="A replica haplane watch sees unhealthy this long (seconds, at least 10) gets a health check "
        "(the automation haplane setup-workspace makes per cluster)",
    )
    snapshot_storage: str | None = Field(
        default=None,
        description="etcd snapshots go to this storage block, '<type>/<name>' (e.g. "
        "'gcs-bucket/prod-snapshots'); empty: $PREFECT_HOME/haplane-snapshots",
    )
    # Specs saved before versions were recorded read as the versions every replica ran then.
    etcd_version: str = Field(
        default=DEFAULT_ETCD_VERSION,
        description="etcd release the replicas run (haplane.core.versions.ETCD_RELEASES); changed by upgrade-cluster",
    )
    kubernetes_version: str = Field(
        default=DEFAULT_KUBERNETES_VERSION,
        description="kube-apiserver release the replicas run; changed by upgrade-cluster",
    )
    snapshot_keep: int = Field(default=24, ge=1, description="Snapshots kept at most (oldest pruned first)")
    snapshot_max_age_h: float = Field(
        default=168.0, gt=0, description="Snapshots older than this are pruned (the newest is always kept)"
    )
