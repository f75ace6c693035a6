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

pytestmark = pytest.mark.usefixtures("prefect_api")

REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[], object]
    match: str  # the problem and the fix, as the person reads them
    env: dict[str, str | None] = field(default_factory=dict)  # worker environment for the case


def _create(**kw) -> Callable[[], object]:
    args = dict(cluster="bad", region=REGION, zones=ZONES, replicas=3) | kw
    return lambda: create_cluster(**args)


def _health(**kw) -> object:
    from flows.health_check import health_check

    return health_check(cluster="bad", **kw)


CASES = [
    Case("duplicate zones", _create(zones=["europe-west1-b", "europe-west1-b"]),
         r"zone 'europe-west1-b' is listed twice in zones; list each zone once"),
    Case("replicas True", _create(replicas=True), r"replicas must be a whole number .* got True .*pass e.g. 3"),
    Case("replicas '3'", _create(replicas="3"), r"replicas must be a whole number .* got '3' .*pass e.g. 3"),
    Case("replicas 3.0", _create(replicas=3.0), r"replicas must be a whole number"),
    Case("no connection at all", _create(), r"no GCE connection: pass connection=<name of a haplane-gce-connection"
                                            r" block>, or set HAPLANE_PROJECT",
         env={"HAPLANE_PROJECT": None, "HAPLANE_GCE_ENDPOINT": None}),
    Case("endpoint that does not answer", _create(),
         r"cannot reach GCE at http://127.0.0.1:9/?, project 'haplane-test'.*connection is missing or wrong.*"
         r"HAPLANE_GCE_ENDPOINT",
         env={"HAPLANE_GCE_ENDPOINT": "http://127.0.0.1:9"}),
    Case("connection block that does not exist", _create(connection="nosuch"),
         r"no haplane-gce-connection block named 'nosuch': create it with `haplane setup-workspace"),
    Case("zone of another region", _create(zones=["us-central1-a"]),
         r"zone 'us-central1-a' is not a zone of region 'europe-west1'; choose from"),
    Case("region GCE does not know", _create(region="mars-north1", zones=["mars-north1-a"]),
         r"region 'mars-north1' is unknown to GCE"),
    Case("leaf lifetime of 1 minute", _create(leaf_lifetime_minutes=1),
         r"leaf_lifetime_minutes=1 is too short: a leaf must last at least 2 minutes"),
    Case("leaf lifetime as text", _create(leaf_lifetime_minutes="10"),
         r"leaf_lifetime_minutes must be a whole number of minutes, got '10': pass e.g. 10"),
    Case("leaf lifetime beyond the CA's", _create(leaf_lifetime_minutes=10**8),
         r"leaf_lifetime_minutes=100000000 outlives the CA \(3650 days = 5256000 minutes\): give at most"),
    Case("rotate threshold above the warn threshold", lambda: _health(warn_minutes=2, rotate_minutes=3),
         r"the rotate threshold \(3.0 minutes\) must not exceed the warn threshold \(2.0 minutes\)"),
    Case("a threshold in days and in minutes", lambda: _health(warn_days=10, warn_minutes=5, rotate_minutes=1),
         r"give the warn threshold once: warn_days=10 or warn_minutes=5, not both"),
    Case("health interval 0", lambda: setup_workspace(health_interval=0, pool="bad-input-pool"),
         r"--health-interval must be a positive number of seconds, got 0: pass e.g. --health-interval 300"),
    Case("health interval negative", lambda: setup_workspace(health_interval=-60, pool="bad-input-pool"),
         r"must be a positive number of seconds, got -60"),
    Case("health interval NaN", lambda: setup_workspace(health_interval=math.nan, pool="bad-input-pool"),
         r"must be a positive number of seconds, got nan"),
]


@pytest.fixture(scope="module")
def shared_cloud(tmp_path_factory):
    """One emulator for the whole table (each case clears its call log)."""
    from haplane.emulator.admin import EmulatorAdmin
    from haplane.emulator.server import Emulator
    from haplane.emulator.vm import ProcessRuntime

    state = tmp_path_factory.mktemp("bad-input-emulator")
    emulator = Emulator(state_dir=state, runtime=ProcessRuntime(state))
    emulator.start()
    admin = EmulatorAdmin(emulator.url)
    try:
        yield emulator, admin
    finally:
        admin.close()
        emulator.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_before_any_change(case: Case, shared_cloud, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from tests.fixtures.cluster import MUTATING, PROJECT

    emulator, admin = shared_cloud
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
    mutating = [c for c in admin.calls() if c["verb"] in MUTATING and not c["method"].endswith(".wait")]
    assert mutating == [], f"{case.name}: a refused request changed GCE: {mutating}"
    with get_client(sync_client=True) as client:  # nothing set up in Prefect either
        with pytest.raises(ObjectNotFound):
            client.read_work_pool("bad-input-pool")
        with pytest.raises(ValueError):
            from blocks.cluster import ClusterSpec

            ClusterSpec.load("bad-spec")
