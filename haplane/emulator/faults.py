"""Fault injection: "the next N calls of METHOD fail".

A fault spec (``POST /_emulator/faults``, JSON)::

    {"method": "compute.instances.insert",   # API method id, as in the call log
     "count": 1,                              # how many calls it hits (default 1)
     "mode": "429" | "503" | "operation_error" | "hang",
     "errorCode": "QUOTA_EXCEEDED",           # operation_error only (default "INTERNAL_ERROR")
     "errorMessage": "...",                   # optional
     "httpStatus": 409}                       # operation_error only: httpErrorStatusCode (default 400)

- ``429`` / ``503``: the call answers that status at once (rateLimitExceeded /
  backendError), before any validation or requestId lookup.
- ``operation_error``: the call returns an Operation that ends DONE with
  ``error.errors[0].code = errorCode`` after the kind's latency. Only for
  mutating methods.
- ``hang``: the call is carried out but its operation stays RUNNING (its
  work held back, as a stuck GCE operation) until the faults are cleared
  (``DELETE /_emulator/faults``); then it proceeds normally.

A 429/503/operation_error call changes nothing (no resource, no IP, no
requestId is remembered, the runtime is not called).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

MODES = ("429", "503", "operation_error", "hang")


@dataclass
class Fault:
    method: str
    mode: str
    count: int = 1
    errorCode: str = "INTERNAL_ERROR"
    errorMessage: str = ""
    httpStatus: int = 400

    @classmethod
    def from_json(cls, data: dict) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("fault spec must be a JSON object")
        method = data.get("method")
        if not isinstance(method, str) or not method.startswith("compute."):
            raise ValueError(f"fault 'method' must be an API method id like compute.instances.insert, got {method!r}")
        mode = str(data.get("mode", ""))
        if mode not in MODES:
            raise ValueError(f"fault 'mode' must be one of {list(MODES)}, got {mode!r}")
        count = int(data.get("count", 1))
        if count < 1:
            raise ValueError("fault 'count' must be >= 1")
        return cls(
            method=method,
            mode=mode,
            count=count,
            errorCode=str(data.get("errorCode") or "INTERNAL_ERROR"),
            errorMessage=str(data.get("errorMessage") or ""),
            httpStatus=int(data.get("httpStatus", 400)),
        )

    def to_json(self) -> dict:
        return asdict(self)


class FaultBook:
    """Pending faults, consumed in order per method."""

    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self, method: str) -> Fault | None:
        """The fault that hits this call of ``method``, if any (uses up one of its count)."""
        with self._lock:
            for fault in self._faults:
                if fault.method == method:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return Fault(**{**asdict(fault), "count": 1})
            return None

    def list(self) -> list[dict]:
        with self._lock:
            return [f.to_json() for f in self._faults]

    def clear(self, method: str | None = None) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if method is not None and f.method != method]
