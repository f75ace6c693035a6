"""The worker killed (SIGKILL) at every step, then resumed as the README says (long suite).

create-cluster (3 replicas) and delete-cluster, replace-replica of a dead replica and remove-replica,
and the health check's replacement: each change is killed at every GCE mutating step in turn (and
after its etcd member add and removal, and mid-way through a replica's keys) and resumed each time
with the killed run's change id after ``haplane unlock CLUSTER`` (*Resuming*; see
tests/fixtures/kills.py), on one cluster per test. Then, from outside haplane (the
google-cloud-compute client, etcd's own JSON API, Secret Manager, the emulator's call log, the files
Prefect keeps):

- converged to the planned size: RUNNING VMs, as many voting etcd members named like them, no
  learner, the pool holding exactly them, the load balancer on the endpoint IP;
- no orphan: no VM, etcd member or learner, pool member, or Secret Manager secret of a replica that
  is gone; after delete, nothing of the cluster in GCE, no secret, no spec, PKI or lock;
- no mutating call sent twice: every requestId once, none answered as a duplicate or rejected, and
  each method called as often as an uninterrupted run calls it;
- no key material in the Prefect server's home;
- for replace and remove: quorum never lost (linearizable reads through the survivors throughout).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from blocks.pki import KEY_NAMES
from flows.create_cluster import create_cluster
from haplane.cloud.secretstore import SecretStore
from haplane.core.topology import LABEL_CLUSTER, ClusterNames
from haplane.testing import REGION, ZONES
from haplane.testing.poll import eventually
from tasks.cluster import lock_name
from tasks.keys import key_secret_id
from tasks.pki import load_cas
from tests.fixtures.cluster import PROJECT, api_through
from tests.fixtures.kills import KillPoint, Walk, mutating, sent_once
from tests.test_fault_matrix import QuorumWatcher, _key_material, _leftovers, _members

pytestmark = [pytest.mark.long, pytest.mark.timeout(900), pytest.mark.usefixtures("prefect_api")]

INSERT, SET_METADATA, DELETE = "compute.instances.insert", "compute.instances.setMetadata", "compute.instances.delete"
POOL_ADD, POOL_REMOVE = "compute.targetPools.addInstance", "compute.targetPools.removeInstance"


def _call(module: str, flow: str, **params) -> callable:
    """The code a flow's process runs: the flow called with ``params`` and the change id."""

    def code(change_id: str | None) -> str:
        given = {**params, "change_id": change_id} if change_id else params
        args = ", ".join(f"{k}={v!r}" for k, v in given.items())
        return f"from flows.{module} import {flow}\n{flow}({args})\n"

    return code


def _secrets(cloud, cluster: str, replica: str | None = None) -> list[str]:
    return SecretStore.for_gce(cloud.gce).list(cluster, replica)


def _member_list(cluster: str, ips: list[str]) -> list[dict]:
    """etcd's member list, read again while a member answers with an error (an election under way)."""

    def read() -> list[dict] | None:
        try:
            return _members(cluster, ips)
        except KeyError:  # an error answer instead of the list
            return None

    return eventually(read, 30, f"etcd's member list of {cluster} through {ips}")


def _converged(cloud, cluster: str, size: int) -> list[str]:
    """The cluster is whole at ``size`` replicas and holds nothing of a replica that is gone."""
    gce, names = cloud.gce, ClusterNames(cluster)
    vms = gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    vm_names = sorted(v.name for v in vms)
    assert len(vms) == size and all(v.status == "RUNNING" for v in vms), [(v.name, v.status) for v in vms]
    members = _member_list(cluster, [v.internal_ip for v in vms])
    assert sorted(m.get("name", "") for m in members) == vm_names, members
    assert not [m for m in members if m.get("isLearner")], members
    pool = gce.get_target_pool(REGION, names.target_pool)
    assert sorted(link.rsplit("/", 1)[-1] for link in pool.instances) == vm_names
    endpoint = gce.get_address(REGION, names.address).address
    assert gce.get_forwarding_rule(REGION, names.forwarding_rule).ip == endpoint
    assert api_through(endpoint, load_cas(cluster).ca.cert_pem).status_code == 200
    for n in (names.firewall_etcd_peer, names.firewall_etcd_client, names.firewall_apiserver, names.health_check):
        kind = "health_check" if n == names.health_check else "firewall"
        assert gce.description_of(kind, n) is not None, n
    # each replica's private keys, and none of a replica that is gone (beside the cluster's own keys, which
    # live in Secret Manager too: tasks/keys.py)
    per_replica = {v: _secrets(cloud, cluster, v) for v in vm_names}
    assert all(per_replica.values()), per_replica
    store = SecretStore.for_gce(cloud.gce)
    cluster_keys = {store.name(key_secret_id(cluster, n)) for n in KEY_NAMES}
    replica_secrets = [s for s in _secrets(cloud, cluster) if s not in cluster_keys]
    assert sorted(replica_secrets) == sorted(s for ss in per_replica.values() for s in ss)
    return vm_names


