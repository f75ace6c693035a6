"""The fault matrix (long suite): create-cluster (3 replicas) and delete-cluster against an injected
fault on every GCE mutating method they call, resumed as the README says, with the invariants
checked from outside haplane: the real google-cloud-compute client, etcd's own JSON API, the
emulator's call log, and the files Prefect keeps.

create-cluster and delete-cluster are faulted in pairs (one create method, then one delete method
per case); replace-replica of a killed replica (the health check's remediation) per method, with a
watcher that samples linearizable reads through the surviving members throughout.

Each case injects ``count=4`` faults of one mode on one method (enough to exhaust a task's three
retries, or the three operations a step may fail in one run) before the flow it concerns; a run
that fails is run again with the same ``change_id``. Then:

- converged: 3 RUNNING VMs, 3 voting etcd members named like them, no learner (after create);
  nothing of the cluster left in GCE, no spec or PKI block (after delete) — no orphans;
- no mutating call sent twice: no requestId with two calls that were carried out;
- no key material in the Prefect server's home (database, result storage, logs).

The other rows of docs/reliability.md (refusals, look-alikes, a worker killed at every
step, an unreadable etcd or PKI, a zone down, a busy cluster) are the quick suites named there.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from flows.add_replica import add_replica
from flows.create_cluster import create_cluster
from flows.delete_cluster import delete_cluster
from flows.remove_replica import remove_replica
from flows.replace_replica import replace_replica
from haplane.cloud.etcd import EtcdTLS
from haplane.cloud.gce import GceTimeout
from haplane.cloud.secretstore import SecretStore
from haplane.core.topology import LABEL_CLUSTER, ClusterNames
from haplane.testing import REGION, ZONES
from tasks.pki import load_cas
from tests.fixtures.cluster import PROJECT
from tests.test_secrets import PEM_MARKER
from tests.unit.test_secrets import _leaks

pytestmark = [pytest.mark.long, pytest.mark.usefixtures("prefect_api")]

CREATE_METHODS = [
    "compute.addresses.insert",
    "compute.firewalls.insert",
    "compute.instances.insert",
    "compute.instances.setMetadata",
    "compute.httpHealthChecks.insert",
    "compute.targetPools.insert",
    "compute.forwardingRules.insert",
]
DELETE_METHODS = [
    "compute.forwardingRules.delete",
    "compute.targetPools.delete",
    "compute.httpHealthChecks.delete",
    "compute.instances.delete",
    "compute.addresses.delete",
    "compute.firewalls.delete",
]
MODES = ["503", "operation_error"]
# Operation errors: one create method, then one delete method faulted per case (paired, so that every
# method is hit without a cluster per method); 429 and 503 on all of them at once (test_create_delete_faults).
PAIRS = list(zip(CREATE_METHODS, DELETE_METHODS + [DELETE_METHODS[3]], strict=True))
CASES = [(c, d, "operation_error") for c, d in PAIRS]


def _run_until_done(call, change_id: str, runs: int = 3) -> int:
    """Run the flow; a failed run is run again with the same change id. Returns the runs it took."""
    for attempt in range(1, runs + 1):
        try:
            call(change_id)
            return attempt
        except Exception:  # noqa: BLE001 - resumed below, as the README says
            if attempt == runs:
                raise
    return runs


def _members(cluster: str, ips: list[str]) -> list[dict]:
    """etcd's own member list (JSON gateway, mutual TLS with the operator certificate)."""
    tls = EtcdTLS.from_cas(load_cas(cluster))
    with httpx.Client(verify=tls.ssl_context(), timeout=10) as http:
        for ip in ips:
            try:
                return http.post(f"https://{ip}:2379/v3/cluster/member/list", json={}).json()["members"]
            except httpx.HTTPError:
                continue
    raise AssertionError(f"no etcd member of {cluster} answers")


def _sent_twice(calls: list[dict]) -> list[str]:
    done = Counter(c["requestId"] for c in calls if c.get("requestId") and c["outcome"] == "ok")
    return [rid for rid, n in done.items() if n > 1]


def _leftovers(cloud, cluster: str) -> list[str]:
    gce, names = cloud.gce, ClusterNames(cluster)
    left = [f"VM {i.name}" for i in gce.list_instances(gce.list_zones(REGION), labels={LABEL_CLUSTER: cluster})]
    for kind, name, region in (
        ("address", names.address, REGION),
        ("target_pool", names.target_pool, REGION),
        ("forwarding_rule", names.forwarding_rule, REGION),
        ("health_check", names.health_check, None),
        *(
            ("firewall", n, None)
            for n in (names.firewall_etcd_peer, names.firewall_etcd_client, names.firewall_apiserver)
        ),
    ):
        if gce.description_of(kind, name, region) is not None:
            left.append(f"{kind} {name}")
    return left


