"""Certificates for a cluster: two CAs, per-replica leaves, and an inventory without keys.

Per cluster (created once, see :func:`create_cluster_cas`):

- the *cluster CA*, which signs each replica's API-server serving certificate;
- the *etcd CA*, which signs every etcd peer, etcd server and etcd client certificate;
- the *operator's etcd client certificate*: what the Prefect worker presents to etcd;
- the *service-account key pair* (:class:`ServiceAccountKeys`), the same on every replica, with
  which the API servers sign and verify service-account tokens.

Per replica (see :func:`issue_replica_certs`): the API server's serving
certificate, the etcd peer and server certificates, the API server's
client certificate to etcd, and the controller-manager's and scheduler's
client certificates to the API server (``system:kube-controller-manager``,
``system:kube-scheduler``). :func:`node_tls` turns them into the
``NodeSpec.tls`` dict (keys of :data:`haplane.node.spec.TLS_FILES`).

Key algorithm: **ECDSA P-256**. A key takes about a millisecond to generate
(RSA 2048 takes tens to hundreds), so creating a cluster or a replica, and
every test, stays fast; certificates are small (they travel in instance
metadata, which GCE caps at 256 KB per instance); etcd (Go), kube-apiserver,
Python's ssl/OpenSSL and cryptography's verifier all accept it; and its
security is comparable to RSA 3072. Signatures are ECDSA with SHA-256.

Private keys are held only as :class:`pydantic.SecretStr` inside frozen
dataclasses: their ``repr``/``str`` show ``**********``. Nothing here logs.
The only way a key leaves as plain text is :func:`node_tls` (it has to be
written to the VM) and an explicit ``.get_secret_value()``.

The API server's certificate is issued for explicit ``internal_ip`` and
``endpoint_ip`` (the static endpoint IP, which becomes the load balancer's
IP) and never for a replica's ephemeral public IP: the function has no
parameter that could carry one (the seed: "there is no certificate for a
replica's ephemeral public IP").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from haplane.cloud.serviceaccount import key_id
from haplane.node.spec import TLS_FILES

CA_DAYS = 3650
LEAF_DAYS = 365
DEFAULT_SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_DNS_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# clock skew between the machine that signs and the VMs that verify
_BACKDATE = dt.timedelta(minutes=5)
# the users kube-controller-manager and kube-scheduler authenticate as (the certificate's CN, no group:
# kube-apiserver's default RBAC binds system:kube-controller-manager and system:kube-scheduler)
CONTROL_PLANE_USERS = ("kube-controller-manager", "kube-scheduler")


MIN_LEAF_MINUTES = 2  # a leaf must outlast a rotation of every replica (tens of seconds per replica)


def check_leaf_minutes(value: object, ca_days: int = CA_DAYS) -> int | None:
    """A leaf lifetime in minutes (None: ``leaf_days``), or a ValueError that names the fix."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"leaf_lifetime_minutes must be a whole number of minutes, got {value!r}: pass e.g. 10 "
            f"(or leave it empty for {LEAF_DAYS}-day leaves)"
        )
    if value < MIN_LEAF_MINUTES:
        raise ValueError(
            f"leaf_lifetime_minutes={value} is too short: a leaf must last at least "
            f"{MIN_LEAF_MINUTES} minutes, so that rotating every replica fits in its lifetime "
            f"(leave it empty for {LEAF_DAYS}-day leaves)"
        )
    if value > ca_days * 1440:
        raise ValueError(
            f"leaf_lifetime_minutes={value} outlives the CA ({ca_days} days = {ca_days * 1440} "
            f"minutes): give at most {ca_days * 1440}"
        )
    return value


