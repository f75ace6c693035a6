"""A canary through the cluster's endpoint: what a Kubernetes client sees while the cluster changes.

Every ``period`` seconds it writes through the endpoint IP (``POST /haplane/canary`` on the API
server, which puts a key into etcd: it needs etcd's quorum) and reads ``/readyz``, with TLS verified
against the cluster CA. Used by the availability benchmark (bench/bench_availability.py) and by
the certificate tests.

``retry_s``: a write that does not succeed is tried again (a new connection, so the load balancer
may pick another replica) until this many seconds have passed since its first attempt, as a client
retries a refused connection; a sample's ``write_ok`` is then "the write was taken within retry_s".
0 (the benchmark): one attempt per sample.

``ca``: the cluster CA's PEM, or a function returning the PEM bundle to trust now (a CA rotation
hands clients the new CA beside the old one before any server presents it); it is asked again
every ``ca_refresh_s`` on a thread of its own, and the TLS context is rebuilt when the bundle changes.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

PERIOD = 0.1


@dataclass
class Sample:
    t: float  # wall-clock seconds
    write_ok: bool
    read_ok: bool
    attempts: int = 1  # write attempts (more than one only with retry_s)
    error: str = ""  # why the last failed write attempt failed


class EndpointCanary:
    """Every ``period`` s: a write through the endpoint (API server -> etcd) and a /readyz read."""

    def __init__(
        self,
        ip: str,
        ca: str | Callable[[], str],
        *,
        period: float = PERIOD,
        retry_s: float = 0.0,
        timeout: float = 1.0,
        ca_refresh_s: float = 0.5,
    ):
        self.base = f"https://{ip}:6443"
        self._ca = ca
        self.period, self.retry_s, self.timeout, self.ca_refresh_s = period, retry_s, timeout, ca_refresh_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)
        # the bundle is fetched on a thread of its own: a slow fetch never holds a write back
        self._refresher = threading.Thread(target=self._refresh, name="canary-ca", daemon=True)
        self._lock = threading.Lock()
        self._wanted = ca if isinstance(ca, str) else ""
        self._pem = ""
        self._http: httpx.Client | None = None

    def _refresh(self) -> None:
        while not self._stop.wait(self.ca_refresh_s):
            try:
                pem = self._ca()  # type: ignore[operator]
            except Exception:  # noqa: BLE001 - not readable now: keep trusting what we trust
                continue
            with self._lock:
                self._wanted = pem

    def _client(self) -> httpx.Client:
        with self._lock:
            wanted = self._wanted
        if self._http is None or wanted != self._pem:
            if self._http is not None:
                self._http.close()
            self._pem = wanted
            self._http = httpx.Client(verify=ssl.create_default_context(cadata=wanted), timeout=self.timeout)
        return self._http

    def _write(self, n: int | str) -> tuple[bool, int, str]:
        first, attempts, error = time.monotonic(), 0, ""
        while True:
            attempts += 1
            try:
                w = self._client().post(f"{self.base}/haplane/canary", json={"key": str(n), "value": str(time.time())})
                if w.status_code == 200:
                    return True, attempts, ""
                error = f"{w.status_code} {w.text.strip()[:100]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            if time.monotonic() - first >= self.retry_s or self._stop.is_set():
                return False, attempts, error
            time.sleep(0.05)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            start = time.monotonic()
            n += 1
            write_ok, attempts, error = self._write(n)
            try:
                read_ok = self._client().get(f"{self.base}/readyz").status_code == 200
            except httpx.HTTPError:
                read_ok = False
            self.samples.append(Sample(time.time(), write_ok, read_ok, attempts, error))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - start)))

    @property
    def failed_writes(self) -> list[Sample]:
        return [s for s in self.samples if not s.write_ok]

    def start(self) -> EndpointCanary:
        if callable(self._ca):
            self._wanted = self._ca()
            self._refresher.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(max(5.0, self.retry_s + 5.0))
        if self._refresher.is_alive():
            self._refresher.join(30)
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> EndpointCanary:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