def _not_a_member(cluster: str, replica: str, ips: list[str]) -> callable:
    def check() -> None:
        assert replica not in [m.get("name") for m in _member_list(cluster, ips)], f"{replica} is still a member"

    return check


def _learner_added(cluster: str, ips: list[str]) -> callable:
    def check() -> None:
        members = _member_list(cluster, ips)
        assert [m for m in members if m.get("isLearner")], f"no learner at the kill: {members}"

    return check


def test_create_and_delete_killed_at_every_step(cloud, prefect_api, tmp_path):
    cluster = "kill-cd"
    create = Walk(
        cloud,
        prefect_api,
        cluster,
        "create-cluster",
        _call("create_cluster", "create_cluster", cluster=cluster, region=REGION, zones=ZONES, replicas=3),
        tmp_path,
        action="create",
    )
    create.run(
        [
            KillPoint("address", {"compute.addresses.insert": 1}),
            KillPoint("firewalls", {"compute.firewalls.insert": 3}),
            KillPoint("health-check", {"compute.httpHealthChecks.insert": 1}),
            KillPoint("target-pool", {"compute.targetPools.insert": 1}),
            # the forwarding rule is submitted in the background, then the VMs: killed while both are held
            KillPoint("forwarding-rule+vms", {"compute.forwardingRules.insert": 1, INSERT: 3}),
            KillPoint("configure: after 2 of the first replica's keys", secrets=2),
            KillPoint("configure: metadata", {SET_METADATA: 3}),
            KillPoint("pool-members", {POOL_ADD: 1}),
        ]
    )
    assert len(create.killed) == 8
    _converged(cloud, cluster, 3)
    assert sent_once(mutating(cloud)) == Counter(
        {
            "compute.addresses.insert": 1,
            "compute.firewalls.insert": 3,
            "compute.httpHealthChecks.insert": 1,
            "compute.targetPools.insert": 1,
            "compute.forwardingRules.insert": 1,
            INSERT: 3,
            SET_METADATA: 3,
            POOL_ADD: 1,
        }
    )

    cloud.admin.clear_calls()
    delete = Walk(
        cloud,
        prefect_api,
        cluster,
        "delete-cluster",
        _call("delete_cluster", "delete_cluster", cluster=cluster),
        tmp_path / "delete",
        action="delete",
    )
    delete.log_dir.mkdir()
    delete.run(
        [
            KillPoint("forwarding-rule", {"compute.forwardingRules.delete": 1}),
            KillPoint("target-pool", {"compute.targetPools.delete": 1}),
            KillPoint("health-check", {"compute.httpHealthChecks.delete": 1}),
            KillPoint("vms", {DELETE: 3}),
            KillPoint("address", {"compute.addresses.delete": 1}),
            KillPoint("firewalls", {"compute.firewalls.delete": 3}),
        ]
    )
    assert _leftovers(cloud, cluster) == []
    assert load_cas(cluster) is None and _secrets(cloud, cluster) == []
    limit = httpx.get(f"{prefect_api.url}/v2/concurrency_limits/{lock_name(cluster)}", timeout=10)
    assert limit.status_code == 404, limit.text
    assert sent_once(mutating(cloud)) == Counter(
        {
            "compute.forwardingRules.delete": 1,
            "compute.targetPools.delete": 1,
            "compute.httpHealthChecks.delete": 1,
            DELETE: 3,
            "compute.addresses.delete": 1,
            "compute.firewalls.delete": 3,
        }
    )
    assert _key_material(Path(prefect_api.home)) == []


