"""The cluster's spec block: save-spec (all of it, or the ``settings`` given), delete-spec."""

from __future__ import annotations

from pydantic import TypeAdapter

from blocks import store
from blocks.cluster import ClusterSpec
from blocks.store import update_spec
from haplane.cloud.locks import cluster_lock
from haplane.core.steps import StepKind
from tasks.kinds import Kind
from tasks.steps import probe

OBSERVED_FIELDS = ("zones_out", "stranded")


@probe(task_run_name="{step}")
def save_spec(cluster: str, spec: ClusterSpec, step: str = "spec", settings: dict | None = None) -> None:
    """Record settings in block ``<cluster>-spec`` (:func:`blocks.store.update_spec`: under the cluster lock,
    onto the spec as saved now). ``settings``: those fields only (set-load-balancer's endpoint mode);
    None: every setting of ``spec`` (create-cluster), keeping what the health check observed."""

    def change(saved: ClusterSpec | None) -> ClusterSpec:
        if saved is None:
            return spec
        if settings is not None:  # each value checked as its field's type (the mode arrives as its value)
            return saved.model_copy(
                update={
                    k: TypeAdapter(ClusterSpec.model_fields[k].annotation).validate_python(v)
                    for k, v in settings.items()
                }
            )
        return spec.model_copy(update={f: getattr(saved, f) for f in OBSERVED_FIELDS})

    update_spec(cluster, change)


@probe(task_run_name="{step}")
def delete_spec(cluster: str, step: str = "spec") -> None:
    with cluster_lock(cluster):
        store.delete_spec(cluster)


KINDS = (
    Kind(
        StepKind.SAVE_SPEC,
        act=lambda run, s, a: save_spec(
            run.change.cluster, run.spec, step=s.id, settings=dict(a["settings"]) if "settings" in a else None
        ),
    ),
    Kind(StepKind.DELETE_SPEC, act=lambda run, s, a: delete_spec(run.change.cluster, step=s.id)),
)