def _key_material(home: Path) -> list[str]:
    return [str(p) for p in home.rglob("*") if p.is_file() and _leaks(p.read_bytes(), [PEM_MARKER])]


# Every create (delete) method faulted at once in each case; on one of them, a step of its own (not one
# of three side by side, which would share the faults), more faults than a run absorbs.
CREATE_FAULTED = CREATE_METHODS + ["compute.targetPools.addInstance"]
CREATE_FORCED = {
    "429": "compute.addresses.insert",
    "503": "compute.targetPools.insert",
    "operation_error": "compute.forwardingRules.insert",
}
DELETE_FORCED = {
    "429": "compute.forwardingRules.delete",
    "503": "compute.httpHealthChecks.delete",
    "operation_error": "compute.addresses.delete",
}


@pytest.mark.parametrize("mode", list(CREATE_FORCED))
def test_create_delete_faults(mode, cloud, prefect_api, quick_retries):
    """create-cluster (3 replicas) with a fault of ``mode`` on every GCE mutating method it calls, then
    delete-cluster likewise: on one method of each more than a run absorbs, so the run fails and is run
    again with the same change id; the other faults are absorbed by the steps' retries."""
    cluster = f"fm-{uuid.uuid4().hex[:6]}"
    hit = _faulted(
        cloud,
        CREATE_FAULTED,
        mode,
        CREATE_FORCED[mode],
        lambda cid: create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, change_id=cid),
        f"create-{cluster}",
    )
    assert hit == set(CREATE_FAULTED), f"{mode} faults never hit: {set(CREATE_FAULTED) - hit}"
    vms = _converged(cloud, cluster, 3)
    assert all(v.status == "RUNNING" for v in vms), vms
    assert _carried_out_twice(cloud.admin.calls()) == []

    hit = _faulted(
        cloud,
        DELETE_METHODS,
        mode,
        DELETE_FORCED[mode],
        lambda cid: delete_cluster(cluster=cluster, change_id=cid),
        f"delete-{cluster}",
    )
    assert hit == set(DELETE_METHODS), f"{mode} faults never hit: {set(DELETE_METHODS) - hit}"
    assert _leftovers(cloud, cluster) == []
    assert load_cas(cluster) is None
    assert _carried_out_twice(cloud.admin.calls()) == []
    assert _key_material(Path(prefect_api.home)) == []


@pytest.mark.parametrize(
    "create_method,delete_method,mode",
    CASES,
    ids=[f"{c.split('.', 1)[1]}+{d.split('.', 1)[1]}-{mode}" for c, d, mode in CASES],
)
def test_create_delete_fault(create_method, delete_method, mode, cloud, prefect_api):
    cluster = f"fm-{uuid.uuid4().hex[:6]}"
    cloud.admin.add_fault(create_method, mode, count=4)
    _run_until_done(
        lambda cid: create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, change_id=cid),
        f"create-{cluster}",
    )
    cloud.admin.clear_faults()
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert len(vms) == 3 and all(v.status == "RUNNING" for v in vms), vms
    members = _members(cluster, [v.internal_ip for v in vms])
    assert sorted(m["name"] for m in members) == sorted(v.name for v in vms)
    assert not [m for m in members if m.get("isLearner")]
    assert _sent_twice(cloud.admin.calls()) == []

    cloud.admin.add_fault(delete_method, mode, count=4)
    _run_until_done(lambda cid: delete_cluster(cluster=cluster, change_id=cid), f"delete-{cluster}")
    cloud.admin.clear_faults()
    assert _leftovers(cloud, cluster) == []
    assert load_cas(cluster) is None
    assert _sent_twice(cloud.admin.calls()) == []
    outcomes = {c["method"]: c["outcome"] for c in cloud.admin.calls() if c["outcome"].startswith("fault")}
    if mode != "operation_error":
        assert create_method in outcomes and delete_method in outcomes, "a fault was never hit"
    assert _key_material(Path(prefect_api.home)) == []


