"""etcd over mutual TLS with the operator's client certificate: the client, and the waits on etcd as a
whole (quorum, cluster version) that plans (``tasks/kinds/quorum.py``) and rotate-certificates share.
A replica's membership changes are the ``tasks/kinds/etcd_member.py`` steps.
"""

from __future__ import annotations

import time
from contextlib import closing

from prefect import get_run_logger

from haplane.cloud.etcd import EtcdClient, EtcdError
from haplane.core.versions import VersionRefused, minor
from haplane.node.spec import client_url
from tasks.pki import operator_tls
from tasks.steps import probe


def operator_client(cluster: str, ips: list[str], timeout: float = 5.0, connection: str | None = None) -> EtcdClient:
    """An etcd client of the cluster's members at ``ips``, with the operator's certificate (inside a task only)."""
    return EtcdClient([client_url(ip) for ip in ips], tls=operator_tls(cluster, connection), timeout=timeout)


def cluster_version_settled(versions: list[tuple[str, str]]) -> bool:
    """Whether etcd has decided its cluster version: every member reports the same one, and it is the
    lowest minor the members run. A new cluster reports 3.0.0 (or ``not_decided``) for its first
    seconds, until the leader has read every member's version; a table or an upgrade plan read in that
    moment would take 3.0 for the cluster's version."""
    clusters = {c for _, c in versions}
    if not versions or len(clusters) != 1:
        return False
    try:
        return minor(next(iter(clusters))) == min(minor(s) for s, _ in versions)
    except VersionRefused:  # "not_decided", or a member that did not say its version
        return False


@probe(task_run_name="{step}")
def wait_quorum(
    cluster: str,
    ips: list[str],
    expect_voting: int,
    timeout: float = 180.0,
    step: str = "quorum",
    connection: str | None = None,
) -> None:
    """Wait until every endpoint answers a linearizable read, ``expect_voting`` members vote and the
    cluster version is decided (:func:`cluster_version_settled`)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with closing(operator_client(cluster, ips, timeout=3.0, connection=connection)) as etcd:
                members = etcd.member_list()
                voting = [m for m in members if not m.is_learner and m.started]
                unhealthy = [h.endpoint for h in (etcd.health(client_url(ip)) for ip in ips) if not h.healthy]
                if len(voting) == expect_voting and not unhealthy:
                    versions = [etcd.version(client_url(ip)) for ip in ips]
                    if cluster_version_settled(versions):
                        get_run_logger().info(
                            "etcd healthy: %d voting members, cluster version %s", len(voting), versions[0][1]
                        )
                        return
                    last = "the cluster version is not decided yet: " + ", ".join(
                        f"{ip}: server {s}, cluster {c}" for ip, (s, c) in zip(ips, versions, strict=True)
                    )
                else:
                    last = f"{len(voting)} of {expect_voting} voting members started; unhealthy: {unhealthy or 'none'}"
        except EtcdError as exc:
            last = str(exc)
        time.sleep(1.0)
    raise TimeoutError(f"etcd of {cluster} not healthy after {timeout:.0f}s: {last}")


@probe(task_run_name="{step}")
def wait_cluster_version(
    cluster: str,
    ips: list[str],
    expect: str,
    timeout: float = 120.0,
    step: str = "cluster-version",
    connection: str | None = None,
) -> str:
    """Wait until every member reports ``expect`` (X.Y) as its etcd version and as the cluster version
    (``GET /version``): etcd moves the cluster version once the last older member is gone."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with closing(operator_client(cluster, ips, timeout=3.0, connection=connection)) as etcd:
                seen = [etcd.version(client_url(ip)) for ip in ips]
            if all(s.startswith(expect + ".") and c.startswith(expect + ".") for s, c in seen):
                get_run_logger().info("every member runs etcd %s; the cluster version is %s", expect, seen[0][1])
                return seen[0][1]
            last = ", ".join(f"{ip}: server {s}, cluster {c}" for ip, (s, c) in zip(ips, seen, strict=True))
        except EtcdError as exc:
            last = str(exc)
        time.sleep(1.0)
    raise TimeoutError(f"the etcd cluster version of {cluster} did not become {expect} after {timeout:.0f}s: {last}")