@dataclass(frozen=True)
class Lifetimes:
    """Validity periods: CAs ``ca_days`` (10 years), leaves ``leaf_days`` (1 year), or ``leaf_minutes``
    when given (short-lived leaves: tests, demos, a policy of frequent rotation)."""

    ca_days: int = CA_DAYS
    leaf_days: int = LEAF_DAYS
    leaf_minutes: int | None = None

    def __post_init__(self) -> None:
        if self.ca_days <= 0 or self.leaf_days <= 0:
            raise ValueError("lifetimes must be positive numbers of days")
        if self.leaf_days > self.ca_days:
            raise ValueError(f"a leaf cannot outlive its CA: leaf_days={self.leaf_days} > ca_days={self.ca_days}")
        check_leaf_minutes(self.leaf_minutes, self.ca_days)

    @property
    def leaf(self) -> dt.timedelta:
        """How long a leaf lasts."""
        if self.leaf_minutes is not None:
            return dt.timedelta(minutes=self.leaf_minutes)
        return dt.timedelta(days=self.leaf_days)

    @property
    def leaf_text(self) -> str:
        return f"{self.leaf_minutes} minutes" if self.leaf_minutes is not None else f"{self.leaf_days} days"


@dataclass(frozen=True)
class CertKey:
    """A certificate (PEM) and its private key (PEM, secret)."""

    role: str
    cert_pem: str
    key_pem: SecretStr = field(repr=False)

    def __repr__(self) -> str:  # the SecretStr would be masked anyway; keep reprs short
        return f"CertKey(role={self.role!r}, subject={self.certificate.subject.rfc4514_string()!r})"

    __str__ = __repr__

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem.get_secret_value().encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def info(self) -> CertInfo:
        return describe(self.cert_pem, self.role)


@dataclass(frozen=True)
class ClusterCAs:
    """What a cluster keeps for its lifetime: both CAs and the operator's etcd client certificate."""

    cluster: str
    ca: CertKey
    etcd_ca: CertKey
    operator: CertKey  # client certificate of the operator (Prefect worker) to etcd
    lifetimes: Lifetimes = Lifetimes()
    # the cluster's one service-account signing key (None for a cluster saved before it existed:
    # see blocks.pki.ClusterPKI and tasks.pki.ensure_cluster_pki, which adds one)
    service_account: ServiceAccountKeys | None = None
    # a CA rotation under way (see begin_ca_rotation): the change that runs it, the new CAs while
    # every replica learns to trust them ("next"), then the old ones, still trusted, until every
    # leaf is re-issued and every replica has dropped them ("previous"). Their keys are kept until
    # the rotation is finished, so a killed rotation can always be resumed.
    ca_rotation: str | None = None
    next_ca: CertKey | None = None
    next_etcd_ca: CertKey | None = None
    previous_ca: CertKey | None = None
    previous_etcd_ca: CertKey | None = None

    def __repr__(self) -> str:
        return f"ClusterCAs(cluster={self.cluster!r}, ca={self.ca!r}, etcd_ca={self.etcd_ca!r}, operator={self.operator!r})"

    __str__ = __repr__

    @property
    def ca_phase(self) -> str:
        """Where a CA rotation stands: "none", "trusting" (new CAs beside the old ones, not yet
        signing) or "switched" (the new CAs sign; the old ones are still trusted)."""
        if self.next_ca is not None:
            return "trusting"
        if self.previous_ca is not None:
            return "switched"
        return "none"

    def ca_bundle(self, *, drop_previous: bool = False) -> str:
        """What trusts the API servers' certificates (``--client-ca-file``, a client's CA): the
        current cluster CA, and during a CA rotation the other one."""
        return _bundle(self.ca, self.next_ca, None if drop_previous else self.previous_ca)

    def etcd_ca_bundle(self, *, drop_previous: bool = False) -> str:
        """What trusts etcd's peers, servers and clients (``--trusted-ca-file``): as :meth:`ca_bundle`."""
        return _bundle(self.etcd_ca, self.next_etcd_ca, None if drop_previous else self.previous_etcd_ca)

    def cas(self) -> tuple[CertKey, ...]:
        """Every CA the cluster holds now (current, and those of a CA rotation under way)."""
        return tuple(
            c
            for c in (self.ca, self.etcd_ca, self.next_ca, self.next_etcd_ca, self.previous_ca, self.previous_etcd_ca)
            if c is not None
        )


