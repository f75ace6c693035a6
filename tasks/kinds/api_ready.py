"""wait-api: until a replica's API server is ready (it would pass the load balancer pool's health check)."""

from __future__ import annotations

from haplane.core.steps import StepKind
from tasks.cluster import wait_api_ready
from tasks.kinds import Kind

KINDS = (
    Kind(
        StepKind.WAIT_API,
        act=lambda run, s, a: wait_api_ready(
            run.change.cluster,
            a["name"],
            a["ip"],
            step=s.id,
            timeout=a.get("timeout", 180.0),
            connection=run.change.connection,
        ),
    ),
)
