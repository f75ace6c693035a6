"""The legacy network load balancer: httpHealthChecks (global), targetPools and forwardingRules (regional).

Each has insert, get, list (paged, :mod:`.listing`) and delete; targetPools, forwardingRules and
healthChecks also aggregatedList.

- targetPools.getHealth asks ``runtime.healthy(vm)`` for a RUNNING instance of
  a pool that has a health check (HEALTHY without one, as GCE); an instance
  that is not RUNNING, or a stale link to a deleted instance (GCE does not
  take deleted instances out of pools), is UNHEALTHY.
- forwardingRules.insert on an IP that an instance's access config (or
  another rule) still uses: the operation ends DONE with error code
  ``IP_IN_USE_BY_ANOTHER_RESOURCE`` and ``httpErrorStatusCode`` 409, and
  nothing is created. Otherwise the rule exists at once (its address turns
  IN_USE) and ``runtime.set_forwarding(ip, backends)`` is called when the
  operation is DONE (after the ``forwarding_rule_insert`` latency);
  ``backends()`` lists the pool's current, existing instances.
- forwardingRules.delete: at DONE ``runtime.clear_forwarding(ip)``, the rule
  goes, its address is RESERVED again (an ephemeral IP is freed).
- addInstance / removeInstance apply when their operation is DONE; adding a
  member twice or removing a non-member changes nothing.
"""

from __future__ import annotations

import ipaddress

from haplane.emulator.errors import OperationError, already_exists, in_use, invalid, not_found, required
from haplane.emulator.resources import (
    Call,
    Ctx,
    aggregated_reply,
    check_name,
    get_or_404,
    labelled,
    list_reply,
    parse_link,
    refresh_address,
    release_ip,
    resource_path,
    scoped_list_handlers,
    vm_view,
)
from haplane.emulator.runtime import VmView
from haplane.emulator.store import fingerprint, now_rfc3339, public

IP_CONFLICT = "IP_IN_USE_BY_ANOTHER_RESOURCE"

# --- httpHealthChecks (legacy, what target pools take) and healthChecks ------------------------
# google-cloud-compute 1.57 has no HttpHealthChecksClient (the legacy API is not generated any more):
# callers reach /global/httpHealthChecks with plain REST. /global/healthChecks (HealthChecksClient) is
# served too, but target pools refuse it, as GCE does ("legacy HTTP health checks only").

HC_KINDS = {"httpHealthChecks": "compute#httpHealthCheck", "healthChecks": "compute#healthCheck"}


def _hc_collection(call: Call) -> str:
    return "httpHealthChecks" if "/global/httpHealthChecks" in call.path else "healthChecks"


def _hc_table(ctx: Ctx, collection: str) -> dict:
    return ctx.store.http_health_checks if collection == "httpHealthChecks" else ctx.store.health_checks


def _hc_path(call: Call, collection: str, name: str | None = None) -> str:
    name = name or call.params.get("httpHealthCheck") or call.params["healthCheck"]
    return resource_path(call.project, "global", collection, name)