def _bundle(*cas: CertKey | None) -> str:
    pems = [c.cert_pem if c.cert_pem.endswith("\n") else c.cert_pem + "\n" for c in cas if c is not None]
    return "".join(dict.fromkeys(pems))


@dataclass(frozen=True)
class ReplicaCerts:
    """The leaves of one replica."""

    hostname: str
    internal_ip: str
    endpoint_ip: str
    apiserver: CertKey
    etcd_peer: CertKey
    etcd_server: CertKey
    apiserver_etcd_client: CertKey
    # the controller-manager's and the scheduler's client certificates to their local API server
    # (users system:kube-controller-manager and system:kube-scheduler, which kube-apiserver's RBAC binds)
    controller_manager: CertKey
    scheduler: CertKey

    def __repr__(self) -> str:
        return (
            f"ReplicaCerts(hostname={self.hostname!r}, internal_ip={self.internal_ip!r}, "
            f"endpoint_ip={self.endpoint_ip!r})"
        )

    __str__ = __repr__

    def leaves(self) -> tuple[CertKey, ...]:
        return (
            self.apiserver,
            self.etcd_peer,
            self.etcd_server,
            self.apiserver_etcd_client,
            self.controller_manager,
            self.scheduler,
        )


@dataclass(frozen=True)
class CertInfo:
    """One certificate, described without key material."""

    role: str
    subject: str
    issuer: str
    serial: str  # hex
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    is_ca: bool
    extended_key_usage: tuple[str, ...]

    @property
    def sans(self) -> tuple[str, ...]:
        return self.dns_names + self.ip_addresses


