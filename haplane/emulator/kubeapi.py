"""The part of the Kubernetes API the API-server stand-in serves, over the cluster's etcd.

Enough for ``kubectl`` (1.20 and later) to run ``version``, ``get --raw /readyz``, ``get endpoints
kubernetes -n default``, ``get leases -n kube-system`` and ``get componentstatuses``, and for the
controller-manager and scheduler stand-ins (:mod:`haplane.emulator.controllers`) to take and renew
their ``coordination.k8s.io/v1`` Leases:

- discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/{group}/{version}``, ``/version``;
- Leases, stored as JSON under ``/registry/leases/{namespace}/{name}`` (kube-apiserver's key; it stores
  protobuf, the stand-in JSON), with ``resourceVersion`` the key's etcd ``mod_revision``: a create
  fails with 409 if the key exists, an update whose ``resourceVersion`` is not the current one
  fails with 409 (the optimistic concurrency leader election relies on);
- the ``kubernetes`` Endpoints of ``default``: the IPs under ``/registry/masterleases/``, each kept
  by one API server with an etcd lease of :data:`MASTER_LEASE_TTL_S` seconds (kube-apiserver's lease
  endpoint reconciler); an API server that stops deletes its own, one that dies drops out when its
  etcd lease runs out;
- a ``meta.k8s.io/v1`` Table when the client asks for one (kubectl's ``get``).

No authorization: every client certificate of the cluster CA may do all of this (the stand-in's
administrator, controller-manager and scheduler; a real kube-apiserver applies RBAC).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx

MASTER_LEASES = "/registry/masterleases/"
LEASES = "/registry/leases/"
# kube-apiserver's --endpoint-reconciler-type=lease: a 15 s TTL, renewed every 10 s (its reconcile interval)
MASTER_LEASE_TTL_S = 15
MASTER_LEASE_RENEW_S = 10

LEASE_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([a-z0-9-]+)/leases(?:/([a-z0-9.-]+))?$")
ENDPOINTS_PATH = re.compile(r"^/api/v1/namespaces/([a-z0-9-]+)/endpoints(?:/([a-z0-9.-]+))?$")
COMPONENTS_PATH = re.compile(r"^/api/v1/componentstatuses(?:/([a-z0-9-]+))?$")


def _r(name: str, kind: str, verbs: list[str], namespaced: bool = True, short: list[str] | None = None) -> dict:
    out = {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}
    if short:
        out["shortNames"] = short
    return out


GROUPS: dict[str, list[dict]] = {
    "coordination.k8s.io/v1": [_r("leases", "Lease", ["create", "get", "list", "update"])],
    "authentication.k8s.io/v1": [
        _r("tokenreviews", "TokenReview", ["create"], namespaced=False),
        _r("selfsubjectreviews", "SelfSubjectReview", ["create"], namespaced=False),
    ],
}
CORE: list[dict] = [
    _r("endpoints", "Endpoints", ["get", "list"], short=["ep"]),
    _r("componentstatuses", "ComponentStatus", ["get", "list"], namespaced=False, short=["cs"]),
    _r("serviceaccounts/token", "TokenRequest", ["create"]),
]


def discovery(path: str, server_address: str) -> dict | None:
    """The discovery document at ``path``, or None when it is not one."""
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }
    if path == "/api/v1":
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": CORE}
    if path == "/apis":
        groups = []
        for gv in GROUPS:
            group, version = gv.split("/")
            entry = {"groupVersion": gv, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    gv = path.removeprefix("/apis/")
    if path.startswith("/apis/") and gv in GROUPS:
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": GROUPS[gv]}
    return None


def version_info(git_version: str) -> dict:
    """``/version`` as kube-apiserver answers it, for the cluster's Kubernetes version."""
    match = re.match(r"^v(\d+)\.(\d+)", git_version)
    major, minor = (match[1], match[2]) if match else ("1", "0")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": git_version,
        "gitCommit": "haplane-standin",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "python",
        "compiler": "haplane",
        "platform": "linux/amd64",
    }


def micro_time(when: dt.datetime | None = None) -> str:
    """A ``metav1.MicroTime`` (RFC 3339 with microseconds, UTC)."""
    return (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _age(created: str | None, now: dt.datetime) -> str:
    start = parse_time(created)
    if start is None:
        return "<unknown>"
    s = max(0, int((now - start).total_seconds()))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"


# ---------------------------------------------------------------- etcd, through its JSON gateway


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdUnavailable(RuntimeError):
    pass


@dataclass
class Kv:
    key: str
    value: dict
    create_revision: int
    mod_revision: int


@dataclass
class EtcdKv:
    """Keys of the local etcd through its JSON gateway (the stand-in's storage)."""

    client: httpx.Client
    url: str

    def _post(self, path: str, body: dict) -> dict:
        try:
            resp = self.client.post(f"{self.url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(f"etcd {self.url} unreachable: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise EtcdUnavailable(f"etcd {self.url} answered {resp.status_code}")
        return resp.json()

    @staticmethod
    def _kv(raw: dict) -> Kv:
        return Kv(
            key=base64.b64decode(raw["key"]).decode(),
            value=json.loads(base64.b64decode(raw.get("value", ""))),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
        )

    def get(self, key: str) -> Kv | None:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def list(self, prefix: str) -> tuple[list[Kv], int]:
        """The keys under ``prefix`` and the store's revision."""
        out = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [self._kv(k) for k in out.get("kvs") or []], int(out.get("header", {}).get("revision", 0))

    def put_if(self, key: str, value: dict, mod_revision: int | None) -> int | None:
        """Write ``key`` if it does not exist (``mod_revision`` None) or was last written at
        ``mod_revision``; the new revision, or None when the condition failed (a conflict)."""
        compare = (
            {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            if mod_revision is None
            else {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}
        )
        put = {"request_put": {"key": _b64(key), "value": _b64(json.dumps(value, sort_keys=True))}}
        out = self._post("/v3/kv/txn", {"compare": [compare], "success": [put]})
        return int(out.get("header", {}).get("revision", 0)) if out.get("succeeded") else None

    def put_with_ttl(self, key: str, value: dict, ttl_s: int) -> None:
        lease = self._post("/v3/lease/grant", {"TTL": ttl_s})
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(json.dumps(value)), "lease": lease["ID"]})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})