class QuorumWatcher:
    """Samples a linearizable read through each given member (etcd's JSON gateway) every 0.2 s and
    records the longest stretch in which none of them could serve one: quorum lost, beyond an
    election (etcd's election timeout is 1 s)."""

    def __init__(self, cluster: str, ips: list[str]) -> None:
        self.tls, self.ips = EtcdTLS.from_cas(load_cas(cluster)), ips
        self.stop, self.samples, self.worst, self.errors = threading.Event(), 0, 0.0, 0
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        key = base64.b64encode(b"/canary").decode()
        failing_since = None
        with httpx.Client(verify=self.tls.ssl_context(), timeout=2) as http:
            while not self.stop.is_set():
                ok = False
                for ip in self.ips:
                    try:
                        r = http.post(f"https://{ip}:2379/v3/kv/range", json={"key": key})
                        ok = ok or r.status_code == 200
                    except httpx.HTTPError:
                        pass
                self.samples += 1
                now = time.monotonic()
                if ok:
                    failing_since = None
                else:
                    self.errors += 1
                    failing_since = failing_since or now
                    self.worst = max(self.worst, now - failing_since)
                self.stop.wait(0.2)

    def __enter__(self) -> QuorumWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


REPLACE_METHODS = [
    "compute.targetPools.removeInstance",
    "compute.instances.delete",
    "compute.instances.insert",
    "compute.instances.setMetadata",
    "compute.targetPools.addInstance",
]
REPLACE_CASES = [(m, mode) for m in REPLACE_METHODS for mode in MODES if mode == "operation_error" or "Pools" not in m]


@pytest.mark.parametrize(
    "method,mode", REPLACE_CASES, ids=[f"replace-{m.split('.', 1)[1]}-{mode}" for m, mode in REPLACE_CASES]
)
def test_replace_fault(method, mode, cloud, prefect_api):
    """replace-replica of a killed replica (the health check's remediation) with a fault: quorum is
    never lost (watched throughout from outside), the run converges after a resume, nothing orphaned."""
    cluster = f"fr-{uuid.uuid4().hex[:6]}"
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    victim = next(r for r in rows if r["zone"] == ZONES[1])
    survivors = [r["internal IP"] for r in rows if r is not victim]
    cloud.admin.kill_vm(PROJECT, ZONES[1], victim["replica"])
    cloud.admin.clear_calls()
    cloud.admin.add_fault(method, mode, count=4)
    with QuorumWatcher(cluster, survivors) as watcher:
        _run_until_done(
            lambda cid: replace_replica(cluster=cluster, replica_name=victim["replica"], change_id=cid),
            f"replace-{cluster}",
        )
    cloud.admin.clear_faults()
    assert watcher.samples > 5 and watcher.worst < 10.0, (
        f"no linearizable read for {watcher.worst:.1f} s ({watcher.errors} of {watcher.samples} samples failed)"
    )
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert len(vms) == 3 and victim["replica"] not in {v.name for v in vms}
    assert all(v.status == "RUNNING" for v in vms)
    members = _members(cluster, [v.internal_ip for v in vms])
    assert sorted(m["name"] for m in members) == sorted(v.name for v in vms)
    assert not [m for m in members if m.get("isLearner")]
    pool = cloud.gce.get_target_pool(REGION, ClusterNames(cluster).target_pool)
    assert sorted(link.rsplit("/", 1)[-1] for link in pool.instances) == sorted(v.name for v in vms)
    assert _sent_twice(cloud.admin.calls()) == []
    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == []
    assert _key_material(Path(prefect_api.home)) == []


# --- add-replica and remove-replica under faults, hung operations, a zone failing mid-change, an expired
# operator certificate. One cluster per test walks several faults in sequence.

DESTRUCTIVE = (".delete", ".removeInstance", ".deleteAccessConfig")
# GCE's answer to a call it did not carry out: a rejected call (429/503, a failed zone) changes nothing
REJECTED = 400


def _carried_out_twice(calls: list[dict]) -> list[str]:
    """requestIds GCE accepted more than once. Stricter than :func:`_sent_twice`: a repeat GCE answered
    with the first operation (``deduplicated``), or a call held by a hung operation sent again, counts
    too; only calls GCE refused outright (429, 503: nothing done) may be repeated."""
    accepted = Counter(c["requestId"] for c in calls if c.get("requestId") and c["status"] < REJECTED)
    return [rid for rid, n in accepted.items() if n > 1]


def _mutating(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["verb"] in ("POST", "DELETE", "PATCH", "PUT") and not c["method"].endswith(".wait")]


