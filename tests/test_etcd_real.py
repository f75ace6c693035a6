"""The etcd client against real etcd processes on loopback, with mutual TLS everywhere."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest

from haplane.cloud import pki
from haplane.cloud.etcd import (
    EndpointStatus,
    EndpointUnreachable,
    EtcdClient,
    EtcdError,
    EtcdNotLearnerReady,
    EtcdTLS,
    EtcdTLSError,
    EtcdTooManyLearners,
    EtcdUnavailable,
    EtcdUnhealthyCluster,
    promote_when_ready,
    remove_member_when_ready,
)
from haplane.core.quorum import assess, can_add, can_promote, can_remove, can_replace
from haplane.node import spec as node
from haplane.testing.poll import eventually

pytestmark = pytest.mark.timeout(120)


def leader_of(client: EtcdClient) -> int:
    return client.leader()[0]


def health_of(cluster, client: EtcdClient):
    """Member health as the flows observe it: status asked of every member's client URL."""
    members = client.member_list()
    urls = [u for m in members for u in m.client_urls[:1]]
    return assess(members, client.statuses(urls), client.alarms())


def test_one_member_grows_to_three_moves_leader_and_shrinks(etcd_cluster_factory, tmp_path):
    c = etcd_cluster_factory(1, cluster="grow")
    client = c.client()
    [m0] = client.member_list()
    assert m0.name == "m0" and not m0.is_learner and m0.hex_id == format(m0.id, "x")
    assert client.put("/registry/before", b"written-with-one") > 0
    assert client.alarms() == []

    # a learner that has not started cannot be promoted; etcd allows one learner at a time
    assert can_add(health_of(c, client)).allowed
    learner, proc1 = c.join("m1", wait=False)
    assert learner.is_learner and learner.name == ""
    with pytest.raises(EtcdTooManyLearners):
        client.member_add([node.peer_url(c.next_ip())])
    decision = can_add(health_of(c, client))
    assert not decision.allowed and "already being added" in decision.reason
    c.wait_started(proc1)
    m1 = promote_when_ready(client, learner.id, timeout=20)
    assert {m.name for m in m1 if not m.is_learner} == {"m0", "m1"}
    d = can_add(health_of(c, client))
    assert d.allowed

    # third member: add as learner, start with initial-cluster-state=existing, promote once caught up
    learner2, proc2 = c.join("m2")
    h = health_of(c, client)
    assert any(x.id == learner2.id and x.is_learner for x in h)
    eventually(
        lambda: can_promote(health_of(c, client), learner2.id).allowed, 20, "learner m2 to catch up", interval=0.2
    )
    promote_when_ready(client, learner2.id, timeout=20)
    c.wait_healthy(c.running())
    members = client.member_list()
    assert len(members) == 3 and not any(m.is_learner for m in members)
    assert promote_when_ready(client, learner2.id, timeout=5)  # idempotent: already voting

    # data written with one member is read back through the newest member alone
    newest = c.client([proc2.client_url])
    assert newest.get("/registry/before") == b"written-with-one"
    assert newest.get("/registry/missing") is None

    # move leadership to m2, then remove the original member (leadership moves away first)
    client = c.client()  # all three endpoints
    client.move_leader(learner2.id)
    assert eventually(lambda: leader_of(client) == learner2.id, 10, "m2 to lead", interval=0.2)
    statuses = [s for s in client.statuses() if isinstance(s, EndpointStatus)]
    assert len(statuses) == 3 and {s.leader_id for s in statuses} == {learner2.id}
    assert sum(s.is_leader for s in statuses) == 1
    assert can_remove(health_of(c, client), m0.id).allowed
    remove_member_when_ready(client, m0.id)
    c.remove_proc("m0")
    after = c.client()
    assert {m.name for m in after.member_list()} == {"m1", "m2"}
    assert after.get("/registry/before") == b"written-with-one"
    after.put("/registry/after", "two")
    assert after.get("/registry/after") == b"two"

    snap = tmp_path / "grow.db"
    size = after.snapshot(snap)
    assert size > 0 and snap.stat().st_size == size
    assert not snap.with_name("grow.db.part").exists()


def test_three_members_replace_a_dead_one(etcd_cluster_factory):
    c = etcd_cluster_factory(3, cluster="three")
    client = c.client()
    client.put("k", "v1")
    members = {m.name: m for m in client.member_list()}

    # m2 dies; a client whose first endpoint is the dead one still works
    dead = c.members["m2"]
    dead_url = dead.client_url
    dead.kill()
    client = c.client([dead_url, c.members["m0"].client_url, c.members["m1"].client_url], timeout=2)
    assert client.get("k") == b"v1"
    statuses = client.statuses()
    assert isinstance(statuses[0], EndpointUnreachable) and dead_url in statuses[0].endpoint
    assert all(isinstance(s, EndpointStatus) for s in statuses[1:])
    assert not client.health(dead_url).healthy
    with pytest.raises(EtcdUnavailable) as err:
        client.status(dead_url)
    assert dead_url in str(err.value)

    health = assess(client.member_list(), statuses, client.alarms())
    bad = [h for h in health if not h.healthy]
    assert [h.name for h in bad] == ["m2"] and bad[0].reason == "unreachable"
    assert can_replace(health, [members["m2"].id]).allowed
    assert not can_remove(health, members["m0"].id).allowed  # would leave 1 healthy of 2

    # replace: remove first (3 -> 2), then add a learner in the same "zone", promote (2 -> 3)
    if leader_of(client) == members["m2"].id:  # pragma: no cover - a dead member cannot lead for long
        eventually(lambda: leader_of(client) != members["m2"].id, 10, "a new leader", interval=0.2)
    remove_member_when_ready(client, members["m2"].id)
    c.remove_proc("m2")
    learner, _ = c.join("m3")
    promote_when_ready(client, learner.id, timeout=20)
    c.wait_healthy(c.running())
    client = c.client()
    assert {m.name for m in client.member_list()} == {"m0", "m1", "m3"}
    assert all(h.healthy for h in health_of(c, client))
    assert c.client([c.members["m3"].client_url]).get("k") == b"v1"


