"""Routing and dispatch of the Compute Engine REST API (``/compute/v1/...``).

:meth:`ComputeApi.handle` takes one request and answers ``(status, json)``:

1. route it to an API method id (``compute.instances.insert``...); an unknown
   path answers 404, a known collection with a method the emulator lacks 501;
2. unknown zone/region -> 404; a zone failed over the admin API -> 503;
3. an injected fault for the method (see :mod:`haplane.emulator.faults`);
4. a repeated ``requestId`` in the same project and scope returns the first
   operation and changes nothing (``outcome: deduplicated`` in the call log);
5. the handler; every call is logged (:mod:`haplane.emulator.calllog`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from haplane.emulator import addresses, firewalls, instances, listing, loadbalancer
from haplane.emulator.calllog import CallLog
from haplane.emulator.errors import (
    ApiError,
    OperationError,
    backend_error,
    not_found,
    not_implemented,
    rate_limited,
)
from haplane.emulator.faults import FaultBook
from haplane.emulator.resources import Call, Ctx, check_request_id, list_reply, scopes

log = logging.getLogger(__name__)

Handler = Callable[[Ctx, Call], dict]


@dataclass(frozen=True)
class Route:
    verb: str
    template: str
    method: str
    handler: Handler
    kind: str | None = None  # latency kind: set for mutating methods (they return an Operation)

    def pattern(self) -> re.Pattern:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
        return re.compile(f"^/compute/v1/projects/{regex}$")


# --- regions, zones, operations -----------------------------------------------------------------


def _region_json(ctx: Ctx, project: str, region: str) -> dict:
    return {
        "kind": "compute#region",
        "id": str(1000 + sorted(ctx.catalog.regions).index(region)),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": region,
        "description": region,
        "status": "UP",
        "zones": [ctx.store.link(f"projects/{project}/zones/{z}") for z in ctx.catalog.regions[region]],
        "selfLink": ctx.store.link(f"projects/{project}/regions/{region}"),
    }


def _zone_json(ctx: Ctx, project: str, zone: str) -> dict:
    region = ctx.catalog.region_of(zone)
    return {
        "kind": "compute#zone",
        "id": str(2000 + ctx.catalog.zones().index(zone)),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": zone,
        "description": zone,
        "status": "DOWN" if zone in ctx.store.failed_zones else "UP",
        "region": ctx.store.link(f"projects/{project}/regions/{region}"),
        "selfLink": ctx.store.link(f"projects/{project}/zones/{zone}"),
        "availableCpuPlatforms": ["Intel Broadwell", "AMD Milan"],
    }


def region_get(ctx: Ctx, call: Call) -> dict:
    return _region_json(ctx, call.project, call.params["region"])


def region_list(ctx: Ctx, call: Call) -> dict:
    items = [_region_json(ctx, call.project, r) for r in ctx.catalog.regions]
    return list_reply(ctx, call, "compute#regionList", "regions", items)


def zone_get(ctx: Ctx, call: Call) -> dict:
    return _zone_json(ctx, call.project, call.params["zone"])


def zone_list(ctx: Ctx, call: Call) -> dict:
    items = [_zone_json(ctx, call.project, z) for z in ctx.catalog.zones()]
    return list_reply(ctx, call, "compute#zoneList", "zones", items)


def op_get(ctx: Ctx, call: Call) -> dict:
    return ctx.ops.get(call.project, call.scope, call.params["operation"])


def op_wait(ctx: Ctx, call: Call) -> dict:
    return ctx.ops.wait(call.project, call.scope, call.params["operation"], ctx.wait_timeout)


def op_list(ctx: Ctx, call: Call) -> dict:
    with ctx.store.lock:
        found = [op for (p, s, _), op in ctx.ops.table().items() if p == call.project and s == call.scope]
        return list_reply(ctx, call, "compute#operationList", "operations", found)


def op_aggregated_list(ctx: Ctx, call: Call) -> dict:
    """globalOperations.aggregatedList: every zone's, region's and the global operations."""
    scoped: dict[str, list[dict]] = {s: [] for k in ("global", "regions", "zones") for s in scopes(ctx, k)}
    with ctx.store.lock:
        for (p, scope, _), op in ctx.ops.table().items():
            if p == call.project:
                scoped.setdefault(scope, []).append(op)
        unreachable = [f"zones/{z}" for z in ctx.store.failed_zones]
        return listing.aggregated_reply(
            ctx.store.base_url,
            call.project,
            "compute#operationAggregatedList",
            "operations",
            scoped,
            call.query,
            unreachable,
        )


ROUTES: list[Route] = [
    Route("GET", "{project}/regions", "compute.regions.list", region_list),
    Route("GET", "{project}/regions/{region}", "compute.regions.get", region_get),
    Route("GET", "{project}/zones", "compute.zones.list", zone_list),
    Route("GET", "{project}/zones/{zone}", "compute.zones.get", zone_get),
    # instances
    Route("POST", "{project}/zones/{zone}/instances", "compute.instances.insert", instances.insert, "instance_insert"),
    Route("GET", "{project}/zones/{zone}/instances", "compute.instances.list", instances.list_),
    Route("GET", "{project}/aggregated/instances", "compute.instances.aggregatedList", instances.aggregated_list),
    Route("GET", "{project}/zones/{zone}/instances/{instance}", "compute.instances.get", instances.get),
    Route(
        "DELETE",
        "{project}/zones/{zone}/instances/{instance}",
        "compute.instances.delete",
        instances.delete,
        "instance_delete",
    ),
    Route(
        "POST",
        "{project}/zones/{zone}/instances/{instance}/addAccessConfig",
        "compute.instances.addAccessConfig",
        instances.add_access_config,
        "instance_update",
    ),
    Route(
        "POST",
        "{project}/zones/{zone}/instances/{instance}/deleteAccessConfig",
        "compute.instances.deleteAccessConfig",
        instances.delete_access_config,
        "instance_update",
    ),
    Route(
        "POST",
        "{project}/zones/{zone}/instances/{instance}/setLabels",
        "compute.instances.setLabels",
        instances.set_labels,
        "instance_update",
    ),
    Route(
        "POST",
        "{project}/zones/{zone}/instances/{instance}/setMetadata",
        "compute.instances.setMetadata",
        instances.set_metadata,
        "instance_update",
    ),
    Route(
        "POST",
        "{project}/zones/{zone}/instances/{instance}/stop",
        "compute.instances.stop",
        instances.stop,
        "instance_stop",
    ),
    Route(
        "POST",
        "{project}/zones/{zone}/instances/{instance}/start",
        "compute.instances.start",
        instances.start,
        "instance_start",
    ),
    # addresses
    Route("POST", "{project}/regions/{region}/addresses", "compute.addresses.insert", addresses.insert, "address"),
    Route("GET", "{project}/regions/{region}/addresses", "compute.addresses.list", addresses.list_),
    Route("GET", "{project}/aggregated/addresses", "compute.addresses.aggregatedList", addresses.aggregated_list),
    Route("GET", "{project}/regions/{region}/addresses/{address}", "compute.addresses.get", addresses.get),
    Route(
        "DELETE",
        "{project}/regions/{region}/addresses/{address}",
        "compute.addresses.delete",
        addresses.delete,
        "address",
    ),
    # load balancing
    Route(
        "POST",
        "{project}/global/httpHealthChecks",
        "compute.httpHealthChecks.insert",
        loadbalancer.hc_insert,
        "health_check",
    ),
    Route("GET", "{project}/global/httpHealthChecks", "compute.httpHealthChecks.list", loadbalancer.hc_list),
    Route(
        "GET",
        "{project}/global/httpHealthChecks/{httpHealthCheck}",
        "compute.httpHealthChecks.get",
        loadbalancer.hc_get,
    ),
    Route(
        "DELETE",
        "{project}/global/httpHealthChecks/{httpHealthCheck}",
        "compute.httpHealthChecks.delete",
        loadbalancer.hc_delete,
        "health_check",
    ),
    Route(
        "POST", "{project}/global/healthChecks", "compute.healthChecks.insert", loadbalancer.hc_insert, "health_check"
    ),
    Route("GET", "{project}/global/healthChecks", "compute.healthChecks.list", loadbalancer.hc_list),
    Route(
        "GET",
        "{project}/aggregated/healthChecks",
        "compute.healthChecks.aggregatedList",
        loadbalancer.hc_aggregated_list,
    ),
    Route("GET", "{project}/global/healthChecks/{healthCheck}", "compute.healthChecks.get", loadbalancer.hc_get),
    Route(
        "DELETE",
        "{project}/global/healthChecks/{healthCheck}",
        "compute.healthChecks.delete",
        loadbalancer.hc_delete,
        "health_check",
    ),
    Route(
        "POST",
        "{project}/regions/{region}/targetPools",
        "compute.targetPools.insert",
        loadbalancer.tp_insert,
        "target_pool",
    ),
    Route("GET", "{project}/regions/{region}/targetPools", "compute.targetPools.list", loadbalancer.tp_list),
    Route(
        "GET", "{project}/aggregated/targetPools", "compute.targetPools.aggregatedList", loadbalancer.tp_aggregated_list
    ),
    Route("GET", "{project}/regions/{region}/targetPools/{targetPool}", "compute.targetPools.get", loadbalancer.tp_get),
    Route(
        "DELETE",
        "{project}/regions/{region}/targetPools/{targetPool}",
        "compute.targetPools.delete",
        loadbalancer.tp_delete,
        "target_pool",
    ),
    Route(
        "POST",
        "{project}/regions/{region}/targetPools/{targetPool}/addInstance",
        "compute.targetPools.addInstance",
        loadbalancer.tp_add_instance,
        "target_pool",
    ),
    Route(
        "POST",
        "{project}/regions/{region}/targetPools/{targetPool}/removeInstance",
        "compute.targetPools.removeInstance",
        loadbalancer.tp_remove_instance,
        "target_pool",
    ),
    Route(
        "POST",
        "{project}/regions/{region}/targetPools/{targetPool}/getHealth",
        "compute.targetPools.getHealth",
        loadbalancer.tp_get_health,
    ),
    Route(
        "POST",
        "{project}/regions/{region}/forwardingRules",
        "compute.forwardingRules.insert",
        loadbalancer.fr_insert,
        "forwarding_rule_insert",
    ),
    Route("GET", "{project}/regions/{region}/forwardingRules", "compute.forwardingRules.list", loadbalancer.fr_list),
    Route(
        "GET",
        "{project}/aggregated/forwardingRules",
        "compute.forwardingRules.aggregatedList",
        loadbalancer.fr_aggregated_list,
    ),
    Route(
        "GET",
        "{project}/regions/{region}/forwardingRules/{forwardingRule}",
        "compute.forwardingRules.get",
        loadbalancer.fr_get,
    ),
    Route(
        "DELETE",
        "{project}/regions/{region}/forwardingRules/{forwardingRule}",
        "compute.forwardingRules.delete",
        loadbalancer.fr_delete,
        "forwarding_rule_delete",
    ),
    # firewalls
    Route("POST", "{project}/global/firewalls", "compute.firewalls.insert", firewalls.insert, "firewall"),
    Route("GET", "{project}/global/firewalls", "compute.firewalls.list", firewalls.list_),
    Route("GET", "{project}/global/firewalls/{firewall}", "compute.firewalls.get", firewalls.get),
    Route("DELETE", "{project}/global/firewalls/{firewall}", "compute.firewalls.delete", firewalls.delete, "firewall"),
    # operations
    Route("GET", "{project}/zones/{zone}/operations", "compute.zoneOperations.list", op_list),
    Route("GET", "{project}/regions/{region}/operations", "compute.regionOperations.list", op_list),
    Route("GET", "{project}/global/operations", "compute.globalOperations.list", op_list),
    Route("GET", "{project}/aggregated/operations", "compute.globalOperations.aggregatedList", op_aggregated_list),
    Route("GET", "{project}/zones/{zone}/operations/{operation}", "compute.zoneOperations.get", op_get),
    Route("POST", "{project}/zones/{zone}/operations/{operation}/wait", "compute.zoneOperations.wait", op_wait),
    Route("GET", "{project}/regions/{region}/operations/{operation}", "compute.regionOperations.get", op_get),
    Route("POST", "{project}/regions/{region}/operations/{operation}/wait", "compute.regionOperations.wait", op_wait),
    Route("GET", "{project}/global/operations/{operation}", "compute.globalOperations.get", op_get),
    Route("POST", "{project}/global/operations/{operation}/wait", "compute.globalOperations.wait", op_wait),
]

# A path under one of these collections that no route serves is "not implemented", not "not found".
KNOWN_COLLECTION = re.compile(
    r"^/compute/v1/projects/[^/]+/(?:(?:zones|regions)/[^/]+/(?P<a>instances|addresses|targetPools|"
    r"forwardingRules|operations)|global/(?P<b>httpHealthChecks|healthChecks|firewalls|operations))(?:/|$)"
)
COMPILED = [(route, route.pattern()) for route in ROUTES]


def route_for(verb: str, path: str) -> tuple[Route, dict[str, str]]:
    for route, pattern in COMPILED:
        m = pattern.match(path)
        if m and route.verb == verb:
            return route, m.groupdict()
    if KNOWN_COLLECTION.match(path):
        m = KNOWN_COLLECTION.match(path)
        collection = m.group("a") or m.group("b") or "resource"
        raise not_implemented(f"{verb} {path} ({collection})")
    raise ApiError(404, "notFound", f"No such Compute Engine API method: {verb} {path}")


def resource_named(params: dict[str, str], body) -> str | None:
    """The resource a call is about: the innermost name in its path (not the project, zone, region or
    operation), else the ``name`` of the inserted resource; None for lists and operation waits."""
    for key in reversed(list(params)):
        if key not in ("project", "zone", "region", "operation"):
            return params[key]
    name = body.get("name") if isinstance(body, dict) else None
    return name if isinstance(name, str) else None


class ComputeApi:
    def __init__(self, ctx: Ctx, faults: FaultBook, calls: CallLog):
        self.ctx = ctx
        self.faults = faults
        self.calls = calls

    def handle(self, verb: str, path: str, query: dict[str, str], body) -> tuple[int, dict]:
        meta = {"method": "unknown", "operation": None, "outcome": "ok", "resource": None}
        try:
            status, reply = self._handle(verb, path, query, body, meta)
        except ApiError as exc:
            if meta["outcome"] == "ok":
                meta["outcome"] = exc.reason
            status, reply = exc.code, exc.body()
        except Exception as exc:
            log.exception("emulator handler failed: %s %s", verb, path)
            meta["outcome"] = "backendError"
            status, reply = 500, ApiError(500, "backendError", f"emulator bug: {type(exc).__name__}: {exc}").body()
        self.calls.record(
            method=meta["method"],
            verb=verb,
            path=path,
            request_id=query.get("requestId"),
            status=status,
            operation=meta["operation"],
            outcome=meta["outcome"],
            resource=meta["resource"],
        )
        return status, reply

    def _handle(self, verb: str, path: str, query: dict[str, str], body, meta: dict) -> tuple[int, dict]:
        route, params = route_for(verb, path)
        meta["method"] = route.method
        meta["resource"] = resource_named(params, body)
        call = Call(verb=verb, path=path, method=route.method, params=params, query=query, body=body)
        self._check_scope(call)
        fault = self.faults.take(route.method)
        if fault is not None:
            meta["outcome"] = f"fault:{fault.mode}"
            if fault.mode == "429":
                raise rate_limited(fault.errorMessage or "Rate Limit Exceeded")
            if fault.mode == "503" or route.kind is None:
                raise backend_error(fault.errorMessage or "Internal error. Please try again.")
            call.fault = fault
        if route.kind is None:
            meta["operation"] = params.get("operation")
            return 200, route.handler(self.ctx, call)
        call.request_id = check_request_id(query.get("requestId"))
        first = self.ctx.ops.by_request(call.project, call.scope, call.request_id)
        if first is not None:
            meta["outcome"], meta["operation"] = "deduplicated", first["name"]
            return 200, first
        if fault is not None and fault.mode == "operation_error":
            result = self._failed(call, route, fault)
        else:
            result = route.handler(self.ctx, call)
        meta["operation"] = result.get("name")
        return 200, result

    def _check_scope(self, call: Call) -> None:
        zone, region = call.params.get("zone"), call.params.get("region")
        if zone is not None:
            if not self.ctx.catalog.has_zone(zone):
                raise not_found(f"projects/{call.project}/zones/{zone}")
            if zone in self.ctx.store.failed_zones:
                raise backend_error(f"Zone '{zone}' is unavailable (failed over the emulator's admin API).")
        if region is not None and not self.ctx.catalog.has_region(region):
            raise not_found(f"projects/{call.project}/regions/{region}")

    def _failed(self, call: Call, route: Route, fault) -> dict:
        """An injected operation_error: an operation that fails, and nothing else happens."""
        body = call.body if isinstance(call.body, dict) else {}
        m = re.match(r"^(.*?\{(?!project|zone|region)\w+\})", route.template)
        if m:  # a method on one resource: the target is that resource
            target = "projects/" + m.group(1).format(**call.params)
        else:  # an insert: the target is the resource it would have created
            target = "projects/" + route.template.format(**call.params) + f"/{body.get('name', '')}"
        error = OperationError(
            fault.errorCode, fault.errorMessage or f"Injected fault on {route.method}", fault.httpStatus
        )
        op = self.ctx.ops.create(
            call.project, call.scope, route.method.rsplit(".", 1)[1], self.ctx.store.link(target), None, None
        )
        return self.ctx.ops.run(op, route.kind or "default", [], fail=error)