def _converged(cloud, cluster: str, size: int, pool: bool = True) -> list:
    """``size`` RUNNING VMs, as many voting etcd members named like them and no learner (etcd's own
    API); the target pool holds exactly them (or, with ``pool=False``, there is no pool and no rule)."""
    vms = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert len(vms) == size and all(v.status == "RUNNING" for v in vms), [(v.name, v.status) for v in vms]
    deadline = time.monotonic() + 30  # a member just promoted: every member's list agrees within an election
    while True:
        members = _members(cluster, [v.internal_ip for v in vms])
        if sorted(m.get("name", "") for m in members) == sorted(v.name for v in vms) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(m.get("name", "") for m in members) == sorted(v.name for v in vms), (members, vms)
    assert not [m for m in members if m.get("isLearner")], members
    names = ClusterNames(cluster)
    found = cloud.gce.get_target_pool(REGION, names.target_pool)
    if pool:
        assert found is not None
        assert sorted(link.rsplit("/", 1)[-1] for link in found.instances) == sorted(v.name for v in vms)
    else:
        assert found is None and cloud.gce.get_forwarding_rule(REGION, names.forwarding_rule) is None
    return vms


def _ips(cloud, cluster: str, but: str | None = None) -> list[str]:
    return [v.internal_ip for v in cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster}) if v.name != but]


def _quorum_held(watcher: QuorumWatcher) -> None:
    assert watcher.samples > 3 and watcher.worst < 10.0, (
        f"no linearizable read for {watcher.worst:.1f} s ({watcher.errors} of {watcher.samples} samples failed)"
    )


def _watched(cloud, cluster: str, ips: list[str], call) -> None:
    """Run ``call`` with a :class:`QuorumWatcher` on ``ips`` throughout: quorum never lost."""
    with QuorumWatcher(cluster, ips) as watcher:
        call()
    _quorum_held(watcher)


ABSORBED = {"429": 3, "503": 3, "operation_error": 2}  # faults a run absorbs: a step's 3 retries, 3 operations per step


def _faulted(cloud, methods: list[str], mode: str, forced: str, call, change_id: str) -> set[str]:
    """``call`` with faults of ``mode`` on each of ``methods`` at once: on ``forced``, 4 (beyond what a
    run absorbs, so the run fails and is run again with the same change id), on the others as many as
    the run absorbs (a step's retries, or the failed operations a step submits again). Returns the
    methods whose fault was hit."""
    start = len(cloud.admin.calls())
    for m in methods:
        cloud.admin.add_fault(m, mode, count=4 if m == forced else ABSORBED[mode])
    try:
        runs = _run_until_done(call, change_id, runs=3)
    finally:
        cloud.admin.clear_faults()
    assert runs == 2, f"{change_id}: {runs} runs; the fault on {forced} should have failed exactly one"
    return {c["method"] for c in cloud.admin.calls()[start:] if c["outcome"] == f"fault:{mode}"}


ADD_LB = [
    "compute.instances.insert",
    "compute.instances.setMetadata",
    "compute.httpHealthChecks.insert",
    "compute.targetPools.insert",
    "compute.instances.deleteAccessConfig",
    "compute.forwardingRules.insert",
    "compute.instances.addAccessConfig",
]  # 1 -> 2, as-needed: the seed's IP move onto a new load balancer
ADD_POOL = ["compute.instances.insert", "compute.instances.setMetadata", "compute.targetPools.addInstance"]
REMOVE_POOL = ["compute.targetPools.removeInstance", "compute.instances.delete"]
REMOVE_LB = [
    "compute.forwardingRules.delete",
    "compute.instances.deleteAccessConfig",
    "compute.instances.addAccessConfig",
    "compute.targetPools.delete",
    "compute.httpHealthChecks.delete",
    "compute.instances.delete",
]  # 2 -> 1, as-needed: the IP handed back to the last replica


@pytest.fixture
def quick_retries(monkeypatch):
    """The matrix waits for faults, not for back-off: a step's retries 0.2 s apart (the default is
    1, 3, 10 s), an operation's wait bounded at 8 s (HAPLANE_OP_WAIT_S / HAPLANE_LB_WAIT_S)."""
    monkeypatch.setenv("HAPLANE_RETRY_DELAYS_S", "0.2")
    monkeypatch.setenv("HAPLANE_OP_WAIT_S", "8")
    monkeypatch.setenv("HAPLANE_LB_WAIT_S", "8")
    monkeypatch.setenv("HAPLANE_GCE_READ_RETRY_S", "3")


