"""The cluster's certificate authorities as a Prefect block: certificates and secret names only.

One document per cluster, saved as ``"<cluster>-pki"`` in block type ``haplane-cluster-pki``.
The private keys (cluster CA, etcd CA, the operator's etcd client key, the service-account
signing key, the snapshot key, and during a CA rotation the other CAs' keys) are not in it: each
is a secret of the project's Secret Manager (``<cluster>-cluster-<key>-key``, readable by the
workers' service account alone), and :attr:`ClusterPKI.key_versions` names the version to read.
:mod:`tasks.keys` is the one writer of this block and of those secrets.

Documents saved before that kept the keys inline (``SecretStr`` fields, encrypted by Prefect but
returned to anyone who may read blocks): :meth:`ClusterPKI.legacy_keys` reads them, and
migration (:func:`tasks.keys.ensure_keys`) moves them out and empties the fields.

Per-replica leaves are not kept here: they are issued from the CAs when a replica is created or
rotated; their certificates go to the replica's instance metadata and their private keys to Secret
Manager, one secret per replica and key, readable by that replica's VM service account alone
(:mod:`haplane.cloud.secretstore`). Only a VM created without a service account keeps its keys in
instance metadata, until it is replaced.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from haplane.cloud.pki import CertKey, ClusterCAs, Lifetimes, ServiceAccountKeys

CA, ETCD_CA, OPERATOR, SERVICE_ACCOUNT, SNAPSHOT = "ca", "etcd-ca", "operator", "service-account", "snapshot"
NEXT_CA, NEXT_ETCD_CA, PREVIOUS_CA, PREVIOUS_ETCD_CA = "next-ca", "next-etcd-ca", "previous-ca", "previous-etcd-ca"
KEY_NAMES = (CA, ETCD_CA, OPERATOR, SERVICE_ACCOUNT, SNAPSHOT, NEXT_CA, NEXT_ETCD_CA, PREVIOUS_CA, PREVIOUS_ETCD_CA)
# the inline fields of documents saved before migration, by key name
LEGACY_FIELDS = {
    CA: "ca_key",
    ETCD_CA: "etcd_ca_key",
    OPERATOR: "operator_key",
    NEXT_CA: "next_ca_key",
    NEXT_ETCD_CA: "next_etcd_ca_key",
    PREVIOUS_CA: "previous_ca_key",
    PREVIOUS_ETCD_CA: "previous_etcd_ca_key",
    SERVICE_ACCOUNT: "service_account_key",
    SNAPSHOT: "snapshot_key",
}


class ClusterPKI(Block):
    """Certificate authorities of one haplane cluster (saved as "<cluster>-pki")."""

    _block_type_name: ClassVar[str] = "haplane Cluster PKI"
    _block_type_slug: ClassVar[str] = "haplane-cluster-pki"
    _description: ClassVar[str] = (
        "Certificate authorities of one haplane cluster: the cluster CA (API servers), the etcd CA, "
        "and the operator's etcd client certificate, with the names of the Secret Manager versions holding "
        "their private keys (never the keys). Saved per cluster as '<cluster>-pki'."
    )

    cluster: str = Field(description="Cluster name")
    ca_cert: str = Field(description="Cluster CA certificate (PEM)")
    etcd_ca_cert: str = Field(description="etcd CA certificate (PEM)")
    operator_cert: str = Field(description="Operator's etcd client certificate (PEM)")
    ca_days: int = Field(default=Lifetimes().ca_days, description="CA lifetime in days")
    leaf_days: int = Field(default=Lifetimes().leaf_days, description="Leaf certificate lifetime in days")
    leaf_minutes: int | None = Field(
        default=None,
        description="Leaf certificate lifetime in minutes, instead of leaf_days (short-lived leaves; "
        "set by create-cluster's leaf_lifetime_minutes)",
    )
    # a CA rotation under way (rotate-certificates with rotate_ca): see haplane.cloud.pki.begin_ca_rotation
    ca_rotation: str | None = Field(default=None, description="Change id of the CA rotation under way, if any")
    next_ca_cert: str | None = Field(default=None, description="New cluster CA, trusted but not signing yet")
    next_etcd_ca_cert: str | None = Field(default=None, description="New etcd CA, trusted but not signing yet")
    previous_ca_cert: str | None = Field(
        default=None, description="Old cluster CA, still trusted until the rotation finishes"
    )
    previous_etcd_ca_cert: str | None = Field(
        default=None, description="Old etcd CA, still trusted until the rotation finishes"
    )
    # the service-account key pair (absent in documents saved before it existed; see
    # tasks.keys.ensure_keys, which adds it)
    service_account_key_created: dt.datetime | None = Field(
        default=None, description="When the service-account key was created"
    )
    service_account_previous_public_keys: list[str] = Field(
        default_factory=list, description="Public keys (PEM) still accepted after the last rotation"
    )
    key_versions: dict[str, str] = Field(
        default_factory=dict,
        description="Each private key's Secret Manager version (key name -> projects/P/secrets/S/versions/N): "
        "ca, etcd-ca, operator, service-account, snapshot, and during a CA rotation next-ca, "
        "next-etcd-ca, previous-ca, previous-etcd-ca. The keys themselves are never in this block",
    )
    # documents saved before the keys moved to Secret Manager: read by migration, then emptied
    ca_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    etcd_ca_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    operator_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    next_ca_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    next_etcd_ca_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    previous_ca_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    previous_etcd_ca_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    service_account_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")
    snapshot_key: SecretStr | None = Field(default=None, description="Legacy: emptied by migration")

    @classmethod
    def from_cas(cls, cas: ClusterCAs) -> ClusterPKI:
        """A document the old way, its keys inline: what blocks saved before the keys moved to Secret
        Manager hold (for tests and migration; :mod:`tasks.keys` never saves one)."""
        inline = {LEGACY_FIELDS[n]: k for n, k in cas_keys(cas).items() if k is not None}
        return cls(**cls.public_fields(cas), **inline)

    @classmethod
    def public_fields(cls, cas: ClusterCAs) -> dict:
        """The block's fields for ``cas``: certificates, lifetimes, rotation state; no key."""

        def cert(ck: CertKey | None) -> str | None:
            return ck.cert_pem if ck else None

        sa = cas.service_account
        return {
            "cluster": cas.cluster,
            "ca_cert": cas.ca.cert_pem,
            "etcd_ca_cert": cas.etcd_ca.cert_pem,
            "operator_cert": cas.operator.cert_pem,
            "ca_days": cas.lifetimes.ca_days,
            "leaf_days": cas.lifetimes.leaf_days,
            "leaf_minutes": cas.lifetimes.leaf_minutes,
            "ca_rotation": cas.ca_rotation,
            "next_ca_cert": cert(cas.next_ca),
            "next_etcd_ca_cert": cert(cas.next_etcd_ca),
            "previous_ca_cert": cert(cas.previous_ca),
            "previous_etcd_ca_cert": cert(cas.previous_etcd_ca),
            **(
                {
                    "service_account_key_created": sa.created,
                    "service_account_previous_public_keys": list(sa.previous_public_pems),
                }
                if sa
                else {}
            ),
        }

    def legacy_keys(self) -> dict[str, SecretStr]:
        """The private keys a document saved before migration holds inline (key name -> PEM)."""
        found = {name: getattr(self, attr) for name, attr in LEGACY_FIELDS.items()}
        return {name: key for name, key in found.items() if key is not None}

    def to_cas(self, keys: Mapping[str, SecretStr] | None = None) -> ClusterCAs:
        """The CAs with ``keys`` (key name -> PEM; :func:`cas_keys` in reverse; None: the inline keys of a
        document saved the old way). A key not given is an empty placeholder: such a ClusterCAs serves
        certificates only (signing with it fails)."""
        keys = self.legacy_keys() if keys is None else keys

        def key(name: str) -> SecretStr:
            return keys.get(name) or SecretStr("")

        sa_key = keys.get(SERVICE_ACCOUNT)
        return ClusterCAs(
            cluster=self.cluster,
            ca=CertKey("cluster-ca", self.ca_cert, key(CA)),
            etcd_ca=CertKey("etcd-ca", self.etcd_ca_cert, key(ETCD_CA)),
            operator=CertKey("operator-etcd-client", self.operator_cert, key(OPERATOR)),
            lifetimes=Lifetimes(ca_days=self.ca_days, leaf_days=self.leaf_days, leaf_minutes=self.leaf_minutes),
            service_account=(
                ServiceAccountKeys(
                    key_pem=sa_key,
                    created=self.service_account_key_created or dt.datetime.now(dt.UTC),
                    previous_public_pems=tuple(self.service_account_previous_public_keys),
                )
                if sa_key is not None
                else None
            ),
            ca_rotation=self.ca_rotation,
            next_ca=self._pair("cluster-ca", self.next_ca_cert, key(NEXT_CA)),
            next_etcd_ca=self._pair("etcd-ca", self.next_etcd_ca_cert, key(NEXT_ETCD_CA)),
            previous_ca=self._pair("cluster-ca", self.previous_ca_cert, key(PREVIOUS_CA)),
            previous_etcd_ca=self._pair("etcd-ca", self.previous_etcd_ca_cert, key(PREVIOUS_ETCD_CA)),
        )

    @staticmethod
    def _pair(role: str, cert: str | None, key: SecretStr) -> CertKey | None:
        if cert is None:
            return None
        return CertKey(role, cert, key)


def cas_keys(cas: ClusterCAs) -> dict[str, SecretStr | None]:
    """Every private key of ``cas`` by key name (None: the cluster has no such key now)."""

    def key(ck: CertKey | None) -> SecretStr | None:
        return ck.key_pem if ck else None

    return {
        CA: key(cas.ca),
        ETCD_CA: key(cas.etcd_ca),
        OPERATOR: key(cas.operator),
        NEXT_CA: key(cas.next_ca),
        NEXT_ETCD_CA: key(cas.next_etcd_ca),
        PREVIOUS_CA: key(cas.previous_ca),
        PREVIOUS_ETCD_CA: key(cas.previous_etcd_ca),
        SERVICE_ACCOUNT: cas.service_account.key_pem if cas.service_account else None,
    }
