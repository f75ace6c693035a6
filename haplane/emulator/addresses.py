"""addresses.* (regional, external): insert, get, list, delete.

- ``insert`` without ``address``: a fresh IP from 127.30.0.0/16, status RESERVED.
- ``insert`` with ``address`` = an IP an instance (or a forwarding rule) of the
  region uses now: the ephemeral IP is *promoted*: status IN_USE,
  ``users = [that resource's selfLink]``.
- ``insert`` with an IP nobody holds: 400 (GCE can't reserve an arbitrary
  external IP); with an IP another address already holds: the operation ends
  with ``IP_IN_USE_BY_ANOTHER_RESOURCE`` (409).
- status follows use: an access config or a forwarding rule on the IP makes it
  IN_USE with ``users``; when they go it is RESERVED again.
- ``delete`` of an IN_USE address: 400 resourceInUseByAnotherResource.
The address is visible (status RESERVING) from the call until its operation is DONE.
"""

from __future__ import annotations

import ipaddress

from haplane.emulator.errors import OperationError, already_exists, in_use, invalid
from haplane.emulator.resources import (
    Call,
    Ctx,
    check_name,
    get_or_404,
    labelled,
    refresh_address,
    release_ip,
    resource_path,
    scoped_list_handlers,
)
from haplane.emulator.store import now_rfc3339, public


def _key(call: Call, name: str | None = None) -> tuple[str, str, str]:
    return (call.project, call.params["region"], name or call.params["address"])


def _path(call: Call, name: str | None = None) -> str:
    return resource_path(call.project, call.scope, "addresses", name or call.params["address"])


def insert(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    name = check_name(body.get("name"))
    region = call.params["region"]
    key = _key(call, name)
    address_type = body.get("addressType", "EXTERNAL")
    if address_type != "EXTERNAL":
        raise invalid(
            f"Invalid value for field 'resource.addressType': '{address_type}'. "
            "The emulator serves EXTERNAL addresses only."
        )
    wanted = body.get("address")
    with ctx.store.lock:
        if key in ctx.store.addresses:
            raise already_exists(_path(call, name))
        link = ctx.store.link(_path(call, name))
        if wanted:
            try:
                ipaddress.ip_address(wanted)
            except ValueError:
                raise invalid(f"Invalid value for field 'resource.address': '{wanted}'.") from None
            holder = next((a for a in ctx.store.addresses.values() if a.get("address") == wanted), None)
            if holder is not None:
                return ctx.operation(
                    call,
                    "insert",
                    "default",
                    link,
                    None,
                    [],
                    fail=OperationError(
                        "IP_IN_USE_BY_ANOTHER_RESOURCE",
                        f"IP '{wanted}' is already reserved by '{holder['selfLink']}'.",
                        409,
                    ),
                )
            user = ctx.store.instance_using_ip(wanted)
            if user is not None and ctx.catalog.region_of(user["_zone"]) != region:
                user = None
            rule = ctx.store.forwarding_rule_on_ip(wanted)
            if rule is not None and rule["_region"] != region:
                rule = None
            if user is None and rule is None:
                raise invalid(
                    f"Invalid value for field 'resource.address': '{wanted}'. "
                    f"Requested address '{wanted}' is not available in region '{region}'."
                )
            ip = wanted
        else:
            ip = ctx.store.static_ips.allocate()
        addr_id = ctx.store.new_id()
        ctx.store.addresses[key] = {
            "kind": "compute#address",
            "id": addr_id,
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "description": body.get("description", ""),
            "address": ip,
            "status": "RESERVING",
            "region": ctx.store.link(f"projects/{call.project}/regions/{region}"),
            "selfLink": link,
            "networkTier": body.get("networkTier", "PREMIUM"),
            "addressType": "EXTERNAL",
            **labelled(body.get("labels"), "resource.labels"),
        }
        refresh_address(ctx.store, ip)

    def reserved() -> None:
        with ctx.store.lock:
            addr = ctx.store.addresses.get(key)
            if addr is not None and addr["id"] == addr_id:
                addr["status"] = "RESERVED"
                refresh_address(ctx.store, ip)

    return ctx.operation(call, "insert", "address", link, addr_id, [(1.0, reserved)])


def get(ctx: Ctx, call: Call) -> dict:
    with ctx.store.lock:
        return public(get_or_404(ctx.store.addresses, _key(call), _path(call)))


list_, aggregated_list = scoped_list_handlers("addresses", "address", "addresses", "region")


def delete(ctx: Ctx, call: Call) -> dict:
    key = _key(call)
    with ctx.store.lock:
        addr = get_or_404(ctx.store.addresses, key, _path(call))
        if addr.get("users"):
            raise in_use(f"address '{_path(call)}'", addr["users"][0])
        addr_id, link, ip = addr["id"], addr["selfLink"], addr["address"]

    def gone() -> None:
        with ctx.store.lock:
            addr = ctx.store.addresses.get(key)
            if addr is None or addr["id"] != addr_id:
                return
            if addr.get("users"):
                raise OperationError(
                    "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", f"The address is in use by '{addr['users'][0]}'", 400
                )
            del ctx.store.addresses[key]
            release_ip(ctx.store, ip)

    return ctx.operation(call, "delete", "address", link, addr_id, [(1.0, gone)])