def test_add_remove_fault(cloud, prefect_api, quick_retries):
    """1 -> 2 -> 3 -> 2 -> 1, once per fault mode (503, operation error), endpoint mode as-needed: the load
    balancer is created going 1 -> 2 and deleted going 2 -> 1, so every GCE mutating method of add-replica
    and remove-replica is called. Each change has a fault on every method it calls; one of them fails the
    run, which is resumed. Quorum is watched throughout each change."""
    cluster = f"fa-{uuid.uuid4().hex[:6]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=1, load_balancer="as-needed")
    every = set(ADD_LB + ADD_POOL + REMOVE_POOL + REMOVE_LB)
    for i, mode in enumerate(MODES):
        hit: set[str] = set()
        for n, methods in ((2, ADD_LB), (3, ADD_POOL)):
            with QuorumWatcher(cluster, _ips(cloud, cluster)) as watcher:
                hit |= _faulted(
                    cloud,
                    methods,
                    mode,
                    methods[(n + i) % len(methods)],
                    lambda cid: add_replica(cluster=cluster, change_id=cid),
                    f"add{n}-{mode.replace('_', '-')}-{cluster}",
                )
            _quorum_held(watcher)
            _converged(cloud, cluster, n)
        for n, methods in ((2, REMOVE_POOL), (1, REMOVE_LB)):
            victim = cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})[-1]
            with QuorumWatcher(cluster, _ips(cloud, cluster, but=victim.name)) as watcher:
                hit |= _faulted(
                    cloud,
                    methods,
                    mode,
                    methods[(n + i) % len(methods)],
                    lambda cid, v=victim: remove_replica(
                        cluster=cluster, zone=v.zone, replica_name=v.name, change_id=cid
                    ),
                    f"remove{n}-{mode.replace('_', '-')}-{cluster}",
                )
            _quorum_held(watcher)
            _converged(cloud, cluster, n, pool=n > 1)
        assert hit == every, f"{mode} faults never hit: {every - hit}"
    assert _carried_out_twice(cloud.admin.calls()) == []
    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == [] and cloud.processes() == []
    assert _key_material(Path(prefect_api.home)) == []


def _hung_walk(cloud, call, change_id: str, methods: set[str], hung: set[str]) -> None:
    """``call`` with a hung operation (``hang``, count 1) on each of ``methods`` not in ``hung`` yet (all
    of them if none is left): a run that meets one must fail within the wait's bound with
    :class:`GceTimeout`, naming the operation and the setting and saying it was not sent again; the
    hang is released (``clear_faults``: the operation goes on), the methods not hung yet are armed
    again, and the change is run again with the same id, until it succeeds. Adds what hung to ``hung``."""
    armed = (methods - hung) or methods
    start, here = len(cloud.admin.calls()), set()
    for _ in range(len(armed) + 4):
        before = len(cloud.admin.calls())
        for m in sorted(armed - here):
            cloud.admin.add_fault(m, "hang", count=1)
        try:
            call(change_id)
        except GceTimeout as exc:
            assert "not sent again" in str(exc) and "HAPLANE_" in str(exc) and exc.op.name in str(exc), str(exc)
            here |= {c["method"] for c in cloud.admin.calls()[before:] if c["outcome"] == "fault:hang"}
            continue
        finally:
            cloud.admin.clear_faults()
        assert here, f"{change_id}: no operation of {sorted(armed)} hung"
        called = {c["method"] for c in _mutating(cloud.admin.calls()[start:])}
        assert armed & called <= here, f"{change_id}: called but never hung: {(armed & called) - here}"
        hung |= here
        return
    raise AssertionError(f"{change_id} did not converge; hung so far: {sorted(here)}")


