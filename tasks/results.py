"""How checkpoints are written: JSON with a schema version, in the workspace's shared result storage.

A checkpoint is the persisted result of a mutating step (``tasks/steps.py``): a GCE operation
reference, an etcd member id, a remembered zone, or the error a step ended with. A run resumed on
another worker, possibly after haplane was upgraded, reads it back, so it is written as plain JSON
that names its schema version (never a pickle, which ties it to the exact classes of the version
that wrote it):

    {"haplane-checkpoint": 1, "kind": "gce-operation", "value": {"name": ..., "scope": ..., ...}}

A checkpoint of another schema version is refused: the step fails with :class:`CheckpointSchemaError`
naming the step, both versions and what to do, before anything is sent to GCE or etcd. (Prefect treats a
record it cannot read as absent and would run the step again; :class:`CheckpointTask` turns that into a
refusal by having :meth:`CheckpointSerializer.loads` hand back an :class:`IncompatibleCheckpoint`.)

Where checkpoints go is the workspace's result storage: ``haplane setup-workspace --result-storage
BLOCK`` makes a storage block (prefect-gcp ``GcsBucket``, or ``LocalFileSystem`` on a path every
worker shares) the server's default result storage, which every worker's flow runs then use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from prefect import Task
from prefect.serializers import Serializer
from pydantic import Field

from haplane import settings
from haplane.cloud.gce import OpRef

SCHEMA_VERSION = 1
FIELD = "haplane-checkpoint"
_PLAIN = (type(None), bool, int, float, str)


def step_key(context: Any, parameters: dict[str, Any]) -> str:
    """Where a step's checkpoint is kept: ``haplane/<cluster>/<change id>/<step>`` (the task's cache key;
    ``parameters["change"]`` is a :class:`tasks.steps.Change`)."""
    change = parameters["change"]
    # the key names a file in the result store: the step is one path component, so that a step
    # and a step derived from it ("lb", "lb/after-op") never need a file and a folder of one name
    step = parameters["step"].replace("/", "~")
    return f"haplane/{change.cluster}/{change.change_id}/{step}"


class CheckpointSchemaError(RuntimeError):
    """A checkpoint written by a haplane with another checkpoint schema."""


@dataclass(frozen=True)
class IncompatibleCheckpoint:
    """What :meth:`CheckpointSerializer.loads` returns for a checkpoint it must not interpret."""

    found: Any
    expected: int = SCHEMA_VERSION


class CheckpointedError(RuntimeError):
    """The error a step ended with, as read back from a checkpoint (type name and message only:
    never the request or response an exception may carry)."""


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def encode(obj: Any) -> dict[str, Any]:
    """The JSON document of a checkpoint value."""
    if isinstance(obj, OpRef):
        return {FIELD: SCHEMA_VERSION, "kind": "gce-operation", "value": asdict(obj)}
    if isinstance(obj, BaseException):
        return {
            FIELD: SCHEMA_VERSION,
            "kind": "error",
            "value": {"type": f"{type(obj).__module__}.{type(obj).__qualname__}", "message": str(obj)[:2000]},
        }
    if _is_plain(obj):
        return {FIELD: SCHEMA_VERSION, "kind": "json", "value": obj}
    raise TypeError(
        f"a checkpoint holds JSON values, GCE operation references or errors, not "
        f"{type(obj).__qualname__}: return plain data from a checkpointed step"
    )


def decode(doc: Any) -> Any:
    """The value of a checkpoint document, or :class:`IncompatibleCheckpoint`."""
    version = doc.get(FIELD) if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        return IncompatibleCheckpoint(found=version)
    kind, value = doc.get("kind"), doc.get("value")
    if kind == "gce-operation":
        return OpRef(**value)
    if kind == "error":
        return CheckpointedError(f"{value['type']}: {value['message']}")
    if kind == "json":
        return value
    return IncompatibleCheckpoint(found=f"{version} (unknown kind {kind!r})")


class CheckpointSerializer(Serializer):
    """Prefect result serializer for haplane's checkpoints (type ``haplane-checkpoint``)."""

    type: str = Field(default="haplane-checkpoint", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(encode(obj), sort_keys=True).encode()

    def loads(self, blob: bytes) -> Any:
        try:
            doc = json.loads(blob.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return IncompatibleCheckpoint(found="not JSON")
        return decode(doc)


def refusal(step_key: str, found: IncompatibleCheckpoint) -> CheckpointSchemaError:
    return CheckpointSchemaError(
        f"checkpoint {step_key!r} was written with haplane checkpoint schema {found.found!r}; this haplane "
        f"reads schema {found.expected}. Nothing was changed. Resume this change with the haplane version "
        f"that started it, or look at the cluster and start a new change (a new change_id) with this one."
    )


def retry_delays(default: object) -> object:
    """The delays between a mutating step's retries: ``HAPLANE_RETRY_DELAYS_S`` (seconds, comma-separated,
    e.g. ``1,3,10``; the last repeats) when set, else the task's own. Read when a retry is scheduled."""
    delays = settings.retry_delays_s()
    return default if delays is None else delays


class CheckpointTask(Task):
    """A Prefect task whose checkpoint, when it comes back in another schema, is refused, not used;
    its retry delays follow ``HAPLANE_RETRY_DELAYS_S`` when that is set (:func:`retry_delays`)."""

    @property  # type: ignore[override]
    def retry_delay_seconds(self) -> object:
        return retry_delays(self._retry_delay_seconds)

    @retry_delay_seconds.setter
    def retry_delay_seconds(self, value: object) -> None:
        self._retry_delay_seconds = value

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        out = super().__call__(*args, return_state=return_state, **kwargs)
        value = out.result(raise_on_failure=False) if return_state else out
        if isinstance(value, IncompatibleCheckpoint):
            params = dict(zip(("change", "step"), args, strict=False)) | kwargs
            raise refusal(step_key(None, params), value)
        return out
