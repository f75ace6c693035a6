"""What every resource handler shares: the call, the context, names, links, list replies."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from haplane.emulator import listing
from haplane.emulator.catalog import Catalog
from haplane.emulator.errors import OperationError, invalid, not_found, required
from haplane.emulator.faults import Fault
from haplane.emulator.latency import LatencyModel
from haplane.emulator.operations import OperationBook, Phase
from haplane.emulator.runtime import Runtime, VmView
from haplane.emulator.store import Store, fingerprint

LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LINK_RE = re.compile(
    r"(?:^|/)projects/(?P<project>[^/]+)/(?:(?P<scope_kind>zones|regions)/(?P<scope>[^/]+)|global)"
    r"/(?P<collection>[A-Za-z]+)/(?P<name>[^/?]+)$"
)


@dataclass
class Call:
    """One Compute API request, after routing."""

    verb: str
    path: str
    method: str  # API method id, e.g. compute.instances.insert
    params: dict[str, str]
    query: dict[str, str]
    body: dict | None
    fault: Fault | None = None
    request_id: str | None = None

    @property
    def project(self) -> str:
        return self.params["project"]

    @property
    def scope(self) -> str:
        """``zones/Z``, ``regions/R`` or ``global``: where operations and requestIds live."""
        if "zone" in self.params:
            return f"zones/{self.params['zone']}"
        if "region" in self.params:
            return f"regions/{self.params['region']}"
        return "global"

    def json(self) -> dict:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise invalid("Request body must be a JSON object")
        return self.body


@dataclass
class Ctx:
    """The emulator's parts, as handlers see them."""

    store: Store
    ops: OperationBook
    runtime: Runtime
    catalog: Catalog
    latency: LatencyModel
    wait_timeout: float = 120.0
    extra: dict = field(default_factory=dict)

    def operation(
        self,
        call: Call,
        op_type: str,
        kind: str,
        target_link: str,
        target_id: str | None,
        phases: list[Phase],
        fail: OperationError | None = None,
    ) -> dict:
        """Create the call's operation (remembering its requestId) and start it."""
        hang = call.fault is not None and call.fault.mode == "hang"
        op = self.ops.create(call.project, call.scope, op_type, target_link, target_id, call.request_id)
        return self.ops.run(op, kind, phases, hang=hang, fail=fail)


def check_name(name, what: str = "resource") -> str:
    if name is None or name == "":
        raise required(f"{what}.name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise invalid(
            f"Invalid value for field '{what}.name': '{name}'. "
            "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'"
        )
    return name


def labelled(value, field: str = "labels") -> dict:
    """``labels`` (when any) and ``labelFingerprint``, as GCE serves them on labellable resources."""
    if value is None:
        value = {}
    if not isinstance(value, dict) or not all(
        LABEL_KEY_RE.match(str(k)) and LABEL_VALUE_RE.match(str(v)) for k, v in value.items()
    ):
        raise invalid(
            f"Invalid value for field '{field}': {value!r}. Label keys and values must be lowercase "
            "letters, digits, '_' or '-' (keys start with a letter)."
        )
    labels = {str(k): str(v) for k, v in value.items()}
    return {**({"labels": labels} if labels else {}), "labelFingerprint": fingerprint(labels)}


def check_request_id(request_id: str | None) -> str | None:
    if not request_id:
        return None
    try:
        parsed = uuid.UUID(request_id)
    except ValueError:
        raise invalid(f"Invalid value for field 'requestId': '{request_id}'. Must be a valid UUID.") from None
    if parsed.int == 0:
        raise invalid("Invalid value for field 'requestId': the zero UUID is not supported.")
    return request_id


def parse_link(link: str) -> dict[str, str]:
    """``.../projects/P/zones/Z/instances/N`` -> {project, scope_kind, scope, collection, name}."""
    m = LINK_RE.search(link or "")
    if not m:
        raise invalid(f"Invalid resource link '{link}'")
    return {k: v or "" for k, v in m.groupdict().items()}


def resource_path(project: str, scope: str, collection: str, name: str) -> str:
    return f"projects/{project}/{scope}/{collection}/{name}"


def list_reply(ctx: Ctx, call: Call, kind: str, collection: str, resources) -> dict:
    """A paged ``list`` reply over ``resources`` of the call's scope (see :mod:`.listing`)."""
    scope = "" if collection in ("regions", "zones") else f"{call.scope}/"
    path = f"projects/{call.project}/{scope}{collection}"
    return listing.list_reply(ctx.store.base_url, path, kind, resources, call.query)


