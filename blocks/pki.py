"""The cluster's certificate authorities as a Prefect block.

One document per cluster, saved as ``"<cluster>-pki"`` in block type
``haplane-cluster-pki``::

    ClusterPKI.from_cas(create_cluster_cas("prod")).save("prod-pki")
    cas = ClusterPKI.load("prod-pki").to_cas()

Beside the CAs (and, during a CA rotation, the next or previous ones): the operator's etcd
client certificate, the cluster's service-account key pair (one per cluster, the same on every
replica, with the public keys still accepted after a rotation) and the key that seals snapshots.

Private keys are ``SecretStr`` fields: Prefect stores them encrypted and the
UI, logs and ``repr`` show them masked. Per-replica leaves are not kept here:
they are issued from the CAs when a replica is created or rotated; their
certificates go to the replica's instance metadata and their private keys to
Secret Manager, one secret per replica and key, readable by that replica's VM
service account alone (:mod:`haplane.secretstore`). Only a VM created without a
service account keeps its keys in instance metadata, until it is replaced.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from haplane.pki import CertKey, ClusterCAs, Lifetimes, ServiceAccountKeys


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
    leaf_minutes: int | None = Field(
        default=None,
        description="Leaf certificate lifetime in minutes, instead of leaf_days (short-lived leaves; "
        "set by create-cluster's leaf_lifetime_minutes)",
    )
    # a CA rotation under way (rotate-certificates with rotate_ca): see haplane.pki.begin_ca_rotation
    ca_rotation: str | None = Field(default=None, description="Change id of the CA rotation under way, if any")
    next_ca_cert: str | None = Field(default=None, description="New cluster CA, trusted but not signing yet")
    next_ca_key: SecretStr | None = Field(default=None, description="Its private key (PEM)")
    next_etcd_ca_cert: str | None = Field(default=None, description="New etcd CA, trusted but not signing yet")
    next_etcd_ca_key: SecretStr | None = Field(default=None, description="Its private key (PEM)")
    previous_ca_cert: str | None = Field(
        default=None, description="Old cluster CA, still trusted until the rotation finishes"
    )
    previous_ca_key: SecretStr | None = Field(
        default=None, description="Its private key (PEM), deleted when the rotation finishes"
    )
    previous_etcd_ca_cert: str | None = Field(
        default=None, description="Old etcd CA, still trusted until the rotation finishes"
    )
    previous_etcd_ca_key: SecretStr | None = Field(
        default=None, description="Its private key (PEM), deleted when the rotation finishes"
    )
    # the service-account key pair (absent in documents saved before it existed; see
    # tasks.pki.ensure_cluster_pki, which adds it)
    service_account_key: SecretStr | None = Field(
        default=None, description="Service-account signing private key (PEM), the same on every replica"
    )
    service_account_key_created: dt.datetime | None = Field(
        default=None, description="When the service-account key was created"
    )
    service_account_previous_public_keys: list[str] = Field(
        default_factory=list, description="Public keys (PEM) still accepted after the last rotation"
    )
    snapshot_key: SecretStr | None = Field(
        default=None,
        description="AES-256 key (base64) sealing the cluster's etcd snapshots at rest; created by the first snapshot",
    )

    @property
    def document_name(self) -> str:
        return block_name(self.cluster)

    @classmethod
    def from_cas(cls, cas: ClusterCAs) -> ClusterPKI:
        return cls(cluster=cas.cluster, **cls._ca_fields(cas), **cls._service_account_fields(cas.service_account))

    @staticmethod
    def _ca_fields(cas: ClusterCAs) -> dict:
        def pair(name: str, ck: CertKey | None) -> dict:
            return {f"{name}_cert": ck.cert_pem if ck else None, f"{name}_key": ck.key_pem if ck else None}

        return {
            "ca_cert": cas.ca.cert_pem,
            "ca_key": cas.ca.key_pem,
            "etcd_ca_cert": cas.etcd_ca.cert_pem,
            "etcd_ca_key": cas.etcd_ca.key_pem,
            "operator_cert": cas.operator.cert_pem,
            "operator_key": cas.operator.key_pem,
            "ca_days": cas.lifetimes.ca_days,
            "leaf_days": cas.lifetimes.leaf_days,
            "leaf_minutes": cas.lifetimes.leaf_minutes,
            "ca_rotation": cas.ca_rotation,
            **pair("next_ca", cas.next_ca),
            **pair("next_etcd_ca", cas.next_etcd_ca),
            **pair("previous_ca", cas.previous_ca),
            **pair("previous_etcd_ca", cas.previous_etcd_ca),
        }

    def with_cas(self, cas: ClusterCAs) -> ClusterPKI:
        """This document with ``cas``' CAs, operator certificate, lifetimes and CA rotation state (to save
        over it; the service-account and snapshot keys are kept as they are)."""
        return self.model_copy(update=self._ca_fields(cas))

    @staticmethod
    def _service_account_fields(sa: ServiceAccountKeys | None) -> dict:
        if sa is None:
            return {}
        return {
            "service_account_key": sa.key_pem,
            "service_account_key_created": sa.created,
            "service_account_previous_public_keys": list(sa.previous_public_pems),
        }

    def with_service_account(self, sa: ServiceAccountKeys) -> ClusterPKI:
        """This document with ``sa`` as the service-account key pair (to save over it)."""
        return self.model_copy(update=self._service_account_fields(sa))

    def to_cas(self) -> ClusterCAs:
        return ClusterCAs(
            cluster=self.cluster,
            ca=CertKey("cluster-ca", self.ca_cert, self.ca_key),
            etcd_ca=CertKey("etcd-ca", self.etcd_ca_cert, self.etcd_ca_key),
            operator=CertKey("operator-etcd-client", self.operator_cert, self.operator_key),
            lifetimes=Lifetimes(ca_days=self.ca_days, leaf_days=self.leaf_days, leaf_minutes=self.leaf_minutes),
            service_account=(
                ServiceAccountKeys(
                    key_pem=self.service_account_key,
                    created=self.service_account_key_created or dt.datetime.now(dt.UTC),
                    previous_public_pems=tuple(self.service_account_previous_public_keys),
                )
                if self.service_account_key is not None
                else None
            ),
            ca_rotation=self.ca_rotation,
            next_ca=self._pair("cluster-ca", self.next_ca_cert, self.next_ca_key),
            next_etcd_ca=self._pair("etcd-ca", self.next_etcd_ca_cert, self.next_etcd_ca_key),
            previous_ca=self._pair("cluster-ca", self.previous_ca_cert, self.previous_ca_key),
            previous_etcd_ca=self._pair("etcd-ca", self.previous_etcd_ca_cert, self.previous_etcd_ca_key),
        )

    @staticmethod
    def _pair(role: str, cert: str | None, key: SecretStr | None) -> CertKey | None:
        if cert is None or key is None:
            return None
        return CertKey(role, cert, key)