def hc_insert(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    collection = _hc_collection(call)
    name = check_name(body.get("name"))
    key = (call.project, name)
    table = _hc_table(ctx, collection)
    common = {
        "checkIntervalSec": int(body.get("checkIntervalSec", 5)),
        "timeoutSec": int(body.get("timeoutSec", 5)),
        "unhealthyThreshold": int(body.get("unhealthyThreshold", 2)),
        "healthyThreshold": int(body.get("healthyThreshold", 2)),
    }
    if collection == "httpHealthChecks":
        spec = {
            "requestPath": body.get("requestPath", "/"),
            "port": int(body.get("port", 80)),
            "proxyHeader": body.get("proxyHeader", "NONE"),
            **({"host": body["host"]} if body.get("host") else {}),
        }
    else:
        kind = body.get("type")
        if kind not in ("HTTP", "HTTPS", "TCP", "SSL", "HTTP2", "GRPC"):
            raise invalid(f"Invalid value for field 'resource.type': '{kind}'.")
        field = {
            "HTTP": "httpHealthCheck",
            "HTTPS": "httpsHealthCheck",
            "TCP": "tcpHealthCheck",
            "SSL": "sslHealthCheck",
            "HTTP2": "http2HealthCheck",
            "GRPC": "grpcHealthCheck",
        }[kind]
        spec = {"type": kind, field: {**({"proxyHeader": "NONE"} if kind != "GRPC" else {}), **(body.get(field) or {})}}
    with ctx.store.lock:
        if key in table:
            raise already_exists(_hc_path(call, collection, name))
        hc_id, link = ctx.store.new_id(), ctx.store.link(_hc_path(call, collection, name))
        table[key] = {
            "kind": HC_KINDS[collection],
            "id": hc_id,
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "description": body.get("description", ""),
            **spec,
            **common,
            "selfLink": link,
        }
    return ctx.operation(call, "insert", "health_check", link, hc_id, [])


def hc_get(ctx: Ctx, call: Call) -> dict:
    collection = _hc_collection(call)
    with ctx.store.lock:
        key = (call.project, _hc_path(call, collection).rsplit("/", 1)[1])
        # GCE's 404 for global/httpHealthChecks/X names global/healthChecks/X (recorded)
        return public(get_or_404(_hc_table(ctx, collection), key, _hc_path(call, "healthChecks")))


def hc_list(ctx: Ctx, call: Call) -> dict:
    collection = _hc_collection(call)
    with ctx.store.lock:
        found = [hc for (p, _), hc in _hc_table(ctx, collection).items() if p == call.project]
        return list_reply(ctx, call, HC_KINDS[collection] + "List", collection, found)


def hc_aggregated_list(ctx: Ctx, call: Call) -> dict:
    """healthChecks.aggregatedList (GCE has none for the legacy httpHealthChecks): global, and each region."""
    with ctx.store.lock:
        return aggregated_reply(
            ctx,
            call,
            "compute#healthChecksAggregatedList",
            "healthChecks",
            ctx.store.health_checks,
            ("global", "regions"),
        )


def hc_delete(ctx: Ctx, call: Call) -> dict:
    collection = _hc_collection(call)
    table = _hc_table(ctx, collection)
    key = (call.project, _hc_path(call, collection).rsplit("/", 1)[1])
    with ctx.store.lock:
        hc = get_or_404(table, key, _hc_path(call, collection))
        for pool in ctx.store.target_pools.values():
            if hc["selfLink"] in pool.get("healthChecks", []):
                raise in_use(f"{collection} '{_hc_path(call, collection)}'", pool["selfLink"])
        hc_id, link = hc["id"], hc["selfLink"]

    def gone() -> None:
        with ctx.store.lock:
            if table.get(key, {}).get("id") == hc_id:
                del table[key]

    return ctx.operation(call, "delete", "health_check", link, hc_id, [(1.0, gone)])


# --- targetPools ------------------------------------------------------------------------------


def _tp_key(call: Call, name: str | None = None) -> tuple[str, str, str]:
    return (call.project, call.params["region"], name or call.params["targetPool"])


def _tp_path(call: Call, name: str | None = None) -> str:
    return resource_path(call.project, call.scope, "targetPools", name or call.params["targetPool"])


def _instance_link(ctx: Ctx, call: Call, link: str) -> str:
    """Check that ``link`` names an existing instance in the call's region; the canonical selfLink."""
    parts = parse_link(link)
    if parts["collection"] != "instances" or parts["scope_kind"] != "zones":
        raise invalid(f"Invalid value for field 'instance': '{link}'")
    zone = parts["scope"]
    if not ctx.catalog.has_zone(zone) or ctx.catalog.region_of(zone) != call.params["region"]:
        raise invalid(
            f"Invalid value for field 'instance': '{link}'. Instance must be in region '{call.params['region']}'."
        )
    inst = ctx.store.instances.get((parts["project"], zone, parts["name"]))
    if inst is None:
        raise not_found(resource_path(parts["project"], f"zones/{zone}", "instances", parts["name"]))
    return inst["selfLink"]


def tp_insert(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    name = check_name(body.get("name"))
    key = _tp_key(call, name)
    with ctx.store.lock:
        if key in ctx.store.target_pools:
            raise already_exists(_tp_path(call, name))
        instances = [_instance_link(ctx, call, link) for link in body.get("instances") or []]
        checks = []
        for link in body.get("healthChecks") or []:
            parts = parse_link(link)
            if parts["collection"] == "healthChecks":
                raise invalid(
                    f"Invalid value for field 'resource.healthChecks': '{link}'. Target pools "
                    "support legacy HTTP health checks (global/httpHealthChecks) only."
                )
            hc = ctx.store.http_health_checks.get((parts["project"], parts["name"]))
            if parts["collection"] != "httpHealthChecks" or hc is None:
                raise not_found(resource_path(parts["project"], "global", "httpHealthChecks", parts["name"]))
            checks.append(hc["selfLink"])
        if len(checks) > 1:
            raise invalid("A target pool may have at most one health check")
        tp_id, link = ctx.store.new_id(), ctx.store.link(_tp_path(call, name))
        pool = {
            "kind": "compute#targetPool",
            "id": tp_id,
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "description": body.get("description", ""),
            "region": ctx.store.link(f"projects/{call.project}/regions/{call.params['region']}"),
            "sessionAffinity": body.get("sessionAffinity", "NONE"),
            "selfLink": link,
        }
        if instances:
            pool["instances"] = list(dict.fromkeys(instances))
        if checks:
            pool["healthChecks"] = checks
        ctx.store.target_pools[key] = pool
    return ctx.operation(call, "insert", "target_pool", link, tp_id, [])


def tp_get(ctx: Ctx, call: Call) -> dict:
    with ctx.store.lock:
        return public(get_or_404(ctx.store.target_pools, _tp_key(call), _tp_path(call)))


tp_list, tp_aggregated_list = scoped_list_handlers("target_pools", "targetPool", "targetPools", "region")


def tp_delete(ctx: Ctx, call: Call) -> dict:
    key = _tp_key(call)
    with ctx.store.lock:
        pool = get_or_404(ctx.store.target_pools, key, _tp_path(call))
        for rule in ctx.store.forwarding_rules.values():
            if rule.get("target") == pool["selfLink"]:
                raise in_use(f"targetPool '{_tp_path(call)}'", rule["selfLink"])
        tp_id, link = pool["id"], pool["selfLink"]

    def gone() -> None:
        with ctx.store.lock:
            if ctx.store.target_pools.get(key, {}).get("id") == tp_id:
                del ctx.store.target_pools[key]

    return ctx.operation(call, "delete", "target_pool", link, tp_id, [(1.0, gone)])


def _members_change(ctx: Ctx, call: Call, op_type: str, add: bool) -> dict:
    body = call.json()
    key = _tp_key(call)
    refs = body.get("instances") or []
    if not refs:
        raise required("instances")
    with ctx.store.lock:
        pool = get_or_404(ctx.store.target_pools, key, _tp_path(call))
        links = []
        for ref in refs:
            link = ref.get("instance") if isinstance(ref, dict) else None
            if not link:
                raise required("instances[].instance")
            if add:
                links.append(_instance_link(ctx, call, link))
            else:
                links.append(_canonical(ctx, link))
        tp_id, pool_link = pool["id"], pool["selfLink"]

    def apply() -> None:
        with ctx.store.lock:
            pool = ctx.store.target_pools.get(key)
            if pool is None or pool["id"] != tp_id:
                raise OperationError("RESOURCE_NOT_FOUND", f"The resource '{_tp_path(call)}' was not found", 404)
            members = list(pool.get("instances", []))
            if add:
                members += [link for link in links if link not in members]
            else:
                members = [m for m in members if m not in links]
            if members:
                pool["instances"] = members
            else:
                pool.pop("instances", None)

    return ctx.operation(call, op_type, "target_pool", pool_link, tp_id, [(1.0, apply)])


def _canonical(ctx: Ctx, link: str) -> str:
    parts = parse_link(link)
    return ctx.store.link(resource_path(parts["project"], f"zones/{parts['scope']}", "instances", parts["name"]))


def tp_add_instance(ctx: Ctx, call: Call) -> dict:
    return _members_change(ctx, call, "AddInstance", add=True)  # GCE's spelling for the legacy pools


def tp_remove_instance(ctx: Ctx, call: Call) -> dict:
    return _members_change(ctx, call, "RemoveInstance", add=False)


def tp_get_health(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    link = body.get("instance")
    if not link:
        raise required("instance")
    with ctx.store.lock:
        pool = get_or_404(ctx.store.target_pools, _tp_key(call), _tp_path(call))
        link = _canonical(ctx, link)
        if link not in pool.get("instances", []):
            raise invalid(
                f"Invalid value for field 'resource.instance': '{link}'. "
                f"Instance is not a member of target pool '{_tp_path(call)}'."
            )
        inst = ctx.store.instance_by_link(link)
        rule_ip = next(
            (r["IPAddress"] for r in ctx.store.forwarding_rules.values() if r.get("target") == pool["selfLink"]), None
        )
        vm = vm_view(inst) if inst is not None and inst["status"] == "RUNNING" else None
        checked = bool(pool.get("healthChecks"))
        ip = rule_ip or (inst["networkInterfaces"][0]["networkIP"] if inst is not None else "")
    healthy = vm is not None and (ctx.runtime.healthy(vm) if checked else True)
    status = {"instance": link, "healthState": "HEALTHY" if healthy else "UNHEALTHY"}
    if ip:
        status["ipAddress"] = ip
    return {"kind": "compute#targetPoolInstanceHealth", "healthStatus": [status]}


# --- forwardingRules --------------------------------------------------------------------------


def _fr_key(call: Call, name: str | None = None) -> tuple[str, str, str]:
    return (call.project, call.params["region"], name or call.params["forwardingRule"])


def _fr_path(call: Call, name: str | None = None) -> str:
    return resource_path(call.project, call.scope, "forwardingRules", name or call.params["forwardingRule"])


def _resolve_ip(ctx: Ctx, call: Call, value: str | None) -> tuple[str | None, dict | None]:
    """(ip, address resource) for IPAddress; ip None means allocate an ephemeral one."""
    region = call.params["region"]
    if not value:
        return None, None
    try:
        ipaddress.ip_address(value)
        is_ip = True
    except ValueError:
        is_ip = False
    if not is_ip:
        parts = (
            parse_link(value)
            if "/" in value
            else {"project": call.project, "scope": region, "collection": "addresses", "name": value}
        )
        addr = ctx.store.addresses.get((parts["project"], parts["scope"], parts["name"]))
        if parts["collection"] != "addresses" or addr is None:
            raise not_found(resource_path(parts["project"], f"regions/{parts['scope']}", "addresses", parts["name"]))
        return addr["address"], addr
    addr = ctx.store.address_by_ip(call.project, region, value)
    if addr is None and ctx.store.instance_using_ip(value) is None and ctx.store.forwarding_rule_on_ip(value) is None:
        raise invalid(
            f"Invalid value for field 'resource.IPAddress': '{value}'. "
            f"The IP address is not reserved in region '{region}'."
        )
    return value, addr


def fr_insert(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    name = check_name(body.get("name"))
    key = _fr_key(call, name)
    target = body.get("target")
    if not target:
        raise required("resource.target")
    with ctx.store.lock:
        if key in ctx.store.forwarding_rules:
            raise already_exists(_fr_path(call, name))
        link = ctx.store.link(_fr_path(call, name))
        parts = parse_link(target)
        pool_key = (parts["project"], parts["scope"], parts["name"])
        pool = ctx.store.target_pools.get(pool_key)
        if parts["collection"] != "targetPools" or pool is None:
            raise not_found(resource_path(parts["project"], f"regions/{parts['scope']}", "targetPools", parts["name"]))
        if parts["scope"] != call.params["region"]:
            raise invalid("The target pool must be in the forwarding rule's region")
        ip, _ = _resolve_ip(ctx, call, body.get("IPAddress"))
        if ip is not None:
            user = ctx.store.instance_using_ip(ip) or ctx.store.forwarding_rule_on_ip(ip)
            if user is not None:
                return ctx.operation(
                    call,
                    "insert",
                    "default",
                    link,
                    None,
                    [],
                    fail=OperationError(
                        IP_CONFLICT, f"IP '{ip}' is already being used by another resource '{user['selfLink']}'.", 409
                    ),
                )
        else:
            ip = ctx.store.ephemeral_ips.allocate()
        rule_id = ctx.store.new_id()
        ctx.store.forwarding_rules[key] = {
            "kind": "compute#forwardingRule",
            "id": rule_id,
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "description": body.get("description", ""),
            "region": ctx.store.link(f"projects/{call.project}/regions/{call.params['region']}"),
            "IPAddress": ip,
            "IPProtocol": body.get("IPProtocol", "TCP"),
            "portRange": body.get("portRange") or "1-65535",
            "target": pool["selfLink"],
            "selfLink": link,
            "loadBalancingScheme": body.get("loadBalancingScheme", "EXTERNAL"),
            "networkTier": body.get("networkTier", "PREMIUM"),
            "fingerprint": fingerprint([name, ip]),
            "selfLinkWithId": ctx.store.link(_fr_path(call, rule_id)),
            **labelled(body.get("labels"), "resource.labels"),
            "_region": call.params["region"],
        }
        refresh_address(ctx.store, ip)

    def backends() -> list[VmView]:
        with ctx.store.lock:
            pool = ctx.store.target_pools.get(pool_key)
            views = []
            for member in (pool or {}).get("instances", []):
                inst = ctx.store.instance_by_link(member)
                if inst is not None:
                    views.append(vm_view(inst))
            return views

    def forward() -> None:
        with ctx.store.lock:
            if ctx.store.forwarding_rules.get(key, {}).get("id") != rule_id:
                raise OperationError("RESOURCE_NOT_FOUND", f"The resource '{link}' was deleted", 404)
        ctx.runtime.set_forwarding(ip, backends)

    return ctx.operation(call, "insert", "forwarding_rule_insert", link, rule_id, [(1.0, forward)])


def fr_get(ctx: Ctx, call: Call) -> dict:
    with ctx.store.lock:
        return public(get_or_404(ctx.store.forwarding_rules, _fr_key(call), _fr_path(call)))


fr_list, fr_aggregated_list = scoped_list_handlers("forwarding_rules", "forwardingRule", "forwardingRules", "region")


def fr_delete(ctx: Ctx, call: Call) -> dict:
    key = _fr_key(call)
    with ctx.store.lock:
        rule = get_or_404(ctx.store.forwarding_rules, key, _fr_path(call))
        rule_id, link, ip = rule["id"], rule["selfLink"], rule["IPAddress"]

    def gone() -> None:
        with ctx.store.lock:
            if ctx.store.forwarding_rules.get(key, {}).get("id") != rule_id:
                return
        ctx.runtime.clear_forwarding(ip)
        with ctx.store.lock:
            if ctx.store.forwarding_rules.get(key, {}).get("id") == rule_id:
                del ctx.store.forwarding_rules[key]
                release_ip(ctx.store, ip)

    return ctx.operation(call, "delete", "forwarding_rule_delete", link, rule_id, [(1.0, gone)])