def scopes(ctx: Ctx, kind: str) -> list[str]:
    """Every scope of one kind the catalogue has: ``zones/Z``, ``regions/R`` or ``global``."""
    if kind == "zones":
        return [f"zones/{z}" for z in ctx.catalog.zones()]
    if kind == "regions":
        return [f"regions/{r}" for r in ctx.catalog.regions]
    return ["global"]


def aggregated_reply(
    ctx: Ctx, call: Call, kind: str, collection: str, table: dict, scope_kinds: tuple[str, ...]
) -> dict:
    """A paged ``aggregatedList`` reply over a store table keyed ``(project, [zone|region,] name)``."""
    scoped: dict[str, list[dict]] = {s: [] for k in scope_kinds for s in scopes(ctx, k)}
    scope_kind = scope_kinds[0]
    for key, resource in table.items():
        if key[0] != call.project:
            continue
        scope = "global" if len(key) == 2 else f"{scope_kind}/{key[1]}"
        scoped.setdefault(scope, []).append(resource)
    unreachable = [f"zones/{z}" for z in ctx.store.failed_zones] if "zones" in scope_kinds else []
    return listing.aggregated_reply(ctx.store.base_url, call.project, kind, collection, scoped, call.query, unreachable)


def scoped_list_handlers(table: str, resource: str, collection: str, scope: str):
    """``list`` and ``aggregatedList`` of a zonal (``scope="zone"``) or regional (``"region"``) collection
    kept in the store table ``table``, keyed ``(project, zone|region, name)``; ``resource`` names the
    kinds (``compute#{resource}List``, ``compute#{resource}AggregatedList``)."""

    def list_(ctx: Ctx, call: Call) -> dict:
        where = call.params[scope]
        with ctx.store.lock:
            found = [r for (p, s, _), r in getattr(ctx.store, table).items() if p == call.project and s == where]
            return list_reply(ctx, call, f"compute#{resource}List", collection, found)

    def aggregated_list(ctx: Ctx, call: Call) -> dict:
        with ctx.store.lock:
            return aggregated_reply(
                ctx, call, f"compute#{resource}AggregatedList", collection, getattr(ctx.store, table), (scope + "s",)
            )

    return list_, aggregated_list


def get_or_404(table: dict, key: tuple, path: str) -> dict:
    resource = table.get(key)
    if resource is None:
        raise not_found(path)
    return resource


def vm_view(inst: dict) -> VmView:
    """The runtime's view of an instance (call under the store lock)."""
    nic = inst["networkInterfaces"][0]
    return VmView(
        project=inst["_project"],
        zone=inst["_zone"],
        name=inst["name"],
        internal_ip=nic["networkIP"],
        external_ips=tuple(ac["natIP"] for ac in nic.get("accessConfigs", []) if ac.get("natIP")),
        metadata={i["key"]: i.get("value", "") for i in inst["metadata"].get("items", [])},
        tags=tuple(inst.get("tags", {}).get("items", [])),
    )


def refresh_address(store: Store, ip: str) -> None:
    """Recompute an address's ``users`` and IN_USE/RESERVED status from who uses its IP (under lock)."""
    for addr in store.addresses.values():
        if addr.get("address") != ip:
            continue
        users = []
        inst = store.instance_using_ip(ip)
        if inst is not None:
            users.append(inst["selfLink"])
        rule = store.forwarding_rule_on_ip(ip)
        if rule is not None:
            users.append(rule["selfLink"])
        if users:
            addr["users"] = users
        else:
            addr.pop("users", None)
        if addr["status"] != "RESERVING":
            addr["status"] = "IN_USE" if users else "RESERVED"


def release_ip(store: Store, ip: str) -> None:
    """Hand ``ip`` back to its pool if nothing (address, instance, forwarding rule) holds it (under lock)."""
    if any(a.get("address") == ip for a in store.addresses.values()):
        refresh_address(store, ip)
        return
    if store.instance_using_ip(ip) or store.forwarding_rule_on_ip(ip):
        return
    for pool in (store.ephemeral_ips, store.static_ips, store.internal_ips):
        if pool.contains(ip):
            pool.release(ip)