def test_replace_and_remove_killed_at_every_step(cloud, prefect_api, tmp_path):
    cluster = "kill-rr"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    victim = next(r for r in rows if r["zone"] == ZONES[1])
    survivors = [r for r in rows if r is not victim]
    ips = [r["internal IP"] for r in survivors]
    cloud.admin.kill_vm(PROJECT, ZONES[1], victim["replica"])  # the health check's case: a dead replica
    cloud.admin.clear_calls()

    replace = Walk(
        cloud,
        prefect_api,
        cluster,
        "replace-replica",
        _call("replace_replica", "replace_replica", cluster=cluster, replica_name=victim["replica"]),
        tmp_path,
        action="replace",
    )
    with QuorumWatcher(cluster, ips) as watcher:
        replace.run(
            [
                KillPoint("remove/pool-remove", {POOL_REMOVE: 1}),
                KillPoint(
                    "remove/delete-vm: after the member removal",
                    {DELETE: 1},
                    check=_not_a_member(cluster, victim["replica"], ips),
                ),
                KillPoint("add/vm", {INSERT: 1}),
                KillPoint("add/configure: after 2 of its keys", secrets=2),
                KillPoint(
                    "add/configure: metadata, after the learner add",
                    {SET_METADATA: 1},
                    check=_learner_added(cluster, ips),
                ),
                KillPoint("add/pool-add", {POOL_ADD: 1}),
            ]
        )
    assert watcher.samples > 5 and watcher.worst < 10.0, (
        f"no linearizable read for {watcher.worst:.1f} s ({watcher.errors} of {watcher.samples} samples failed)"
    )
    replicas = _converged(cloud, cluster, 3)
    assert victim["replica"] not in replicas
    assert sorted(v.zone for v in cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})) == ZONES
    assert sent_once(mutating(cloud)) == Counter({POOL_REMOVE: 1, DELETE: 1, INSERT: 1, SET_METADATA: 1, POOL_ADD: 1})

    # remove-replica by zone, as the README's form has it: the replica in the last zone
    cloud.admin.clear_calls()
    leaving = next(r for r in survivors if r["zone"] == ZONES[2])["replica"]
    staying = [
        v.internal_ip for v in cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster}) if v.name != leaving
    ]
    remove = Walk(
        cloud,
        prefect_api,
        cluster,
        "remove-replica",
        _call("remove_replica", "remove_replica", cluster=cluster, zone=ZONES[2]),
        tmp_path / "remove",
        action="remove",
    )
    remove.log_dir.mkdir()
    with QuorumWatcher(cluster, staying) as watcher:
        remove.run(
            [
                KillPoint("pool-remove", {POOL_REMOVE: 1}),
                KillPoint(
                    "delete-vm: after the member removal", {DELETE: 1}, check=_not_a_member(cluster, leaving, staying)
                ),
            ]
        )
    assert watcher.samples > 5 and watcher.worst < 10.0, (
        f"no linearizable read for {watcher.worst:.1f} s ({watcher.errors} of {watcher.samples} samples failed)"
    )
    replicas = _converged(cloud, cluster, 2)
    assert leaving not in replicas
    assert sent_once(mutating(cloud)) == Counter({POOL_REMOVE: 1, DELETE: 1})
    assert _key_material(Path(prefect_api.home)) == []


def test_health_check_replacement_killed_at_every_step(cloud, prefect_api, tmp_path):
    """The health check's replacement (its replace-replica subflow) killed with the check's process;
    the next check, after ``haplane unlock``, finishes it (*The health check*: a killed replacement
    counts as failed, and one that removed its replica is run again with the same change id)."""
    from flows.health_check import health_check

    cluster = "kill-hc"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    victim = next(r for r in rows if r["zone"] == ZONES[0])
    ips = [r["internal IP"] for r in rows if r is not victim]
    cloud.admin.kill_vm(PROJECT, ZONES[0], victim["replica"])
    cloud.admin.clear_calls()
    check = Walk(
        cloud,
        prefect_api,
        cluster,
        "health-check",
        _call("health_check", "health_check", cluster=cluster, backoff_s=0),
        tmp_path,
    )
    with QuorumWatcher(cluster, ips) as watcher:
        # two kills: a third killed run would be the third failed replacement in a row, after which the
        # check gives up on the replica until a person acts (README); pool-remove and pool-add are
        # killed in test_replace_and_remove_killed_at_every_step
        check.run(
            [
                KillPoint(
                    "remove/delete-vm: after the member removal",
                    {DELETE: 1},
                    check=_not_a_member(cluster, victim["replica"], ips),
                ),
                KillPoint(
                    "add/configure: metadata, after the learner add",
                    {SET_METADATA: 1},
                    check=_learner_added(cluster, ips),
                ),
            ]
        )
    assert watcher.samples > 5 and watcher.worst < 10.0, (
        f"no linearizable read for {watcher.worst:.1f} s ({watcher.errors} of {watcher.samples} samples failed)"
    )
    replicas = _converged(cloud, cluster, 3)
    assert victim["replica"] not in replicas
    assert sent_once(mutating(cloud)) == Counter({POOL_REMOVE: 1, DELETE: 1, INSERT: 1, SET_METADATA: 1, POOL_ADD: 1})
    after = health_check(cluster=cluster, backoff_s=0, return_state=True)
    assert after.is_completed() and "healthy" in after.message, after.message
    assert _key_material(Path(prefect_api.home)) == []
