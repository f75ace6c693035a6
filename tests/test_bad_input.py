"""Bad input is refused before anything changes, and the error names the problem and the fix.

Table-driven: each case runs a flow (or the workspace setup) on the emulator with one mistake a
person makes, expects an error naming it, and checks the emulator's call log shows no mutating call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from deployments.setup import setup_workspace
from flows.create_cluster import create_cluster
from haplane.testing import REGION, ZONES

pytestmark = pytest.mark.usefixtures("prefect_api")


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[], object]
    match: str  # the problem and the fix, as the person reads them
    env: dict[str, str | None] = field(default_factory=dict)  # worker environment for the case
    reads: bool = True  # False: refused before anything is read (the emulator sees no call at all)


def _create(**kw) -> Callable[[], object]:
    args = dict(cluster="bad", region=REGION, zones=ZONES, replicas=3) | kw
    return lambda: create_cluster(**args)


def _health(**kw) -> object:
    from flows.health_check import health_check

    return health_check(cluster="bad", **kw)


def _flows_with_change_id() -> dict[str, Callable[..., object]]:
    from flows.add_replica import add_replica
    from flows.delete_cluster import delete_cluster
    from flows.remove_replica import remove_replica
    from flows.replace_replica import replace_replica
    from flows.restore_cluster import restore_cluster
    from flows.rotate_certificates import rotate_certificates
    from flows.set_load_balancer import set_load_balancer
    from flows.upgrade_cluster import upgrade_cluster

    return {
        "create-cluster": lambda **kw: create_cluster(region=REGION, zones=ZONES, replicas=3, **kw),
        "add-replica": add_replica,
        "remove-replica": lambda **kw: remove_replica(zone=ZONES[0], **kw),
        "replace-replica": lambda **kw: replace_replica(replica_name="bad-master-1", **kw),
        "delete-cluster": delete_cluster,
        "restore-cluster": restore_cluster,
        "set-load-balancer": lambda **kw: set_load_balancer(mode="always", **kw),
        "rotate-certificates": rotate_certificates,
        "upgrade-cluster": upgrade_cluster,
    }


# A change id names the change's checkpoints (a path in a LocalFileSystem store) and seeds its requestIds:
# one pattern for every flow, checked before anything is read ("../other/x" would address another cluster's).
CHANGE_ID_CASES = [
    Case(
        f"{flow} change_id {bad!r}",
        lambda flow=flow, bad=bad: _flows_with_change_id()[flow](cluster="bad", change_id=bad),
        r"change_id .* is not valid: use 1-63 lower-case letters, digits or '-'",
        reads=False,
    )
    for flow in (
        "create-cluster",
        "add-replica",
        "remove-replica",
        "replace-replica",
        "delete-cluster",
        "restore-cluster",
        "set-load-balancer",
        "rotate-certificates",
        "upgrade-cluster",
    )
    for bad in (["../other/x", "Create-1", "x" * 64] if flow == "restore-cluster" else ["../other/x"])
]

CASES = CHANGE_ID_CASES + [
    Case(
        "duplicate zones",
        _create(zones=["europe-west1-b", "europe-west1-b"]),
        r"zone 'europe-west1-b' is listed twice in zones; list each zone once",
    ),
    Case("replicas True", _create(replicas=True), r"replicas must be a whole number .* got True .*pass e.g. 3"),
    Case("replicas '3'", _create(replicas="3"), r"replicas must be a whole number .* got '3' .*pass e.g. 3"),
    Case("replicas 3.0", _create(replicas=3.0), r"replicas must be a whole number"),
    Case(
        "no connection at all",
        _create(),
        r"no GCE connection: pass connection=<name of a haplane-gce-connection"
        r" block>, or set HAPLANE_PROJECT",
        env={"HAPLANE_PROJECT": None, "HAPLANE_GCE_ENDPOINT": None},
    ),
    Case(
        "endpoint that does not answer",
        _create(),
        r"cannot reach GCE at http://127.0.0.1:9/?, project 'haplane-test'.*connection is missing or wrong.*"
        r"HAPLANE_GCE_ENDPOINT",
        env={"HAPLANE_GCE_ENDPOINT": "http://127.0.0.1:9"},
    ),
    Case(
        "connection block that does not exist",
        _create(connection="nosuch"),
        r"no haplane-gce-connection block named 'nosuch': create it with `haplane setup-workspace",
    ),
    Case(
        "zone of another region",
        _create(zones=["us-central1-a"]),
        r"zone 'us-central1-a' is not a zone of region 'europe-west1'; choose from",
    ),
    Case(
        "region GCE does not know",
        _create(region="mars-north1", zones=["mars-north1-a"]),
        r"region 'mars-north1' is unknown to GCE",
    ),
    Case(
        "one-zone cluster (multizone=false) over three zones",
        _create(multizone=False),
        r"multizone=false keeps the cluster in one zone, but 3 zones were given \(europe-west1-b, europe-west1-c, "
        r"europe-west1-d\): pass one zone, or multizone=true to spread replicas over them",
    ),
    Case(
        "leaf lifetime of 1 minute",
        _create(leaf_lifetime_minutes=1),
        r"leaf_lifetime_minutes=1 is too short: a leaf must last at least 2 minutes",
    ),
    Case(
        "leaf lifetime as text",
        _create(leaf_lifetime_minutes="10"),
        r"leaf_lifetime_minutes must be a whole number of minutes, got '10': pass e.g. 10",
    ),
    Case(
        "leaf lifetime beyond the CA's",
        _create(leaf_lifetime_minutes=10**8),
        r"leaf_lifetime_minutes=100000000 outlives the CA \(3650 days = 5256000 minutes\): give at most",
    ),
    Case(
        "etcd heartbeat of 10 ms",
        _create(etcd_heartbeat_ms=10),
        r"etcd_heartbeat_ms=10: give etcd's heartbeat interval in whole milliseconds, 50 to 5000",
        reads=False,
    ),
    Case(
        "etcd heartbeat as text",
        _create(etcd_heartbeat_ms="500"),
        r"etcd_heartbeat_ms='500': give etcd's heartbeat interval in whole milliseconds",
        reads=False,
    ),
    Case(
        "etcd version the image does not offer",
        _create(etcd_version="3.6.0"),
        r"etcd_version[\s\S]*'3\.4\.23' or '3\.5\.1'",
    ),
    Case(
        "Kubernetes version the image does not offer",
        _create(kubernetes_version="v1.29.0"),
        r"kubernetes_version[\s\S]*'v1\.30\.0' or 'v1\.31\.0'",
    ),
    Case(
        "real GCE and a release with no pinned checksum",
        _create(etcd_version="3.4.23"),
        r"refused by rule pinned-checksum: etcd 3\.4\.23 has no pinned sha256 of etcd-v3\.4\.23-linux-amd64\.tar\.gz",
        env={"HAPLANE_GCE_ENDPOINT": None},
    ),
    Case(
        "rotate threshold above the warn threshold",
        lambda: _health(warn_minutes=2, rotate_minutes=3),
        r"the rotate threshold \(3.0 minutes\) must not exceed the warn threshold \(2.0 minutes\)",
    ),
    Case(
        "a threshold in days and in minutes",
        lambda: _health(warn_days=10, warn_minutes=5, rotate_minutes=1),
        r"give the warn threshold once: warn_days=10 or warn_minutes=5, not both",
    ),
    Case(
        "health interval 0",
        lambda: setup_workspace(health_interval=0, pool="bad-input-pool"),
        r"--health-interval must be a positive number of seconds, got 0: pass e.g. --health-interval 300",
    ),
    Case(
        "health interval negative",
        lambda: setup_workspace(health_interval=-60, pool="bad-input-pool"),
        r"must be a positive number of seconds, got -60",
    ),
    Case(
        "health interval NaN",
        lambda: setup_workspace(health_interval=math.nan, pool="bad-input-pool"),
        r"must be a positive number of seconds, got nan",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_before_any_change(case: Case, shared_cloud, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from tests.fixtures.cluster import MUTATING, PROJECT

    emulator, admin = shared_cloud.emulator, shared_cloud.admin  # the run's one emulator
    monkeypatch.setenv("HAPLANE_GCE_ENDPOINT", emulator.url)
    monkeypatch.setenv("HAPLANE_PROJECT", PROJECT)
    monkeypatch.setenv("HAPLANE_GCE_TOKEN", emulator.workers_token)
    monkeypatch.setenv("HAPLANE_GCE_READ_RETRY_S", "2")
    for key, value in case.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    admin.clear_calls()
    with pytest.raises(Exception, match=case.match):
        case.call()
    if not case.reads:
        assert admin.calls() == [], f"{case.name}: refused only after reading GCE: {admin.calls()}"
    mutating = [c for c in admin.calls() if c["verb"] in MUTATING and not c["method"].endswith(".wait")]
    assert mutating == [], f"{case.name}: a refused request changed GCE: {mutating}"
    with get_client(sync_client=True) as client:  # nothing set up in Prefect either
        with pytest.raises(ObjectNotFound):
            client.read_work_pool("bad-input-pool")
        with pytest.raises(ValueError):
            from blocks.cluster import ClusterSpec

            ClusterSpec.load("bad-spec")


def test_quorum_reads_is_described_as_what_it_does():
    """The seed's "reads go to the leader" flag is gone since Kubernetes 1.12: the parameter (in the UI's form
    and the spec block) says it changes nothing and why, instead of promising leader reads."""
    from blocks.cluster import ClusterSpec

    for description in (
        create_cluster.parameters.properties["quorum_reads"]["description"],
        ClusterSpec.model_fields["quorum_reads"].description,
    ):
        assert "leader" not in description
        assert "no effect" in description and "1.12" in description and "always reads with quorum" in description
