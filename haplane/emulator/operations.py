"""Operations: GCE's asynchronous-call records, requestId de-duplication, the timer.

Every mutating call returns an Operation (``kind: compute#operation``) that
is created PENDING and answered RUNNING (as GCE answers), then DONE. Its work is a list of *phases*
``(fraction, callable)``: the callable runs on the timer thread pool at
``fraction * duration`` where ``duration = latency[kind] * time_scale``
(:mod:`haplane.emulator.latency`). A phase that raises
:class:`~haplane.emulator.errors.OperationError` ends the operation DONE with
``error.errors[0].code`` and ``httpErrorStatusCode``; later phases don't run.

requestId: GCE ignores a repeated request whose ``requestId`` it has seen in
the same project and scope (zone, region or global) and returns the first
operation. :meth:`OperationBook.by_request` holds them for the emulator's life.

A *hung* operation (fault mode ``hang``) turns RUNNING and then waits until
:meth:`OperationBook.release_hung` (clearing the faults) lets its phases run.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from haplane.emulator.errors import HTTP_MESSAGES, ApiError, OperationError, not_found
from haplane.emulator.latency import LatencyModel
from haplane.emulator.store import Store, now_rfc3339

log = logging.getLogger(__name__)

Phase = tuple[float, Callable[[], None]]


class Timer:
    """Runs callables after a delay: one timer thread, a small pool to run them."""

    def __init__(self, workers: int = 8):
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulator-op")
        self._thread = threading.Thread(target=self._loop, name="emulator-timer", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn))
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                self._pool.submit(fn)
            except RuntimeError:  # pool shut down
                return

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _scope_link_field(scope: str) -> str | None:
    if scope.startswith("zones/"):
        return "zone"
    if scope.startswith("regions/"):
        return "region"
    return None


class OperationBook:
    def __init__(self, store: Store, latency: LatencyModel, timer: Timer):
        self.store = store
        self.latency = latency
        self.timer = timer
        self._ops: dict[tuple[str, str, str], dict] = {}
        self._by_request: dict[tuple[str, str, str], dict] = {}
        self._hung: list[Callable[[], None]] = []
        self._by_name: dict[str, tuple[str, str, str]] = {}

    # --- records ------------------------------------------------------------------------

    def by_request(self, project: str, scope: str, request_id: str | None) -> dict | None:
        if not request_id:
            return None
        with self.store.lock:
            op = self._by_request.get((project, scope, request_id))
            return copy.deepcopy(op) if op else None

    def create(
        self,
        project: str,
        scope: str,
        op_type: str,
        target_link: str,
        target_id: str | None,
        request_id: str | None = None,
    ) -> dict:
        """A new PENDING operation; remembered under ``request_id`` when one is given."""
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(6)}-{secrets.token_hex(4)}"
        scope_path = f"projects/{project}/{scope}" if scope != "global" else f"projects/{project}/global"
        op = {
            "kind": "compute#operation",
            "id": self.store.new_id(),
            "name": name,
            "operationType": op_type,
            "targetLink": target_link,
            "status": "PENDING",
            "user": "emulator@haplane.local",
            "progress": 0,
            "insertTime": now_rfc3339(),
            "selfLink": self.store.link(f"{scope_path}/operations/{name}"),
        }
        # GCE names a target id even when the call fails (an insert refused in its operation)
        op["targetId"] = target_id or self.store.new_id()
        field = _scope_link_field(scope)
        if field:
            op[field] = self.store.link(f"projects/{project}/{scope}")
        with self.store.lock:
            self._ops[(project, scope, name)] = op
            self._by_name[name] = (project, scope, name)
            if request_id:
                self._by_request[(project, scope, request_id)] = op
            return copy.deepcopy(op)

    def get(self, project: str, scope: str, name: str) -> dict:
        with self.store.lock:
            op = self._ops.get((project, scope, name))
            if op is None:
                raise not_found(f"projects/{project}/{scope}/operations/{name}")
            return copy.deepcopy(op)

    def table(self) -> dict[tuple[str, str, str], dict]:
        """Every operation, keyed (project, scope, name) (call under the store lock; don't mutate)."""
        return self._ops

    def wait(self, project: str, scope: str, name: str, timeout: float) -> dict:
        """Long-poll: the operation once DONE, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.store.changed:
            op = self._ops.get((project, scope, name))
            if op is None:
                raise not_found(f"projects/{project}/{scope}/operations/{name}")
            while op["status"] != "DONE":
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.store.changed.wait(remaining)
            return copy.deepcopy(op)

    # --- progress -----------------------------------------------------------------------

    def run(
        self, op_json: dict, kind: str, phases: list[Phase], *, hang: bool = False, fail: OperationError | None = None
    ) -> dict:
        """Carry the operation out: RUNNING now (as GCE answers the call), ``phases`` over its
        duration, DONE at the end. Returns the operation as the call answers it."""
        project_scope_name = self._key(op_json)
        duration = self.latency.duration(kind)
        op = self._ops[project_scope_name]
        self._update(op, status="RUNNING", startTime=now_rfc3339())
        with self.store.lock:
            answer = copy.deepcopy(op)

        def begin() -> None:
            if hang:
                with self.store.lock:
                    self._hung.append(lambda: self._step(op, duration, phases, fail, 0.0))
                return
            self._step(op, duration, phases, fail, 0.0)

        self.timer.call_later(0, begin)
        return answer

    def release_hung(self) -> int:
        with self.store.lock:
            hung, self._hung = self._hung, []
        for cont in hung:
            self.timer.call_later(0, cont)
        return len(hung)

    def _step(self, op: dict, duration: float, phases: list[Phase], fail: OperationError | None, done: float) -> None:
        if not phases:
            self.timer.call_later(max(0.0, (1.0 - done) * duration), lambda: self._finish(op, fail))
            return
        fraction, fn = phases[0]

        def run_phase() -> None:
            try:
                fn()
            except OperationError as exc:
                self._finish(op, exc)
                return
            except ApiError as exc:
                self._finish(op, OperationError(exc.reason.upper(), exc.message, exc.code))
                return
            except Exception as exc:  # a bug or a runtime failure: the operation fails, visibly
                log.exception("operation %s phase failed", op["name"])
                self._finish(op, OperationError("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}", 500))
                return
            self._update(op, progress=int(fraction * 100))
            self._step(op, duration, phases[1:], fail, fraction)

        self.timer.call_later(max(0.0, (fraction - done) * duration), run_phase)

    def _finish(self, op: dict, error: OperationError | None) -> None:
        fields = {"status": "DONE", "progress": 100, "endTime": now_rfc3339()}
        if error is not None:
            fields["error"] = {"errors": [{"code": error.code, "message": error.message}]}
            fields["httpErrorStatusCode"] = error.http_status
            fields["httpErrorMessage"] = HTTP_MESSAGES.get(error.http_status, "ERROR")
        self._update(op, **fields)

    def _update(self, op: dict, **fields) -> None:
        with self.store.changed:
            op.update(fields)
            op.setdefault("startTime", op.get("endTime"))
            if op.get("startTime") is None:
                op.pop("startTime")
            self.store.changed.notify_all()

    def _key(self, op_json: dict) -> tuple[str, str, str]:
        with self.store.lock:
            return self._by_name[op_json["name"]]
