"""The call log: one entry per Compute API request (admin calls are not logged).

Entry (JSON)::

    {"time": "2024-01-01T00:00:00.123456+00:00", "method": "compute.instances.insert",
     "verb": "POST", "path": "/compute/v1/projects/p/zones/z/instances",
     "requestId": "..." | null, "status": 200, "operation": "operation-..." | null,
     "outcome": "ok" | "deduplicated" | "<error reason>" | "fault:<mode>",
     "resource": "c1-master-0" | null}

``resource`` names the resource the call is about: the innermost name in the path, or for an
insert the ``name`` of the body (haplane's names start with the cluster's name, so a test that
shares the emulator picks its own calls out by it). Request bodies are never logged (instance
metadata carries private keys); the path holds no query string. Read with ``GET /_emulator/calls`` (optional
``?method=compute.instances.insert``), clear with ``DELETE /_emulator/calls``.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime

MAX_ENTRIES = 20_000


class CallLog:
    def __init__(self, max_entries: int = MAX_ENTRIES):
        self._lock = threading.Lock()
        self._entries: deque[dict] = deque(maxlen=max_entries)

    def record(
        self,
        *,
        method: str,
        verb: str,
        path: str,
        request_id: str | None,
        status: int,
        operation: str | None,
        outcome: str,
        resource: str | None = None,
    ) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "method": method,
            "verb": verb,
            "path": path,
            "requestId": request_id,
            "status": status,
            "operation": operation,
            "outcome": outcome,
            "resource": resource,
        }
        with self._lock:
            self._entries.append(entry)

    def entries(self, method: str | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self._entries if method is None or e["method"] == method]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