# ---------------------------------------------------------------- objects


def endpoints(kvs: list[Kv], port: int) -> dict:
    """The ``kubernetes`` Endpoints of ``default`` from the API servers' master leases."""
    ips = sorted({kv.value["ip"] for kv in kvs if kv.value.get("ip")}, key=lambda ip: tuple(map(int, ip.split("."))))
    created = min((kv.value.get("since", "") for kv in kvs), default="") or None
    rv = max((kv.mod_revision for kv in kvs), default=0)
    subsets = (
        [{"addresses": [{"ip": ip} for ip in ips], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
        if ips
        else []
    )
    return {
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "resourceVersion": str(rv),
            "creationTimestamp": created,
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": subsets,
    }


def lease_object(kv: Kv) -> dict:
    obj = dict(kv.value)
    meta = dict(obj.get("metadata") or {})
    meta["resourceVersion"] = str(kv.mod_revision)
    obj["metadata"] = meta
    obj.setdefault("kind", "Lease")
    obj.setdefault("apiVersion", "coordination.k8s.io/v1")
    return obj


def check_lease(body: dict, namespace: str, name: str | None) -> tuple[dict | None, str]:
    """A Lease from a request body, cleaned for storage (no resourceVersion), or None and why not."""
    if not isinstance(body, dict) or body.get("kind", "Lease") != "Lease":
        return None, "the body is not a Lease"
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict) or not re.match(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$", str(meta.get("name", ""))):
        return None, "metadata.name: a lowercase DNS name is required"
    if name is not None and meta["name"] != name:
        return None, f"metadata.name {meta['name']!r} does not match the path's {name!r}"
    if meta.get("namespace", namespace) != namespace:
        return None, "metadata.namespace does not match the path"
    spec = body.get("spec") or {}
    if not isinstance(spec, dict):
        return None, "spec must be an object"
    clean_meta = {k: v for k, v in meta.items() if k not in ("resourceVersion", "uid", "managedFields")}
    clean_meta["namespace"] = namespace
    return {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": clean_meta, "spec": spec}, "ok"


def table(columns: list[tuple[str, str]], rows: list[tuple[list, dict]], rv: str = "") -> dict:
    """A ``meta.k8s.io/v1`` Table: ``columns`` (name, type), ``rows`` (cells, object's metadata)."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": [
            {"name": n, "type": t, "format": "name" if i == 0 else "", "description": "", "priority": 0}
            for i, (n, t) in enumerate(columns)
        ],
        "rows": [
            {
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            }
            for cells, meta in rows
        ],
    }


def endpoints_table(objs: list[dict], now: dt.datetime) -> dict:
    rows = []
    for o in objs:
        eps = [f"{a['ip']}:{p['port']}" for s in o["subsets"] for a in s["addresses"] for p in s["ports"]]
        rows.append(
            (
                [o["metadata"]["name"], ",".join(eps) or "<none>", _age(o["metadata"]["creationTimestamp"], now)],
                o["metadata"],
            )
        )
    return table([("Name", "string"), ("Endpoints", "string"), ("Age", "string")], rows)


def leases_table(objs: list[dict], now: dt.datetime) -> dict:
    rows = [
        (
            [
                o["metadata"]["name"],
                (o.get("spec") or {}).get("holderIdentity") or "",
                _age(o["metadata"].get("creationTimestamp"), now),
            ],
            o["metadata"],
        )
        for o in objs
    ]
    return table([("Name", "string"), ("Holder", "string"), ("Age", "string")], rows)


def components_table(objs: list[dict]) -> dict:
    rows = []
    for o in objs:
        cond = o["conditions"][0]
        rows.append(
            (
                [
                    o["metadata"]["name"],
                    "Healthy" if cond["status"] == "True" else "Unhealthy",
                    cond.get("message", ""),
                    cond.get("error", ""),
                ],
                o["metadata"],
            )
        )
    return table([("Name", "string"), ("Status", "string"), ("Message", "string"), ("Error", "string")], rows)


def component_status(name: str, probe: Callable[[], tuple[bool, str]]) -> dict:
    ok, message = probe()
    cond = {"type": "Healthy", "status": "True" if ok else "False"}
    cond["message" if ok else "error"] = message
    return {"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name}, "conditions": [cond]}


def wants_table(accept: str) -> bool:
    return "as=Table" in (accept or "")


def as_list(kind: str, api_version: str, items: list[dict], rv: int) -> dict:
    return {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)}, "items": items}
