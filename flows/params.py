"""Typed flow parameters shared by the flows, so the UI's run form explains them and the API refuses bad values.

A deployment built from these flows has ``enforce_parameter_schema``: a run whose parameters do
not match (a cluster name GCE would refuse, 2 replicas, a zone outside any region's pattern) is
refused by the Prefect API when it is created, before any worker starts it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

from haplane.core.endpoint import EndpointMode
from haplane.core.quorum import VALID_SIZES, check_target_size
from haplane.core.topology import CHANGE_ID_RE, NAME_RE, check_change_id, check_cluster_name, check_distinct_zones
from haplane.core.versions import EtcdVersion, KubernetesVersion


def _cluster_name(value: str) -> str:
    check_cluster_name(value)
    return value


ClusterName = Annotated[
    str,
    AfterValidator(_cluster_name),
    Field(
        description="Cluster name: 1-30 lowercase letters, digits or '-', starting with a letter",
        json_schema_extra={"pattern": NAME_RE.pattern, "minLength": 1, "maxLength": 30},
    ),
]
Zone = Annotated[str, Field(description="GCE zone, e.g. europe-west1-b", pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")]


def _distinct_zones(value: list[str]) -> list[str]:
    return check_distinct_zones(value)


# A list of zones, each at most once (the API refuses a repeat too: uniqueItems).
Zones = Annotated[
    list[Zone], AfterValidator(_distinct_zones), Field(min_length=1, json_schema_extra={"uniqueItems": True})
]


def _whole_number(value: object) -> object:
    """A count must be given as a number: ``True`` would silently mean 1 and ``"3"`` hides a caller's bug."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"replicas must be a whole number (1, 3, 5 or 7), got {value!r} "
            f'({type(value).__name__}): pass e.g. 3, not "3" or true'
        )
    return value


def _cluster_size(value: int) -> int:
    decision = check_target_size(value)
    if not decision.allowed:
        raise ValueError(decision.reason)
    return value


# An int checked by the quorum rule (so 2 is refused with the seed's reason), shown as a choice in the UI.
Size = Annotated[
    int,
    BeforeValidator(_whole_number),
    AfterValidator(_cluster_size),
    Field(json_schema_extra={"enum": list(VALID_SIZES)}),
]
SkipSnapshot = Annotated[
    bool,
    Field(
        description="Change the cluster without taking a verified etcd snapshot "
        "first (only when snapshots fail and the change cannot wait)"
    ),
]
Connection = Annotated[
    str | None,
    Field(
        description="Name of a haplane-gce-connection block; empty: "
        "HAPLANE_GCE_ENDPOINT / HAPLANE_PROJECT of the worker"
    ),
]


def _change_id(value: str | None) -> str | None:
    return None if value is None else check_change_id(value)


# Checked before the flow reads anything: the id names the change's checkpoints and requestIds.
ChangeId = Annotated[
    str | None,
    AfterValidator(_change_id),
    Field(
        description="Repeat to resume a failed run (1-63 lower-case letters, digits or '-')",
        json_schema_extra={"pattern": CHANGE_ID_RE.pattern, "maxLength": 63},
    ),
]
DryRun = Annotated[bool, Field(description="Plan and publish the plan, change nothing")]


def documented(fn):
    """Copy each parameter's ``Field(description=...)`` into the docstring's ``Args:`` section.

    Prefect 3.9 builds a deployment's parameter schema (the UI's run form) from the docstring and
    drops the description of an ``Annotated[..., Field(description=...)]``; this keeps the one
    description in the signature and shows it in the form. The flow's description is the first
    line of its module's docstring.
    """
    import inspect
    import sys
    import typing

    from pydantic.fields import FieldInfo

    lines = []
    for name, param in inspect.signature(fn).parameters.items():
        ann = param.annotation
        if isinstance(ann, str):
            ann = typing.get_type_hints(fn, include_extras=True).get(name)
        desc = next(
            (m.description for m in getattr(ann, "__metadata__", ()) if isinstance(m, FieldInfo) and m.description),
            None,
        )
        if desc:
            lines.append(f"    {name}: {desc}")
    module_doc = (sys.modules[fn.__module__].__doc__ or "").strip().splitlines()
    summary = fn.__doc__ or (module_doc[0] if module_doc else fn.__name__)
    fn.__doc__ = summary.rstrip() + ("\n\nArgs:\n" + "\n".join(lines) + "\n" if lines else "")
    return fn


def _leaf_minutes(value: object) -> object:
    from haplane.cloud.pki import check_leaf_minutes

    return check_leaf_minutes(value)


# How long a new cluster's leaf certificates last, in minutes; empty: 1 year. Checked before anything is created.
LeafLifetime = Annotated[
    Annotated[int, Field(ge=2, le=3650 * 1440)] | None,
    BeforeValidator(_leaf_minutes),
    Field(
        description="Lifetime of every leaf certificate (each replica's etcd and API-server certificates, the "
        "operator's), in minutes, at least 2; empty: 1 year. Short lifetimes need a health check with "
        "rotate_minutes well under them, scheduled more often than that"
    ),
]


# The endpoint mode, a choice in the UI's form (haplane/core/endpoint.py says what each costs).
LoadBalancerMode = Annotated[
    EndpointMode,
    Field(
        description="Endpoint mode: 'always' keeps a load balancer on the static IP from the first replica (no "
        "downtime when scaling 1 <-> 2); 'as-needed' is the seed's (no load balancer at 1 replica, the IP "
        "moves at 1 <-> 2, with about 20 minutes of endpoint downtime on GCE)"
    ),
]


# The versions the image offers, a choice in the UI's form (haplane/core/versions.py holds the one list).
EtcdRelease = Annotated[EtcdVersion, Field(description="etcd release the replicas run (the versions the image offers)")]
KubernetesRelease = Annotated[
    KubernetesVersion, Field(description="kube-apiserver release the replicas run (the versions the image offers)")
]
