"""firewalls.* (global): insert, get, list, delete.

When an insert or delete is DONE, every firewall of the emulator goes to
``runtime.set_firewalls``: the loopback network ignores them, the namespaced
network (:mod:`.netns`) enforces them with nftables in each VM.
"""

from __future__ import annotations

from haplane.emulator.errors import already_exists, invalid
from haplane.emulator.resources import Call, Ctx, check_name, get_or_404, list_reply, resource_path
from haplane.emulator.store import now_rfc3339, public

# An ingress rule without any of these sources applies to every source, and GCE answers it with
# ``sourceRanges: ["0.0.0.0/0"]`` (tests/golden/firewalls_default_source.json).
SOURCES = ("sourceRanges", "sourceTags", "sourceServiceAccounts")
DEFAULT_SOURCE_RANGES = ("0.0.0.0/0",)


def _path(call: Call, name: str | None = None) -> str:
    return resource_path(call.project, "global", "firewalls", name or call.params["firewall"])


def insert(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    name = check_name(body.get("name"))
    key = (call.project, name)
    if not body.get("allowed") and not body.get("denied"):
        raise invalid("Invalid value for field 'resource': a firewall rule needs 'allowed' or 'denied'.")
    with ctx.store.lock:
        if key in ctx.store.firewalls:
            raise already_exists(_path(call, name))
        fw_id, link = ctx.store.new_id(), ctx.store.link(_path(call, name))
        fw = {
            "kind": "compute#firewall",
            "id": fw_id,
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "description": body.get("description", ""),
            "network": body.get("network") or ctx.store.link(f"projects/{call.project}/global/networks/default"),
            "priority": int(body.get("priority", 1000)),
            "direction": body.get("direction", "INGRESS"),
            "disabled": bool(body.get("disabled", False)),
            "selfLink": link,
        }
        for field in ("allowed", "denied", "sourceRanges", "destinationRanges", "sourceTags", "targetTags"):
            if body.get(field):
                fw[field] = body[field]
        if fw["direction"] == "INGRESS" and not any(body.get(f) for f in SOURCES):
            fw["sourceRanges"] = list(DEFAULT_SOURCE_RANGES)  # GCE fills in the default it applies
        ctx.store.firewalls[key] = fw
    return ctx.operation(call, "insert", "firewall", link, fw_id, [(1.0, lambda: enforce(ctx))])


def get(ctx: Ctx, call: Call) -> dict:
    with ctx.store.lock:
        return public(get_or_404(ctx.store.firewalls, (call.project, call.params["firewall"]), _path(call)))


def list_(ctx: Ctx, call: Call) -> dict:
    with ctx.store.lock:
        found = [f for (p, _), f in ctx.store.firewalls.items() if p == call.project]
        return list_reply(ctx, call, "compute#firewallList", "firewalls", found)


def delete(ctx: Ctx, call: Call) -> dict:
    key = (call.project, call.params["firewall"])
    with ctx.store.lock:
        fw = get_or_404(ctx.store.firewalls, key, _path(call))
        fw_id, link = fw["id"], fw["selfLink"]

    def gone() -> None:
        with ctx.store.lock:
            if ctx.store.firewalls.get(key, {}).get("id") == fw_id:
                del ctx.store.firewalls[key]
        enforce(ctx)

    return ctx.operation(call, "delete", "firewall", link, fw_id, [(1.0, gone)])


def enforce(ctx: Ctx) -> None:
    """Hand the current firewalls to the runtime (outside the store lock, as every runtime call)."""
    with ctx.store.lock:
        rules = [public(f) for f in ctx.store.firewalls.values()]
    ctx.runtime.set_firewalls(rules)