def test_hung_operations(cloud, prefect_api, quick_retries, monkeypatch):
    """A GCE operation that never finishes, on every mutating method that create (3), replace, remove,
    add and delete call (each method once, each flow at least once): the wait gives up within its
    bound with a clear error, the change is resumed with the same change_id once the operation is
    released, and it converges with no call carried out twice."""
    monkeypatch.setenv("HAPLANE_OP_WAIT_S", "3")
    monkeypatch.setenv("HAPLANE_LB_WAIT_S", "3")
    cluster = f"fh-{uuid.uuid4().hex[:6]}"
    hung: set[str] = set()
    _hung_walk(
        cloud,
        lambda cid: create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, change_id=cid),
        f"create-{cluster}",
        set(CREATE_METHODS + ADD_POOL),
        hung,
    )
    assert set(CREATE_METHODS) <= hung
    vms = _converged(cloud, cluster, 3)

    victim = vms[1]
    cloud.admin.kill_vm(PROJECT, victim.zone, victim.name)
    _watched(
        cloud,
        cluster,
        _ips(cloud, cluster, but=victim.name),
        lambda: _hung_walk(
            cloud,
            lambda cid: replace_replica(cluster=cluster, replica_name=victim.name, change_id=cid),
            f"replace-{cluster}",
            set(REPLACE_METHODS),
            hung,
        ),
    )
    vms = _converged(cloud, cluster, 3)
    assert victim.name not in {v.name for v in vms}

    victim = vms[-1]
    _watched(
        cloud,
        cluster,
        _ips(cloud, cluster, but=victim.name),
        lambda: _hung_walk(
            cloud,
            lambda cid: remove_replica(cluster=cluster, zone=victim.zone, replica_name=victim.name, change_id=cid),
            f"remove-{cluster}",
            {"compute.instances.delete"},
            hung,
        ),
    )
    _converged(cloud, cluster, 2)
    _watched(
        cloud,
        cluster,
        _ips(cloud, cluster),
        lambda: _hung_walk(
            cloud,
            lambda cid: add_replica(cluster=cluster, change_id=cid),
            f"add-{cluster}",
            {"compute.targetPools.addInstance"},
            hung,
        ),
    )
    _converged(cloud, cluster, 3)
    assert _carried_out_twice(cloud.admin.calls()) == []

    _hung_walk(
        cloud,
        lambda cid: delete_cluster(cluster=cluster, change_id=cid),
        f"delete-{cluster}",
        set(DELETE_METHODS),
        hung,
    )
    every = set(CREATE_METHODS + DELETE_METHODS + ADD_POOL + REMOVE_POOL + REPLACE_METHODS)
    assert hung == every, f"never hung: {every - hung}"
    assert _leftovers(cloud, cluster) == [] and load_cas(cluster) is None and cloud.processes() == []
    assert _carried_out_twice(cloud.admin.calls()) == []
    assert _key_material(Path(prefect_api.home)) == []


class ZoneFailsOn:
    """Fails ``zone`` (its API answers 503, its VMs' processes die) as soon as the emulator's call log
    shows ``method`` carried out in that zone: a zone outage in the middle of a change."""

    def __init__(self, cloud, zone: str, method: str) -> None:
        self.cloud, self.zone, self.method = cloud, zone, method
        self.failed_at: int | None = None  # the call log's length when the zone failed
        self.seen = len(cloud.admin.calls(method))  # earlier calls (another change's) do not count
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.05):
            if any(
                f"/zones/{self.zone}/" in c["path"] and c["status"] < REJECTED
                for c in self.cloud.admin.calls(self.method)[self.seen :]
            ):
                self.cloud.admin.fail_zone(self.zone, mode="kill")
                self.failed_at = len(self.cloud.admin.calls())
                return

    def __enter__(self) -> ZoneFailsOn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def _zone_returns(cloud, zone: str) -> None:
    """The zone's API answers again and its VMs boot again (GCE restarts them), with their disks."""
    from haplane.emulator.resources import vm_view

    cloud.admin.restore_zone(zone)
    for (_, z, _), inst in list(cloud.emulator.ctx.store.instances.items()):
        if z == zone:
            cloud.emulator.runtime.start(vm_view(inst))


def _zone_fails_during(cloud, zone: str, call, change_id: str) -> None:
    """Run ``call`` while ``zone`` fails once the change inserts a VM there: the run stops (it fails)
    and sends nothing destructive once the zone is down; the zone returns; the same change converges."""
    with ZoneFailsOn(cloud, zone, "compute.instances.insert") as outage:
        with pytest.raises(Exception) as stopped:  # noqa: PT011 - any clean stop; the message is checked below
            call(change_id)
    assert outage.failed_at is not None, "the zone never failed"
    after = _mutating(cloud.admin.calls()[outage.failed_at :])
    assert not [c for c in after if c["method"].endswith(DESTRUCTIVE) and c["status"] < REJECTED], after
    # named: the zone, what could not be read, or etcd's own refusal to change membership while a member
    # (the one in the failed zone) is down
    reason = str(stopped.value)
    assert zone in reason or "could not be read" in reason or "unhealthy cluster" in reason, reason
    print(f"{change_id}: stopped with {type(stopped.value).__name__}: {str(stopped.value)[:300]}")
    _zone_returns(cloud, zone)
    _run_until_done(call, change_id, runs=2)


