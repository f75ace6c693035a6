"""An administrator's kubeconfig: the endpoint, the cluster CA and a short-lived client certificate.

Pure: :func:`parse_ttl` checks the lifetime asked for, :func:`issue_admin` signs the certificate
(``O=system:masters``, the group kube-apiserver's RBAC binds to cluster-admin), and :func:`render`
builds the kubeconfig (JSON, which kubectl reads as it reads YAML). The private key leaves only
through :func:`write_private` (a new file, mode 0600): never a log line, a task result or an
artifact. The same kubeconfig works against the emulator's API stand-in and a real kube-apiserver.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
from pathlib import Path

from haplane.cloud.pki import CertKey, ClusterCAs, issue

DEFAULT_TTL = "8h"
MAX_TTL = dt.timedelta(hours=24)
MIN_TTL = dt.timedelta(minutes=5)
ADMIN_USER = "haplane-admin"
ADMIN_GROUP = "system:masters"

_TTL = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_ttl(text: str) -> dt.timedelta:
    """``8h``, ``90m``, ``3600s``, ``1d``: between 5 minutes and 24 hours, else a ValueError that
    says what is accepted."""
    match = _TTL.match(str(text).strip())
    if not match:
        raise ValueError(
            f"--ttl {text!r} is not a duration: give a number and a unit, e.g. 8h, 90m, 3600s "
            f"(at most {MAX_TTL // dt.timedelta(hours=1)}h)"
        )
    ttl = dt.timedelta(**{_UNIT[match[2]]: int(match[1])})
    if ttl > MAX_TTL:
        raise ValueError(
            f"--ttl {text} is longer than the 24h an administrator certificate may last: "
            f"ask again for a new kubeconfig when it expires"
        )
    if ttl < MIN_TTL:
        raise ValueError(f"--ttl {text} is shorter than {MIN_TTL.seconds // 60} minutes: give at least 5m")
    return ttl


def issue_admin(
    cas: ClusterCAs, ttl: dt.timedelta, *, user: str = ADMIN_USER, now: dt.datetime | None = None
) -> CertKey:
    """A client certificate of the cluster CA for ``user`` in group ``system:masters``, valid ``ttl``."""
    return issue(
        cas.ca, role="admin-client", common_name=user, organization=ADMIN_GROUP, client=True, lifetime=ttl, now=now
    )


def render(cluster: str, server: str, ca_bundle: str, client: CertKey, user: str = ADMIN_USER) -> str:
    """The kubeconfig text (it holds the private key: write it with :func:`write_private` only)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_bundle)}}],
        "users": [
            {
                "name": f"{user}@{cluster}",
                "user": {
                    "client-certificate-data": _b64(client.cert_pem),
                    "client-key-data": _b64(client.key_pem.get_secret_value()),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"{user}@{cluster}"}}],
        "current-context": cluster,
        "preferences": {},
    }
    return json.dumps(doc, indent=2) + "\n"


def _b64(text: str) -> str:

    return base64.b64encode(text.encode()).decode()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte; an existing
    file is replaced, and its mode set to 0600 too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def server_url(endpoint_ip: str, port: int) -> str:
    host = f"[{endpoint_ip}]" if ":" in endpoint_ip else endpoint_ip
    return f"https://{host}:{port}"
