"""etcd tasks: membership changes (learner first) and quorum waits, over mutual TLS.

Every task connects with the operator's client certificate from the cluster's
PKI block, looks at the membership first, and does nothing when the change
is already there.
"""

from __future__ import annotations

import time
from contextlib import closing

from prefect import get_run_logger

from haplane.etcd import (
    EtcdClient,
    EtcdError,
    add_member_when_ready,
    promote_when_ready,
    remove_member_when_ready,
)
from haplane.node import client_url, peer_url
from tasks.pki import operator_tls
from tasks.steps import Change, checkpoint, probe


def _client(cluster: str, ips: list[str], timeout: float = 5.0, connection: str | None = None) -> EtcdClient:
    return EtcdClient([client_url(ip) for ip in ips], tls=operator_tls(cluster, connection), timeout=timeout)


@checkpoint
def add_learner(change: Change, step: str, member_ips: list[str], new_ip: str) -> int:
    """Add the new replica as a non-voting learner; returns its member id."""
    with closing(_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        for m in etcd.member_list():
            if peer_url(new_ip) in m.peer_urls:
                get_run_logger().info("member %s for %s already exists", m.hex_id, new_ip)
                return m.id
        added = add_member_when_ready(etcd, [peer_url(new_ip)], learner=True)
        get_run_logger().info("added learner %s for %s", added.member.hex_id, new_ip)
        return added.member.id


@probe(retries=2, retry_delay_seconds=3, task_run_name="{step}")
def promote(
    change: Change, member_ips: list[str], member_id: int, name: str, timeout: float = 120.0, step: str = "promote"
) -> None:
    """Promote the learner once it has caught up with the leader (retried until then)."""
    with closing(_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        member = next((m for m in etcd.member_list() if m.id == member_id), None)
        if member is None:
            raise RuntimeError(f"etcd member {member_id:x} ({name}) is not in the cluster")
        if not member.is_learner:
            return
        promote_when_ready(etcd, member_id, timeout=timeout)
        get_run_logger().info("promoted %s (%x) to a voting member", name, member_id)


@probe(retries=2, retry_delay_seconds=3, task_run_name="{step}")
def move_leader_away(
    change: Change, member_ips: list[str], member_id: int, name: str, healthy_ids: list[int], step: str = "move-leader"
) -> None:
    """If ``member_id`` leads, hand leadership to a healthy voting member first."""
    with closing(_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        leader_id, _ = etcd.leader()
        if leader_id != member_id:
            return
        target = next((i for i in healthy_ids if i != member_id), None)
        if target is None:
            raise RuntimeError(f"{name} leads etcd and no other healthy voting member can take over")
        etcd.move_leader(target)
        get_run_logger().info("moved etcd leadership from %s to %x", name, target)


@checkpoint
def remove_member(change: Change, step: str, member_ips: list[str], member_id: int, name: str) -> None:
    with closing(_client(change.cluster, member_ips, connection=change.connection)) as etcd:
        if not any(m.id == member_id for m in etcd.member_list()):
            return
        remove_member_when_ready(etcd, member_id)
        get_run_logger().info("removed etcd member %s (%x)", name, member_id)


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def cluster_version_settled(versions: list[tuple[str, str]]) -> bool:
    """Whether etcd has decided its cluster version: every member reports the same one, and it is the
    lowest minor the members run. A new cluster reports 3.0.0 (or ``not_decided``) for its first
    seconds, until the leader has read every member's version; a table or an upgrade plan read in that
    moment would take 3.0 for the cluster's version."""
    servers = [_minor(s) for s, _ in versions]
    clusters = {c for _, c in versions}
    if not versions or len(clusters) != 1 or not all(servers):
        return False
    return _minor(next(iter(clusters))) == min(servers)


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
            with closing(_client(cluster, ips, timeout=3.0, connection=connection)) as etcd:
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
            with closing(_client(cluster, ips, timeout=3.0, connection=connection)) as etcd:
                seen = [etcd.version(client_url(ip)) for ip in ips]
            if all(s.startswith(expect + ".") and c.startswith(expect + ".") for s, c in seen):
                get_run_logger().info("every member runs etcd %s; the cluster version is %s", expect, seen[0][1])
                return seen[0][1]
            last = ", ".join(f"{ip}: server {s}, cluster {c}" for ip, (s, c) in zip(ips, seen, strict=True))
        except EtcdError as exc:
            last = str(exc)
        time.sleep(1.0)
    raise TimeoutError(f"the etcd cluster version of {cluster} did not become {expect} after {timeout:.0f}s: {last}")
