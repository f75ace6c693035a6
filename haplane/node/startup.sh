#!/bin/bash
# haplane replica startup script, rendered by haplane/node/startup.py from haplane/node/startup.sh
# (do not edit on the VM).
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

# unseal SEALED KEYFILE OUT SHA256 SNAPSHOT_ID: open a sealed snapshot, check it is the snapshot the
# restore asks for, write it to OUT. The Python is haplane/node/sealed.py verbatim: the one
# implementation of the format, which the workers and the emulator's VMs open snapshots with too.
unseal() {
  "$PYTHON3" - "$@" <<'PY'
@UNSEAL_PY@
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
