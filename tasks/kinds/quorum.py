"""Waits on etcd as a whole: wait-quorum (the voting members expected, a leader), cluster-version (etcd's
cluster version is the one expected, after an upgrade's last replica)."""

from __future__ import annotations

from haplane.core.steps import PlanStep, StepKind
from tasks.cluster import observe_cluster
from tasks.etcd import wait_cluster_version, wait_quorum
from tasks.kinds import Args, Kind, Run


def _cluster_version(run: Run, s: PlanStep, a: Args) -> None:
    state = observe_cluster(run.change.cluster, run.spec.region, run.change.connection)
    wait_cluster_version(
        run.change.cluster,
        [r.internal_ip for r in state.voting if r.internal_ip],
        a["expect"],
        step=s.id,
        connection=run.change.connection,
    )


KINDS = (
    Kind(
        StepKind.WAIT_QUORUM,
        act=lambda run, s, a: wait_quorum(
            run.change.cluster, list(a["ips"]), expect_voting=a["voting"], step=s.id, connection=run.change.connection
        ),
    ),
    Kind(StepKind.CLUSTER_VERSION, act=_cluster_version),
)
