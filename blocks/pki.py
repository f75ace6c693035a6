"""The cluster's certificate authorities as a Prefect block.

One document per cluster, saved as ``"<cluster>-pki"`` in block type
``haplane-cluster-pki``::

    ClusterPKI.from_cas(create_cluster_cas("prod")).save("prod-pki")
    cas = ClusterPKI.load("prod-pki").to_cas()

Private keys are ``SecretStr`` fields: Prefect stores them encrypted and the
UI, logs and ``repr`` show them masked. Per-replica leaves are not kept here:
they are issued from the CAs when a replica is created and travel only in the
replica's instance metadata.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from haplane.pki import CertKey, ClusterCAs, Lifetimes


def block_name(cluster: str) -> str:
    """The document name a cluster's PKI is saved under."""
    return f"{cluster}-pki"


class ClusterPKI(Block):
    """Certificate authorities of one haplane cluster (saved as "<cluster>-pki")."""

    _block_type_name: ClassVar[str] = "haplane Cluster PKI"
    _block_type_slug: ClassVar[str] = "haplane-cluster-pki"
    _description: ClassVar[str] = (
        "Certificate authorities of one haplane cluster: the cluster CA (API servers), the etcd CA, "
        "and the operator's etcd client certificate. Saved per cluster as '<cluster>-pki'."
    )

    cluster: str = Field(description="Cluster name")
    ca_cert: str = Field(description="Cluster CA certificate (PEM)")
    ca_key: SecretStr = Field(description="Cluster CA private key (PEM)")
    etcd_ca_cert: str = Field(description="etcd CA certificate (PEM)")
    etcd_ca_key: SecretStr = Field(description="etcd CA private key (PEM)")
    operator_cert: str = Field(description="Operator's etcd client certificate (PEM)")
    operator_key: SecretStr = Field(description="Operator's etcd client private key (PEM)")
    ca_days: int = Field(default=Lifetimes().ca_days, description="CA lifetime in days")
    leaf_days: int = Field(default=Lifetimes().leaf_days, description="Leaf certificate lifetime in days")
    snapshot_key: SecretStr | None = Field(
        default=None, description="AES-256 key (base64) sealing the cluster's etcd snapshots at rest; "
                                  "created by the first snapshot")

    @property
    def document_name(self) -> str:
        return block_name(self.cluster)

    @classmethod
    def from_cas(cls, cas: ClusterCAs) -> ClusterPKI:
        return cls(
            cluster=cas.cluster,
            ca_cert=cas.ca.cert_pem, ca_key=cas.ca.key_pem,
            etcd_ca_cert=cas.etcd_ca.cert_pem, etcd_ca_key=cas.etcd_ca.key_pem,
            operator_cert=cas.operator.cert_pem, operator_key=cas.operator.key_pem,
            ca_days=cas.lifetimes.ca_days, leaf_days=cas.lifetimes.leaf_days,
        )

    def to_cas(self) -> ClusterCAs:
        return ClusterCAs(
            cluster=self.cluster,
            ca=CertKey("cluster-ca", self.ca_cert, self.ca_key),
            etcd_ca=CertKey("etcd-ca", self.etcd_ca_cert, self.etcd_ca_key),
            operator=CertKey("operator-etcd-client", self.operator_cert, self.operator_key),
            lifetimes=Lifetimes(ca_days=self.ca_days, leaf_days=self.leaf_days),
        )