def test_five_members_lose_two_keep_quorum_and_replace(etcd_cluster_factory):
    c = etcd_cluster_factory(5, cluster="five")
    client = c.client()
    client.put("five", "ok")
    ids = {m.name: m.id for m in client.member_list()}
    leader = leader_of(client)
    # move leadership to m4, then take two followers down: 3 of 5 still commit
    target = ids["m4"] if leader != ids["m4"] else ids["m3"]
    client.move_leader(target)
    assert eventually(lambda: leader_of(client) == target, 10, "leadership to move", interval=0.2)
    victims = [n for n in ("m0", "m1", "m2", "m3") if ids[n] != target][:2]
    for n in victims:
        c.members[n].kill()
    client = c.client(timeout=3)  # live endpoints only
    client.put("five", "still")
    assert client.get("five") == b"still"
    all_client = c.client([node.client_url(c.members[n].ip) for n in c.members], timeout=2)
    health = assess(client.member_list(), all_client.statuses(), client.alarms())
    assert sorted(h.name for h in health if not h.healthy) == sorted(victims)
    # Cluster API: 5 tolerates one more failure besides the member being removed
    assert can_remove(health, ids[victims[0]]).allowed
    assert can_replace(health, [ids[v] for v in victims]).allowed
    healthy_follower = next(n for n in c.members if n not in victims and ids[n] != target)
    assert not can_remove(health, ids[healthy_follower]).allowed

    # etcd refuses to add while a voting member is unreachable: remove both failed members first
    assert not can_add(health).allowed
    with pytest.raises(EtcdUnhealthyCluster):
        client.member_add([node.peer_url(c.next_ip())])
    for n in victims:
        health = health_of(c, client)
        assert can_remove(health, ids[n]).allowed
        remove_member_when_ready(client, ids[n])
        c.remove_proc(n)
    assert can_add(health_of(c, client)).allowed
    learner, _ = c.join("m5")
    promote_when_ready(client, learner.id, timeout=30)
    assert len([m for m in client.member_list() if not m.is_learner]) == 4
    assert c.client([c.members["m5"].client_url]).get("five") == b"still"


def test_clients_without_the_right_certificate_are_refused(etcd_cluster_factory, tmp_path):
    c = etcd_cluster_factory(1, cluster="authn")
    m0 = c.members["m0"]
    c.client().put("secret", "s")

    # plain HTTP to the TLS port: no answer with data
    plain_url = f"http://{m0.ip}:{node.ETCD_CLIENT_PORT}"
    try:
        r = httpx.post(f"{plain_url}/v3/kv/range", json={"key": "c2VjcmV0"}, timeout=3, trust_env=False)
        assert r.status_code == 400 and "kvs" not in r.text
    except httpx.TransportError:
        pass
    with pytest.raises(EtcdError):
        EtcdClient([plain_url], timeout=3).get("secret")

    # a client certificate from another CA (trusting the right server CA)
    other = pki.create_cluster_cas("intruder")
    forged = EtcdTLS(ca_pem=c.cas.etcd_ca.cert_pem, cert_pem=other.operator.cert_pem, key_pem=other.operator.key_pem)
    with pytest.raises(EtcdUnavailable) as err:
        EtcdClient([m0.client_url], forged, timeout=3).get("secret")
    assert m0.client_url in str(err.value)

    # no client certificate at all
    no_cert = ssl.create_default_context(cadata=c.cas.etcd_ca.cert_pem)
    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"{m0.client_url}/v3/kv/range", json={"key": "c2VjcmV0"}, verify=no_cert, timeout=3, trust_env=False
        ).raise_for_status()

    # the client does not trust a server from another CA either
    with pytest.raises(EtcdTLSError):
        EtcdClient([m0.client_url], EtcdTLS.from_cas(other), timeout=3).get("secret")


def test_a_peer_from_another_ca_cannot_join(etcd_cluster_factory):
    c = etcd_cluster_factory(1, cluster="peers")
    client = c.client()
    other = pki.create_cluster_cas("intruder")
    ip = c.next_ip()
    foreign_tls = c.tls_for("evil", ip, cas=other)
    learner, proc = c.join("evil", wait=False, tls=foreign_tls, ip=ip)

    # bounded: the foreign peer exits (cannot fetch the cluster over mutual TLS) or never starts
    deadline = time.monotonic() + 15
    while proc.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    members = {m.id: m for m in client.member_list()}
    assert members[learner.id].is_learner and not members[learner.id].started
    assert not proc.alive or not c.client([proc.client_url], timeout=1).health(proc.client_url).healthy
    with pytest.raises(EtcdNotLearnerReady):
        client.member_promote(learner.id)
    with pytest.raises(EtcdNotLearnerReady):
        promote_when_ready(client, learner.id, timeout=1.5, interval=0.5)

    # sweep the member that never started
    health = health_of(c, client)
    stuck = next(h for h in health if h.id == learner.id)
    assert stuck.reason == "never started"
    assert can_remove(health, learner.id).allowed
    remove_member_when_ready(client, learner.id)
    assert [m.name for m in client.member_list()] == ["m0"]
    assert client.health(c.members["m0"].client_url).healthy
