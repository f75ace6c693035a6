"""A cluster's etcd heartbeat (its spec's ``etcd_heartbeat_ms``, set by create-cluster): checked with an
error that says what is allowed, the same on every replica a change configures (etcd's
``--heartbeat-interval``, and ``--election-timeout`` at 10x), and the election timeout the quorum looks
span (the watcher's, a restore's) is the cluster's."""

from __future__ import annotations

import pytest

from blocks.cluster import ClusterSpec
from haplane.core.steps import PlanStep, StepKind
from haplane.node.spec import ETCD_HEARTBEAT_MS, NodeSpec, check_etcd_heartbeat, etcd_argv
from haplane.watch import Watcher
from tasks.kinds import Run
from tasks.kinds.configure import _configure
from tasks.steps import Change


@pytest.mark.parametrize("value", [50, 100, 500, 5000])
def test_a_heartbeat_in_range_is_taken(value):
    assert check_etcd_heartbeat(value) == value


@pytest.mark.parametrize("value", [0, 49, 5001, -100, 100.0, "500", True, None])
def test_a_heartbeat_out_of_range_or_not_a_whole_number_is_refused_with_what_is_allowed(value):
    with pytest.raises(ValueError, match=r"etcd_heartbeat_ms=.*: give etcd's heartbeat interval in whole "):
        check_etcd_heartbeat(value)
    with pytest.raises(ValueError, match=r"50 to 5000 .*the election timeout is 10x"):
        check_etcd_heartbeat(value)


def _spec(**kw) -> ClusterSpec:
    return ClusterSpec(cluster="hb", region="europe-west1", zones=["europe-west1-b"], **kw)


def _configured(spec: ClusterSpec, cluster_state: str) -> list[str]:
    """etcd's command line on the replica a configure step of ``spec``'s cluster writes."""
    step = PlanStep(
        StepKind.CONFIGURE,
        "configure/hb-1",
        "configure hb-1",
        (
            ("zone", "europe-west1-b"),
            ("name", "hb-1"),
            ("endpoint_ip", "10.0.0.9"),
            ("initial_cluster", (("hb-0", "10.0.0.2"), ("hb-1", "10.0.0.3"))),
            ("cluster_state", cluster_state),
        ),
    )
    out = _configure(Run(Change("hb", "c1"), spec), step, step.arguments)
    etcd = out.args[3]
    # what the VM reads back from its metadata
    etcd = NodeSpec.from_metadata(NodeSpec(etcd=etcd, apiserver=None, tls={}).to_metadata()).etcd
    return etcd_argv("etcd", etcd, "10.0.0.3", "/data", None)


@pytest.mark.parametrize(
    "spec_kw, heartbeat, election",
    [
        ({}, "100", "1000"),  # etcd's default, and a spec saved before the field existed
        ({"etcd_heartbeat_ms": 500}, "500", "5000"),
        ({"etcd_heartbeat_ms": 250}, "250", "2500"),
    ],
)
@pytest.mark.parametrize("cluster_state", ["new", "existing"])  # created; added or replaced
def test_every_replica_a_change_configures_runs_the_clusters_heartbeat(spec_kw, heartbeat, election, cluster_state):
    argv = _configured(_spec(**spec_kw), cluster_state)
    assert argv[argv.index("--heartbeat-interval") + 1] == heartbeat
    assert argv[argv.index("--election-timeout") + 1] == election


def test_the_spec_refuses_a_heartbeat_out_of_range():
    with pytest.raises(ValueError, match="etcd_heartbeat_ms"):
        _spec(etcd_heartbeat_ms=10)
    assert _spec().etcd_heartbeat_ms == ETCD_HEARTBEAT_MS == 100


def test_the_watcher_spans_the_clusters_own_election_timeout():
    specs = [
        {"cluster": "slow", "region": "europe-west1", "etcd_heartbeat_ms": 500},
        {"cluster": "default", "region": "europe-west1"},  # saved before the field existed
    ]
    w = Watcher(lambda project: None, lambda: specs, lambda c: (None, None), lambda c: False, emit=lambda e: None)
    w.refresh()
    assert w.watched["slow"].election_s == 5.0
    assert w.watched["default"].election_s == 1.0