def test_zone_fails_mid_change(cloud, prefect_api, quick_retries):
    """A zone fails in the middle of create-cluster (3), add-replica and replace-replica: each run stops,
    destroys nothing once the zone is out of sight, and the same change converges after the zone returns."""
    cluster = f"fz-{uuid.uuid4().hex[:6]}"
    _zone_fails_during(
        cloud,
        ZONES[2],
        lambda cid: create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, change_id=cid),
        f"create-{cluster}",
    )
    vms = _converged(cloud, cluster, 3)

    others = [v.internal_ip for v in vms if v.zone != ZONES[2]]
    _watched(
        cloud,
        cluster,
        others,
        lambda: _zone_fails_during(
            cloud, ZONES[2], lambda cid: add_replica(cluster=cluster, zone=ZONES[2], change_id=cid), f"add-{cluster}"
        ),
    )
    vms = _converged(cloud, cluster, 4)

    victim = next(v for v in vms if v.zone == ZONES[0])
    cloud.admin.kill_vm(PROJECT, victim.zone, victim.name)
    _watched(
        cloud,
        cluster,
        [v.internal_ip for v in vms if v.zone != ZONES[0]],
        lambda: _zone_fails_during(
            cloud,
            ZONES[0],
            lambda cid: replace_replica(cluster=cluster, replica_name=victim.name, change_id=cid),
            f"replace-{cluster}",
        ),
    )
    vms = _converged(cloud, cluster, 4)
    assert victim.name not in {v.name for v in vms}
    assert _carried_out_twice(cloud.admin.calls()) == []
    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == [] and cloud.processes() == []
    assert _key_material(Path(prefect_api.home)) == []


def test_operator_certificate_expired(cloud, prefect_api):
    """The operator's etcd client certificate has expired (issued by the cluster's own etcd CA, valid
    until yesterday: etcd refuses it at the TLS handshake, as it does a year after create-cluster). Every
    flow that changes membership or deletes a replica, and the health check, refuse or report unknown,
    naming the certificate to check; no mutating call is sent. With a valid certificate again, the
    same flows work."""
    import datetime as dt

    from flows.health_check import health_check
    from haplane.cloud.pki import issue_operator
    from tasks.keys import save_pki

    cluster = f"fc-{uuid.uuid4().hex[:6]}"
    vms = {r["replica"]: r for r in create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)}
    real = load_cas(cluster).operator
    expired = issue_operator(load_cas(cluster).etcd_ca, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    assert expired.certificate.not_valid_after_utc < dt.datetime.now(dt.UTC)
    save_pki(
        cluster,
        SecretStore.for_gce(cloud.gce),
        lambda block, keys: ({"operator_cert": expired.cert_pem}, {"operator": expired.key_pem}),
    )
    dead = next(r for r in vms.values() if r["zone"] == ZONES[1])
    cloud.admin.kill_vm(PROJECT, dead["zone"], dead["replica"])  # a real failure, to tempt the health check
    other = next(r for r in vms.values() if r["zone"] == ZONES[2])
    cloud.admin.clear_calls()
    refusals = {
        "remove-replica": lambda: remove_replica(cluster=cluster, zone=other["zone"], replica_name=other["replica"]),
        "replace-replica": lambda: replace_replica(cluster=cluster, replica_name=dead["replica"]),
        "add-replica": lambda: add_replica(cluster=cluster),
    }
    for name, call in refusals.items():
        with pytest.raises(Exception) as refused:  # noqa: PT011 - the message is what a person reads
            call()
        message = str(refused.value)
        assert "etcd membership" in message and "unknown is not absent" in message, (name, message)
        assert f"operator certificate in block {ClusterNames(cluster).pki_block}" in message and "expired" in message, (
            message
        )
    state = health_check(cluster=cluster, backoff_s=0, return_state=True)
    assert state.is_completed() and state.result()["action"] == "unknown", (state.message, state.result())
    assert "could not be observed" in state.message
    assert cloud.mutating_calls() == [], cloud.mutating_calls()
    assert len(cloud.gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})) == 3
    assert load_cas(cluster) is not None

    save_pki(
        cluster,
        SecretStore.for_gce(cloud.gce),  # a valid certificate again: the dead replica is replaced
        lambda block, keys: ({"operator_cert": real.cert_pem}, {"operator": real.key_pem}),
    )
    replace_replica(cluster=cluster, replica_name=dead["replica"])
    _converged(cloud, cluster, 3)
    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == [] and cloud.processes() == []
    assert _key_material(Path(prefect_api.home)) == []