@dataclass(frozen=True)
class ServiceAccountKeys:
    """The cluster's service-account key pair, and the public keys still accepted from before.

    kube-apiserver signs service-account tokens with ``--service-account-signing-key-file`` and
    accepts any token signed by a key in ``--service-account-key-file``: every replica gets the
    same pair, so a token minted behind the load balancer by one replica verifies on all of them.
    A rotation (:func:`rotate_service_account_key`) keeps the previous public key accepted, so
    tokens signed before it stay valid until they expire or until the next rotation.
    """

    key_pem: SecretStr = field(repr=False)
    created: dt.datetime
    previous_public_pems: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"ServiceAccountKeys(kid={self.kid!r}, created={self.created.isoformat()!r})"

    __str__ = __repr__

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem.get_secret_value().encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    @property
    def public_pem(self) -> str:
        return (
            self.private_key()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @property
    def kid(self) -> str:
        return key_id(self.public_pem)

    def public_bundle(self) -> str:
        """What ``--service-account-key-file`` reads: the current public key, then previous ones."""
        return "".join(dict.fromkeys((self.public_pem, *self.previous_public_pems)))

    def age(self, now: dt.datetime | None = None) -> dt.timedelta:
        return _now(now) - self.created


def new_service_account_key(now: dt.datetime | None = None) -> ServiceAccountKeys:
    """A fresh service-account key pair (ECDSA P-256: kube-apiserver signs ES256 with it)."""
    return ServiceAccountKeys(key_pem=_key_pem(_new_key()), created=_now(now))


def rotate_service_account_key(current: ServiceAccountKeys, now: dt.datetime | None = None) -> ServiceAccountKeys:
    """A new signing key; the current public key stays accepted (one previous key is kept)."""
    fresh = new_service_account_key(now)
    return ServiceAccountKeys(key_pem=fresh.key_pem, created=fresh.created, previous_public_pems=(current.public_pem,))


# ---------------------------------------------------------------- building blocks


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> SecretStr:
    return SecretStr(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.UTC)


def _ip(value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} must be an IP address, got {value!r}") from None


def new_ca(common_name: str, role: str, *, days: int = CA_DAYS, now: dt.datetime | None = None) -> CertKey:
    """A self-signed CA (path length 0: it signs leaves only)."""
    key = _new_key()
    start = _now(now) - _BACKDATE
    name = _name(common_name, "haplane")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKey(role=role, cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem=_key_pem(key))


def issue(
    ca: CertKey,
    *,
    role: str,
    common_name: str,
    organization: str | None = None,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    server: bool = False,
    client: bool = False,
    days: int = LEAF_DAYS,
    lifetime: dt.timedelta | None = None,
    now: dt.datetime | None = None,
) -> CertKey:
    """A leaf signed by ``ca`` with the given SANs and extended key usages, valid for ``lifetime``
    (else ``days``). It is back-dated by 5 minutes for clock skew, or by a tenth of a shorter
    lifetime, so that a leaf of a few minutes is still valid for most of them from now."""
    if not (server or client):
        raise ValueError("a leaf certificate must be for server or client use (or both)")
    ca_cert = ca.certificate
    ca_key = ca.private_key()
    key = _new_key()
    span = lifetime if lifetime is not None else dt.timedelta(days=days)
    if span <= dt.timedelta(0):
        raise ValueError(f"a certificate's lifetime must be positive, got {span}")
    start = _now(now) - min(_BACKDATE, span / 10)
    not_after = min(start + span, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(_ip(i, "SAN")) for i in dict.fromkeys(ip_addresses)]
    eku = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertKey(role=role, cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem=_key_pem(key))


# ---------------------------------------------------------------- the cluster


def create_cluster_cas(
    cluster: str, *, lifetimes: Lifetimes = Lifetimes(), now: dt.datetime | None = None
) -> ClusterCAs:
    """Both CAs of a cluster and the operator's etcd client certificate. Done once per cluster."""
    ca = new_ca(f"{cluster}-ca", "cluster-ca", days=lifetimes.ca_days, now=now)
    etcd_ca = new_ca(f"{cluster}-etcd-ca", "etcd-ca", days=lifetimes.ca_days, now=now)
    operator = issue_operator(etcd_ca, lifetime=lifetimes.leaf, now=now)
    return ClusterCAs(
        cluster=cluster,
        ca=ca,
        etcd_ca=etcd_ca,
        operator=operator,
        lifetimes=lifetimes,
        service_account=new_service_account_key(now),
    )


def issue_operator(
    etcd_ca: CertKey, *, days: int = LEAF_DAYS, lifetime: dt.timedelta | None = None, now: dt.datetime | None = None
) -> CertKey:
    """The operator's (Prefect worker's) etcd client certificate."""
    return issue(
        etcd_ca,
        role="operator-etcd-client",
        common_name="haplane-operator",
        organization="haplane",
        dns_names=["haplane-operator"],
        client=True,
        days=days,
        lifetime=lifetime,
        now=now,
    )


# ---------------------------------------------------------------- CA rotation (pure transitions)


def begin_ca_rotation(cas: ClusterCAs, change_id: str, now: dt.datetime | None = None) -> ClusterCAs:
    """Phase 1: new CAs beside the current ones ("next"): trusted everywhere, signing nothing yet."""
    if cas.ca_rotation is not None:
        raise ValueError(
            f"a CA rotation of {cas.cluster} is already under way (change {cas.ca_rotation!r}, "
            f"{cas.ca_phase}): resume it with rotate_ca=true, change_id={cas.ca_rotation!r}"
        )
    stamp = _now(now).strftime("%Y%m%d%H%M%S")
    ca = new_ca(f"{cas.cluster}-ca-{stamp}", "cluster-ca", days=cas.lifetimes.ca_days, now=now)
    etcd_ca = new_ca(f"{cas.cluster}-etcd-ca-{stamp}", "etcd-ca", days=cas.lifetimes.ca_days, now=now)
    return dataclasses.replace(cas, ca_rotation=change_id, next_ca=ca, next_etcd_ca=etcd_ca)


def switch_cas(cas: ClusterCAs) -> ClusterCAs:
    """Phase 2: the new CAs sign from now on; the old ones stay trusted ("previous"), keys kept."""
    if cas.ca_phase != "trusting":
        raise ValueError(f"no new CA to switch to (CA rotation phase: {cas.ca_phase})")
    return dataclasses.replace(
        cas,
        ca=cas.next_ca,
        etcd_ca=cas.next_etcd_ca,
        next_ca=None,
        next_etcd_ca=None,
        previous_ca=cas.ca,
        previous_etcd_ca=cas.etcd_ca,
    )


def finish_ca_rotation(cas: ClusterCAs) -> ClusterCAs:
    """Phase 3 done (no replica trusts the old CAs any more): the old CAs and their keys go."""
    if cas.ca_phase != "switched":
        raise ValueError(f"the CA rotation cannot finish before the switch (phase: {cas.ca_phase})")
    return dataclasses.replace(cas, ca_rotation=None, previous_ca=None, previous_etcd_ca=None)


def first_service_ip(service_cidr: str = DEFAULT_SERVICE_CIDR) -> str:
    """The ClusterIP of the ``kubernetes`` service: the first host of the service range."""
    net = ipaddress.ip_network(service_cidr, strict=False)
    return str(net.network_address + 1)


def apiserver_sans(
    *, hostname: str, internal_ip: str, endpoint_ip: str, service_cidr: str = DEFAULT_SERVICE_CIDR
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IPs) of a replica's API-server certificate."""
    ips = (
        str(_ip(internal_ip, "internal_ip")),
        str(_ip(endpoint_ip, "endpoint_ip")),
        "127.0.0.1",
        first_service_ip(service_cidr),
    )
    dns = ("localhost", *KUBERNETES_DNS_NAMES, hostname)
    return tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))


