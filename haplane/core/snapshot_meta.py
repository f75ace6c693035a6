"""What is stored beside (and authenticated with) every snapshot: pure data, so the restore rules
(:mod:`haplane.core.restore`) decide on it without the snapshot code (:mod:`haplane.cloud.snapshots`)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass

from haplane import __version__


@dataclass(frozen=True)
class SnapshotMeta:
    """What is stored beside (and authenticated with) every snapshot."""

    cluster: str
    snapshot_id: str  # "20261127T060102Z-r1234": sortable by time
    revision: int
    taken_at: str  # ISO 8601, UTC
    sha256: str  # of the plain etcd snapshot file (with etcd's own trailer)
    size: int  # bytes of the plain snapshot
    total_keys: int = 0  # etcd's count (including internal keys)
    members: int = 0  # voting members when it was taken (the size a restore grows back to)
    haplane_version: str = __version__
    where: str = ""  # the object's location, filled in when listed

    @property
    def taken(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.taken_at)

    def age_s(self, now: dt.datetime) -> float:
        return (now - self.taken).total_seconds()

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("where")
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "") -> SnapshotMeta:
        return cls.from_dict(json.loads(text), where)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> SnapshotMeta:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**{**known, "where": where})