def test_look_alike_vm_with_the_planned_name(cloud, prefect_api):
    """Someone makes a VM under the name create-cluster planned for a replica (names follow from the change
    id, and the plan is published before the step runs) before the step runs: the create step refuses it,
    naming the VM; no certificate is issued to it and no key granted (Secret Manager holds nothing of the
    cluster, the VM's metadata is as it was made). Once that VM is gone, the same change converges, and
    delete-cluster leaves nothing behind."""
    from haplane.cloud.secretstore import SecretStore
    from haplane.core.topology import replica_name

    cluster = f"fl-{uuid.uuid4().hex[:6]}"
    change_id = f"create-{cluster}"
    planned = replica_name(cluster, change_id, 0)
    gce, zone = cloud.gce, ZONES[0]
    # without the cluster's label: create-cluster's check of the name (anything labelled for the cluster
    # without a spec is refused up front) does not see it, the create step itself must
    gce.wait(
        gce.insert_instance(
            zone,
            planned,
            machine_type="e2-small",
            labels={"made-by": "mallory"},
            metadata={"owner": "mallory"},
            tags=[],
            external_ip=False,
            rid=str(uuid.uuid4()),
            service_account=f"mallory@{PROJECT}.iam.gserviceaccount.com",
        )
    )
    cloud.admin.clear_calls()
    with pytest.raises(
        Exception,
        match=f"VM {planned} in {zone} has the name this change planned for a replica "
        f"of cluster '{cluster}', but this change did not create it",
    ) as refused:
        create_cluster(cluster=cluster, region=REGION, zones=[zone], replicas=1, change_id=change_id)
    assert "not adopted: no certificate issued, no key granted" in str(refused.value)
    touched = [c for c in _mutating(cloud.admin.calls()) if planned in c.get("path", "")]
    assert touched == [], f"the look-alike was changed: {touched}"
    vm = gce.get_instance(zone, planned)
    assert vm.metadata == {"owner": "mallory"} and vm.labels == {"made-by": "mallory"}
    # the cluster's own keys are in Secret Manager (its CA is made before any VM), readable by the workers
    # alone; the look-alike got no key of its own and no grant on any of them
    store = SecretStore.for_gce(gce)
    assert store.list(cluster, replica=planned) == [], "a replica key was made for the look-alike"
    mallory = f"serviceAccount:mallory@{PROJECT}.iam.gserviceaccount.com"
    for secret in store.list(cluster):
        policy = store.client.get_iam_policy(request={"resource": secret})
        members = {m for b in policy.bindings for m in b.members}
        assert mallory not in members, f"the look-alike's account may read {secret}"

    gce.wait(gce.delete_instance(zone, planned, rid=str(uuid.uuid4())))  # the person removes it
    create_cluster(cluster=cluster, region=REGION, zones=[zone], replicas=1, change_id=change_id)
    _converged(cloud, cluster, 1)
    assert _carried_out_twice(cloud.admin.calls()) == []
    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == [] and cloud.processes() == []
    assert SecretStore.for_gce(gce).list(cluster) == []
    assert _key_material(Path(prefect_api.home)) == []


def test_two_zones_out(cloud, prefect_api, monkeypatch):
    """Two of the three zones of a 3-replica cluster fail (their APIs answer 503, their VMs' processes die).
    The health check, past any grace period, reports the members there as unknown (not "VM not running",
    not "quorum lost", not absent) and acts on nothing: no mutating call. When the zones return (their VMs
    boot again with their disks), the cluster is whole again: nothing was lost, and delete leaves nothing."""
    from blocks.store import load_spec
    from flows.health_check import health_check

    monkeypatch.setenv("HAPLANE_GCE_READ_RETRY_S", "1")  # a zone that does not answer is seen as such at once
    cluster = f"f2z-{uuid.uuid4().hex[:6]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
    out = ZONES[1:]
    for zone in out:
        cloud.admin.fail_zone(zone, mode="kill")
    cloud.admin.clear_calls()
    for _ in range(2):  # the first check records the outages, the second is past the grace period
        state = health_check(cluster=cluster, zone_grace_s=0, backoff_s=0, return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        assert result["action"] == "unknown", result
        assert "nothing is moved, replaced or deleted" in result["reason"], result
    assert sorted(load_spec(cluster).zones_out) == out
    assert _mutating(cloud.admin.calls()) == [], _mutating(cloud.admin.calls())

    for zone in out:
        _zone_returns(cloud, zone)
    deadline = time.monotonic() + 120
    while True:  # the returned members rejoin their quorum; the check then finds the cluster healthy
        result = health_check(cluster=cluster, zone_grace_s=0, backoff_s=0, return_state=True).result()
        if result["action"] == "nothing" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result["action"] == "nothing", result
    _converged(cloud, cluster, 3)
    assert load_spec(cluster).zones_out == {}
    delete_cluster(cluster=cluster)
    assert _leftovers(cloud, cluster) == [] and cloud.processes() == []
    assert _key_material(Path(prefect_api.home)) == []