def issue_replica_certs(
    cas: ClusterCAs,
    *,
    hostname: str,
    internal_ip: str,
    endpoint_ip: str,
    service_cidr: str = DEFAULT_SERVICE_CIDR,
    days: int | None = None,
    now: dt.datetime | None = None,
) -> ReplicaCerts:
    """Every leaf a replica needs.

    ``endpoint_ip`` is the cluster's static endpoint IP (the first replica's
    promoted IP, later the load balancer's). There is deliberately no way to
    add another IP: an ephemeral public IP must never be in a certificate.
    """
    lifetime = dt.timedelta(days=days) if days is not None else cas.lifetimes.leaf
    dns, ips = apiserver_sans(
        hostname=hostname, internal_ip=internal_ip, endpoint_ip=endpoint_ip, service_cidr=service_cidr
    )
    apiserver = issue(
        cas.ca,
        role="apiserver",
        common_name="kube-apiserver",
        dns_names=dns,
        ip_addresses=ips,
        server=True,
        lifetime=lifetime,
        now=now,
    )
    # etcd checks a peer's client certificate against the connection's source address;
    # 127.0.0.1 is there for connections from the same host (kubeadm's peer SANs have it too,
    # and on loopback test rigs every connection comes from 127.0.0.1)
    peer = issue(
        cas.etcd_ca,
        role="etcd-peer",
        common_name=f"{hostname}-etcd-peer",
        dns_names=[hostname, "localhost"],
        ip_addresses=[internal_ip, "127.0.0.1"],
        server=True,
        client=True,
        lifetime=lifetime,
        now=now,
    )
    # the server certificate carries clientAuth too: etcd's embedded gRPC gateway dials
    # its own gRPC server with it when --client-cert-auth is on (kubeadm does the same)
    server = issue(
        cas.etcd_ca,
        role="etcd-server",
        common_name=f"{hostname}-etcd-server",
        dns_names=[hostname, "localhost"],
        ip_addresses=[internal_ip, "127.0.0.1"],
        server=True,
        client=True,
        lifetime=lifetime,
        now=now,
    )
    client = issue(
        cas.etcd_ca,
        role="apiserver-etcd-client",
        common_name="kube-apiserver-etcd-client",
        organization="system:masters",
        dns_names=[hostname],
        client=True,
        lifetime=lifetime,
        now=now,
    )
    controller_manager, scheduler = (
        issue(cas.ca, role=f"{user}-client", common_name=f"system:{user}", client=True, lifetime=lifetime, now=now)
        for user in CONTROL_PLANE_USERS
    )
    return ReplicaCerts(
        hostname=hostname,
        internal_ip=str(_ip(internal_ip, "internal_ip")),
        endpoint_ip=str(_ip(endpoint_ip, "endpoint_ip")),
        apiserver=apiserver,
        etcd_peer=peer,
        etcd_server=server,
        apiserver_etcd_client=client,
        controller_manager=controller_manager,
        scheduler=scheduler,
    )


