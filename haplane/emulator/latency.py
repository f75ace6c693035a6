"""The latency model: how long each kind of operation takes before it is DONE.

An operation of kind ``K`` stays PENDING/RUNNING for ``seconds[K] * time_scale``
seconds (instance inserts pass through PROVISIONING -> STAGING -> RUNNING on
the way). Two profiles:

``instant``  every kind 0 s: operations finish as soon as the emulator's
             timer thread gets to them (the default, for tests).
``gce``      figures from published measurements (:mod:`haplane.core.gce_timings`, the
             same ones the plans estimate durations with); with
             ``time_scale=0.01`` a 20-minute load balancer takes 12 s.

Set at start (``--profile``, ``--time-scale``) and at run time with
``POST /_emulator/latency {"profile": "gce", "timeScale": 0.01, "seconds": {"address": 1}}``
(:meth:`haplane.emulator.admin.EmulatorAdmin.set_latency`).
"""

from __future__ import annotations

import threading

from haplane.core.gce_timings import GCE_SECONDS, KINDS

PROFILES: dict[str, dict[str, float]] = {
    "instant": {kind: 0.0 for kind in KINDS},
    # figures from published measurements, with their sources: haplane/core/gce_timings.py
    "gce": dict(GCE_SECONDS),
}


class LatencyModel:
    """Seconds per operation kind, times ``time_scale``; thread-safe, changeable at run time."""

    def __init__(self, profile: str = "instant", time_scale: float = 1.0):
        self._lock = threading.Lock()
        self.profile = "instant"
        self.time_scale = 1.0
        self.seconds: dict[str, float] = dict(PROFILES["instant"])
        self.configure(profile=profile, time_scale=time_scale)

    def configure(
        self,
        profile: str | None = None,
        time_scale: float | None = None,
        seconds: dict[str, float] | None = None,
    ) -> dict:
        """Switch profile (resets per-kind overrides), scale, and/or override some kinds."""
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown latency profile {profile!r}; expected one of {sorted(PROFILES)}")
        if time_scale is not None and not (float(time_scale) >= 0):
            raise ValueError(f"time scale must be >= 0, got {time_scale!r}")
        unknown = set(seconds or {}) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown latency kinds {sorted(unknown)}; expected some of {list(KINDS)}")
        if any(not (float(v) >= 0) for v in (seconds or {}).values()):
            raise ValueError("latency seconds must be >= 0")
        with self._lock:
            if profile is not None:
                self.profile = profile
                self.seconds = dict(PROFILES[profile])
            if time_scale is not None:
                self.time_scale = float(time_scale)
            for kind, value in (seconds or {}).items():
                self.seconds[kind] = float(value)
            return self._snapshot()

    def duration(self, kind: str) -> float:
        """Seconds an operation of ``kind`` takes now (unknown kinds use ``default``)."""
        with self._lock:
            return self.seconds.get(kind, self.seconds["default"]) * self.time_scale

    def snapshot(self) -> dict:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict:
        return {"profile": self.profile, "timeScale": self.time_scale, "seconds": dict(self.seconds)}
