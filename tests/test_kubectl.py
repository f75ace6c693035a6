"""kubectl against a 3-replica emulator cluster, with the kubeconfig of ``haplane kubeconfig``.

The API stand-in of each replica serves what kubectl asks for; the controller-manager and scheduler
stand-ins elect a leader through it with Leases kept in the cluster's etcd. kubectl is Debian's
``kubernetes-client`` (1.20; .ci/run installs it), or the one ``HAPLANE_KUBECTL`` names.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import stat
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.health_check import health_check
from flows.remove_replica import remove_replica
from haplane import kubeconfig
from haplane.cli import main as haplane
from haplane.cloud.pki import create_cluster_cas
from haplane.emulator.kubeapi import MASTER_LEASE_TTL_S
from haplane.emulator.vm import LEASE_DURATION_S, RETRY_PERIOD_S
from haplane.node.startup import KUBERNETES_VERSION
from haplane.testing import REGION, ZONES

pytestmark = [pytest.mark.long, pytest.mark.timeout(900), pytest.mark.usefixtures("prefect_api")]

KUBECTL = os.environ.get("HAPLANE_KUBECTL") or shutil.which("kubectl")
if not KUBECTL:
    pytest.skip(
        "kubectl not found: apt-get install kubernetes-client (or set HAPLANE_KUBECTL)", allow_module_level=True
    )


def kubectl(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [KUBECTL, "--kubeconfig", str(config), "--request-timeout=10s", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result


def _endpoint_ips(config: Path) -> list[str]:
    ep = json.loads(kubectl(config, "get", "endpoints", "kubernetes", "-n", "default", "-o", "json").stdout)
    return sorted(a["ip"] for s in ep["subsets"] for a in s["addresses"])


def _holders(config: Path) -> dict[str, str]:
    leases = json.loads(kubectl(config, "get", "leases", "-n", "kube-system", "-o", "json").stdout)["items"]
    return {lease["metadata"]["name"]: lease["spec"].get("holderIdentity", "") for lease in leases}


def _both_held(config: Path) -> dict[str, str] | None:
    holders = _holders(config)
    return holders if len(holders) == 2 and all(holders.values()) else None


def _wait(what: str, probe, timeout: float, step: float = 0.5):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"{what} not seen within {timeout:.0f} s (last: {last!r})")


def _create(cluster: str, tmp_path: Path, capsys) -> tuple[list[dict], Path]:
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    config = tmp_path / "admin.kubeconfig"
    capsys.readouterr()
    assert haplane(["kubeconfig", cluster, "--ttl", "1h", "-o", str(config)]) == 0
    out = capsys.readouterr()
    assert "PRIVATE KEY" not in out.out + out.err and str(config) in out.out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    return rows, config


def test_kubectl_sees_version_readyz_endpoints_and_leases(cloud, tmp_path, capsys):
    cluster = f"kctl-{uuid.uuid4().hex[:4]}"
    rows, config = _create(cluster, tmp_path, capsys)
    ips = sorted(r["internal IP"] for r in rows)
    try:
        version = json.loads(kubectl(config, "version", "-o", "json").stdout)
        assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
        assert kubectl(config, "get", "--raw", "/readyz").stdout.strip() == "ok"
        assert _endpoint_ips(config) == ips
        table = kubectl(config, "get", "endpoints", "kubernetes", "-n", "default").stdout
        assert all(f"{ip}:6443" in table for ip in ips), table
        holders = _wait("a holder for both Leases", lambda: _both_held(config), 30)
        assert set(holders) == {"kube-controller-manager", "kube-scheduler"}
        names = {r["replica"] for r in rows}
        for holder in holders.values():
            hostname, _, uid = holder.partition("_")
            assert hostname in names and uuid.UUID(uid)
        assert all(h in kubectl(config, "get", "leases", "-n", "kube-system").stdout for h in holders.values())

        # a client certificate of another CA is refused, and so is none
        foreign = tmp_path / "foreign.kubeconfig"
        other = create_cluster_cas("someone-else")
        server = json.loads(config.read_text())["clusters"][0]["cluster"]["server"]
        ca = json.loads(config.read_text())["clusters"][0]["cluster"]["certificate-authority-data"]
        text = json.loads(kubeconfig.render(cluster, server, "", kubeconfig.issue_admin(other, kubeconfig.MAX_TTL)))
        text["clusters"][0]["cluster"]["certificate-authority-data"] = ca
        kubeconfig.write_private(foreign, json.dumps(text))
        refused = kubectl(foreign, "get", "endpoints", "kubernetes", "-n", "default", check=False)
        assert refused.returncode != 0 and "10." not in refused.stdout, refused.stdout
        # no client certificate: 401 (kubectl would ask for a password; ask with httpx instead)
        ctx = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
        anonymous = httpx.get(f"{server}/api/v1/namespaces/default/endpoints/kubernetes", verify=ctx, timeout=10)
        assert anonymous.status_code == 401 and anonymous.json()["reason"] == "Unauthorized", anonymous.text

        # remove-replica: the removed API server leaves the list within its lease. It deletes its own
        # key when it stops while its local etcd still answers; when its member was removed first (as
        # remove-replica does), the key's 15 s etcd lease runs out, as with kube-apiserver.
        victim = next(r for r in rows if r["role"] == "follower")
        remove_replica(cluster=cluster, zone=victim["zone"], replica_name=victim["replica"])
        left = sorted(set(ips) - {victim["internal IP"]})
        _wait("two IPs in the kubernetes endpoints", lambda: _endpoint_ips(config) == left, MASTER_LEASE_TTL_S + 10)
    finally:
        delete_cluster(cluster=cluster)


def test_killing_the_controller_manager_leader_moves_its_lease(cloud, prefect_api, tmp_path, capsys):
    cluster = f"klead-{uuid.uuid4().hex[:4]}"
    rows, config = _create(cluster, tmp_path, capsys)
    by_name = {r["replica"]: r for r in rows}
    try:
        holder = _wait(
            "a controller-manager leader", lambda: _holders(config).get("kube-controller-manager"), 30
        ).partition("_")[0]
        cloud.admin.kill_vm("haplane-test", by_name[holder]["zone"], holder)
        killed = time.monotonic()
        # the kubeconfig's server is the load balancer, which sends kubectl to a live replica
        new = _wait(
            "another controller-manager leader",
            lambda: _other_leader(config, holder),
            LEASE_DURATION_S + 3 * RETRY_PERIOD_S,
            step=0.25,
        )
        took = time.monotonic() - killed
        print(f"controller-manager lease moved from {holder} to {new} in {took:.1f} s")
        assert took <= LEASE_DURATION_S + RETRY_PERIOD_S + 1.0  # + 1 s: kubectl's own round trips
        assert new in by_name and new != holder
        health_check(cluster=cluster, dry_run=True)
        artifact = _latest_artifact(prefect_api, f"{cluster}-health")
        assert holder in artifact and new in artifact, artifact
        assert "kube-controller-manager" in artifact
    finally:
        delete_cluster(cluster=cluster)


def _other_leader(config: Path, old: str) -> str | None:
    leader = _holders(config).get("kube-controller-manager", "").partition("_")[0]
    return leader if leader and leader != old else None


def _latest_artifact(prefect_api, key: str) -> str:
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    found = httpx.post(f"{prefect_api.url}/artifacts/filter", json=body, timeout=10).json()
    assert found, f"no artifact {key}"
    return found[0]["data"]