def node_tls(cas: ClusterCAs, replica: ReplicaCerts) -> dict[str, str]:
    """The ``NodeSpec.tls`` dict of a replica (keys of :data:`haplane.node.spec.TLS_FILES`).

    It holds private keys in clear: it is for a replica's node spec (whose private keys go to Secret
    Manager before its metadata is written; only a VM without a service account gets them in metadata)
    and :func:`haplane.node.spec.write_pki` only. Never log it or return it from a task.
    """
    tls = {
        "etcd-ca": cas.etcd_ca_bundle(),
        "etcd-peer-cert": replica.etcd_peer.cert_pem,
        "etcd-peer-key": replica.etcd_peer.key_pem.get_secret_value(),
        "etcd-server-cert": replica.etcd_server.cert_pem,
        "etcd-server-key": replica.etcd_server.key_pem.get_secret_value(),
        "ca": cas.ca_bundle(),
        "apiserver-cert": replica.apiserver.cert_pem,
        "apiserver-key": replica.apiserver.key_pem.get_secret_value(),
        "apiserver-etcd-client-cert": replica.apiserver_etcd_client.cert_pem,
        "apiserver-etcd-client-key": replica.apiserver_etcd_client.key_pem.get_secret_value(),
        "controller-manager-cert": replica.controller_manager.cert_pem,
        "controller-manager-key": replica.controller_manager.key_pem.get_secret_value(),
        "scheduler-cert": replica.scheduler.cert_pem,
        "scheduler-key": replica.scheduler.key_pem.get_secret_value(),
    }
    if cas.service_account is None:
        raise ValueError(f"cluster {cas.cluster} has no service-account key: run ensure_cluster_pki first")
    tls["service-account-key"] = cas.service_account.key_pem.get_secret_value()
    tls["service-account-pub"] = cas.service_account.public_bundle()
    assert set(tls) == set(TLS_FILES)
    return tls


def service_account_tls(keys: ServiceAccountKeys) -> dict[str, str]:
    """The service-account entries of ``NodeSpec.tls`` alone (what a key rotation re-delivers)."""
    return {"service-account-key": keys.key_pem.get_secret_value(), "service-account-pub": keys.public_bundle()}


# ---------------------------------------------------------------- inventory

_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def describe(cert_pem: str, role: str) -> CertInfo:
    """Public facts of one certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        eku = tuple(
            _EKU_NAMES.get(o, o.dotted_string)
            for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        eku = ()
    return CertInfo(
        role=role,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns,
        ip_addresses=ips,
        is_ca=is_ca,
        extended_key_usage=eku,
    )


def inventory(cas: ClusterCAs, replicas: Iterable[ReplicaCerts] = ()) -> list[CertInfo]:
    """Every certificate of the cluster (CAs, operator, each replica's leaves), with no key material."""
    out = [cas.ca.info(), cas.etcd_ca.info(), cas.operator.info()] + ca_rotation_infos(cas)
    for r in replicas:
        for leaf in r.leaves():
            info = leaf.info()
            out.append(CertInfo(**{**info.__dict__, "role": f"{r.hostname}/{leaf.role}"}))
    return out


def ca_rotation_infos(cas: ClusterCAs) -> list[CertInfo]:
    """The CAs of a rotation under way, as "next/<role>" and "previous/<role>"."""
    out = []
    for where, ca in (
        ("next", cas.next_ca),
        ("next", cas.next_etcd_ca),
        ("previous", cas.previous_ca),
        ("previous", cas.previous_etcd_ca),
    ):
        if ca is not None:
            out.append(describe(ca.cert_pem, f"{where}/{ca.role}"))
    return out
