"""instances.*: insert, get, list, aggregatedList, delete, add/deleteAccessConfig, setLabels, setMetadata, stop, start.

Lifecycle as GCE: insert -> PROVISIONING (at once) -> STAGING (half-way) ->
RUNNING (``runtime.start``; the operation is DONE). stop -> STOPPING ->
TERMINATED (``runtime.stop``; ephemeral external IPs are released, as GCE
does) ; start -> STAGING -> RUNNING (new ephemeral IPs, ``runtime.start``).
delete -> STOPPING -> gone (``runtime.delete``; internal and ephemeral IPs
freed; a static address it used becomes RESERVED; target pools keep the
stale link, as GCE does). setMetadata / access-config changes call
``runtime.update`` when they apply. Label and metadata fingerprints are
checked at call time (412 conditionNotMet).
"""

from __future__ import annotations

import re

from haplane.emulator.errors import ApiError, OperationError, already_exists, invalid
from haplane.emulator.resources import (
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    Call,
    Ctx,
    check_name,
    get_or_404,
    refresh_address,
    release_ip,
    resource_path,
    scoped_list_handlers,
    vm_view,
)
from haplane.emulator.store import fingerprint, now_rfc3339, public

MACHINE_TYPE_RE = re.compile(
    r"^(?:(?:e2|n1|n2|n2d|n4|c2|c2d|c3|c3d|t2d|t2a|m1|m3)-(?:standard|highmem|highcpu)-\d+"
    r"|e2-(?:micro|small|medium)|f1-micro|g1-small|(?:e2-|n2-|n2d-)?custom-\d+-\d+(?:-ext)?)$"
)
METADATA_KEY_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
IP_CONFLICT = "IP_IN_USE_BY_ANOTHER_RESOURCE"


def _key(call: Call) -> tuple[str, str, str]:
    return (call.project, call.params["zone"], call.params["instance"])


def _path(call: Call, name: str | None = None) -> str:
    return resource_path(call.project, call.scope, "instances", name or call.params["instance"])


def _instance(ctx: Ctx, call: Call) -> dict:
    return get_or_404(ctx.store.instances, _key(call), _path(call))


def _machine_type(ctx: Ctx, call: Call, value) -> str:
    zone = call.params["zone"]
    if not value:
        raise invalid("Invalid value for field 'resource.machineType': ''. Machine type must be specified.")
    m = re.match(r"^(?:.*?zones/(?P<zone>[^/]+)/machineTypes/)?(?P<type>[^/]+)$", str(value))
    if not m or (m.group("zone") and m.group("zone") != zone) or not MACHINE_TYPE_RE.match(m.group("type")):
        raise invalid(
            f"Invalid value for field 'resource.machineType': '{value}'. "
            f"Machine type with name '{value}' does not exist in zone '{zone}'."
        )
    return ctx.store.link(f"projects/{call.project}/zones/{zone}/machineTypes/{m.group('type')}")


def _labels(value, field: str = "labels") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid value for field '{field}': must be a map")
    for k, v in value.items():
        if not LABEL_KEY_RE.match(str(k)) or not LABEL_VALUE_RE.match(str(v)):
            raise invalid(
                f"Invalid value for field '{field}': '{k}={v}'. Label keys and values must "
                "be lowercase letters, digits, '_' or '-' (keys start with a letter)."
            )
    return {str(k): str(v) for k, v in value.items()}


def _metadata_items(value, field: str = "metadata") -> list[dict]:
    items = (value or {}).get("items") or []
    seen = set()
    out = []
    for item in items:
        key = item.get("key", "")
        if not METADATA_KEY_RE.match(key):
            raise invalid(f"Invalid value for field '{field}.items.key': '{key}'")
        if key in seen:
            raise invalid(f"Invalid value for field '{field}.items': duplicate key '{key}'")
        seen.add(key)
        value_text = item.get("value", "")
        if len(value_text.encode()) > 256 * 1024:
            raise invalid(f"Value for metadata key '{key}' is larger than 256 KB")
        out.append({"key": key, "value": value_text})
    return out


def _metadata(items: list[dict]) -> dict:
    md = {"kind": "compute#metadata", "fingerprint": fingerprint(items)}
    if items:
        md["items"] = items
    return md


def _set_labels(inst: dict, labels: dict[str, str]) -> None:
    if labels:
        inst["labels"] = labels
    else:
        inst.pop("labels", None)
    inst["labelFingerprint"] = fingerprint(labels)


def _nic_fingerprint(nic: dict) -> None:
    nic["fingerprint"] = fingerprint({k: v for k, v in nic.items() if k != "fingerprint"})


def _static_for_nat(ctx: Ctx, call: Call, nat_ip: str, field: str) -> dict:
    region = ctx.catalog.region_of(call.params["zone"])
    addr = ctx.store.address_by_ip(call.project, region, nat_ip)
    if addr is None:
        raise invalid(
            f"Invalid value for field '{field}': '{nat_ip}'. The specified external IP address "
            f"'{nat_ip}' was not reserved in region '{region}'."
        )
    return addr


def _nat_conflict(ctx: Ctx, nat_ip: str) -> OperationError | None:
    user = ctx.store.instance_using_ip(nat_ip) or ctx.store.forwarding_rule_on_ip(nat_ip)
    if user is not None:
        return OperationError(
            IP_CONFLICT, f"IP '{nat_ip}' is already being used by another resource '{user['selfLink']}'.", 409
        )
    return None


def _access_config(ac: dict) -> dict:
    return {
        "kind": "compute#accessConfig",
        "type": ac.get("type") or "ONE_TO_ONE_NAT",
        "name": ac.get("name") or "External NAT",
        "networkTier": ac.get("networkTier") or "PREMIUM",
        **({"natIP": ac["natIP"]} if ac.get("natIP") else {}),
    }


def _assign_ephemeral(ctx: Ctx, inst: dict) -> None:
    for nic in inst["networkInterfaces"]:
        for ac in nic.get("accessConfigs", []):
            if not ac.get("natIP"):
                ac["natIP"] = ctx.store.ephemeral_ips.allocate()
        _nic_fingerprint(nic)


def _alive(ctx: Ctx, key, inst_id: str) -> dict:
    inst = ctx.store.instances.get(key)
    if inst is None or inst["id"] != inst_id:
        raise OperationError("RESOURCE_NOT_FOUND", f"The resource '{key[0]}/{key[1]}/{key[2]}' was not found", 404)
    return inst


def _disk(ctx: Ctx, call: Call, instance: str, index: int, d: dict) -> dict:
    """An attached disk as GCE serves it: ``source`` names the disk (the one given, or the one that
    ``initializeParams`` creates, named after the instance as GCE names it)."""
    device = d.get("deviceName") or (instance if index == 0 else f"{instance}-{index}")
    disk_name = (d.get("initializeParams") or {}).get("diskName") or device
    source = d.get("source") or f"projects/{call.project}/zones/{call.params['zone']}/disks/{disk_name}"
    if not source.startswith("http"):
        source = ctx.store.link(
            source[source.index("projects/") :]
            if "projects/" in source
            else f"projects/{call.project}/zones/{call.params['zone']}/disks/{source}"
        )
    return {
        "kind": "compute#attachedDisk",
        "index": index,
        "boot": bool(d.get("boot", index == 0)),
        "deviceName": device,
        "source": source,
        "autoDelete": d.get("autoDelete", d.get("source") is None),
        "type": d.get("type", "PERSISTENT"),
        "mode": d.get("mode", "READ_WRITE"),
    }


def _scheduling(value) -> dict:
    """The scheduling GCE keeps: what was given, over GCE's defaults (a preemptible VM can't migrate)."""
    given = value if isinstance(value, dict) else {}
    preemptible = bool(given.get("preemptible", False))
    out = {
        "onHostMaintenance": "TERMINATE" if preemptible else "MIGRATE",
        "automaticRestart": not preemptible,
        "preemptible": preemptible,
    }
    out.update({k: v for k, v in given.items() if v is not None})
    if out["onHostMaintenance"] not in ("MIGRATE", "TERMINATE"):
        raise invalid(
            f"Invalid value for field 'resource.scheduling.onHostMaintenance': "
            f"'{out['onHostMaintenance']}'. Must be MIGRATE or TERMINATE."
        )
    return out


# --- handlers ---------------------------------------------------------------------------------


def insert(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    name = check_name(body.get("name"))
    zone = call.params["zone"]
    key = (call.project, zone, name)
    machine_type = _machine_type(ctx, call, body.get("machineType"))
    labels = _labels(body.get("labels"), "resource.labels")
    items = _metadata_items(body.get("metadata"), "resource.metadata")
    check_image = getattr(ctx.runtime, "check_image", None)  # the host must have the versions the VM asks for
    if check_image is not None:
        try:
            check_image({i["key"]: i["value"] for i in items})
        except FileNotFoundError as exc:
            raise invalid(f"Invalid value for field 'resource.metadata': {exc}") from None
    nics = body.get("networkInterfaces") or [{}]
    if len(nics) != 1:
        raise invalid("The emulator supports exactly one network interface per instance")
    acs = nics[0].get("accessConfigs") or []
    if len(acs) > 1:
        raise invalid("At most one access config currently supported.")
    with ctx.store.lock:
        if key in ctx.store.instances:
            raise already_exists(_path(call, name))
        link = ctx.store.link(_path(call, name))
        for i, ac in enumerate(acs):
            if ac.get("natIP"):
                field = f"resource.networkInterfaces[0].accessConfigs[{i}].natIP"
                _static_for_nat(ctx, call, ac["natIP"], field)
                conflict = _nat_conflict(ctx, ac["natIP"])
                if conflict:
                    return ctx.operation(call, "insert", "default", link, None, [], fail=conflict)
        inst_id = ctx.store.new_id()
        nic = {
            "kind": "compute#networkInterface",
            "name": "nic0",
            "network": ctx.store.link(f"projects/{call.project}/global/networks/default"),
            "subnetwork": ctx.store.link(
                f"projects/{call.project}/regions/{ctx.catalog.region_of(zone)}/subnetworks/default"
            ),
            "networkIP": ctx.store.internal_ips.allocate(zone),
            "stackType": "IPV4_ONLY",
            "accessConfigs": [_access_config(ac) for ac in acs],
        }
        inst = {
            "kind": "compute#instance",
            "id": inst_id,
            "creationTimestamp": now_rfc3339(),
            "name": name,
            "description": body.get("description", ""),
            "tags": {
                "fingerprint": fingerprint(body.get("tags", {}).get("items", [])),
                **({"items": body["tags"]["items"]} if body.get("tags", {}).get("items") else {}),
            },
            "machineType": machine_type,
            "status": "PROVISIONING",
            "zone": ctx.store.link(f"projects/{call.project}/zones/{zone}"),
            "canIpForward": bool(body.get("canIpForward", False)),
            "networkInterfaces": [nic],
            "disks": [_disk(ctx, call, name, i, d) for i, d in enumerate(body.get("disks") or [])],
            "metadata": _metadata(items),
            "selfLink": link,
            "scheduling": _scheduling(body.get("scheduling")),
            "cpuPlatform": "Intel Broadwell",
            "startRestricted": False,
            "deletionProtection": bool(body.get("deletionProtection", False)),
            "fingerprint": fingerprint(name),
            "_project": call.project,
            "_zone": zone,
        }
        if body.get("serviceAccounts"):
            inst["serviceAccounts"] = body["serviceAccounts"]
        _set_labels(inst, labels)
        _assign_ephemeral(ctx, inst)
        ctx.store.instances[key] = inst
        for ac in nic["accessConfigs"]:
            refresh_address(ctx.store, ac["natIP"])

    def staging() -> None:
        with ctx.store.lock:
            _alive(ctx, key, inst_id)["status"] = "STAGING"

    def running() -> None:
        with ctx.store.lock:
            inst = _alive(ctx, key, inst_id)
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = now_rfc3339()
            vm = vm_view(inst)
        ctx.runtime.start(vm)

    return ctx.operation(call, "insert", "instance_insert", link, inst_id, [(0.5, staging), (1.0, running)])


def get(ctx: Ctx, call: Call) -> dict:
    with ctx.store.lock:
        return public(_instance(ctx, call))


list_, aggregated_list = scoped_list_handlers("instances", "instance", "instances", "zone")


def _free_instance_ips(ctx: Ctx, inst: dict) -> None:
    nic = inst["networkInterfaces"][0]
    ctx.store.internal_ips.release(nic["networkIP"])
    for ac in nic.get("accessConfigs", []):
        if ac.get("natIP"):
            release_ip(ctx.store, ac["natIP"])


def delete(ctx: Ctx, call: Call) -> dict:
    key = _key(call)
    with ctx.store.lock:
        inst = _instance(ctx, call)
        if inst.get("deletionProtection"):
            raise ApiError(400, "resourceIsProtected", f"The instance '{_path(call)}' is protected against deletion")
        inst_id, link = inst["id"], inst["selfLink"]
        inst["status"] = "STOPPING"

    def gone() -> None:
        with ctx.store.lock:
            inst = ctx.store.instances.get(key)
            if inst is None or inst["id"] != inst_id:
                return  # deleted by another call meanwhile
            vm = vm_view(inst)
        ctx.runtime.delete(vm)
        with ctx.store.lock:
            inst = ctx.store.instances.pop(key, None)
            if inst is not None:
                _free_instance_ips(ctx, inst)

    return ctx.operation(call, "delete", "instance_delete", link, inst_id, [(1.0, gone)])


def _nic(inst: dict, call: Call) -> dict:
    name = call.query.get("networkInterface")
    if not name:
        raise ApiError(400, "required", "Required field 'networkInterface' not specified")
    for nic in inst["networkInterfaces"]:
        if nic["name"] == name:
            return nic
    raise invalid(f"Invalid value for field 'networkInterface': '{name}'. No such network interface.")


def add_access_config(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    key = _key(call)
    with ctx.store.lock:
        inst = _instance(ctx, call)
        nic = _nic(inst, call)
        if nic.get("accessConfigs"):
            raise invalid("At most one access config currently supported.")
        nat_ip = body.get("natIP")
        inst_id, link, nic_name = inst["id"], inst["selfLink"], nic["name"]
        if nat_ip:
            _static_for_nat(ctx, call, nat_ip, "resource.natIP")
            conflict = _nat_conflict(ctx, nat_ip)
            if conflict:
                return ctx.operation(call, "addAccessConfig", "default", link, inst_id, [], fail=conflict)

    def apply() -> None:
        with ctx.store.lock:
            inst = _alive(ctx, key, inst_id)
            nic = next(n for n in inst["networkInterfaces"] if n["name"] == nic_name)
            if nic.get("accessConfigs"):
                raise OperationError("INVALID_USAGE", "At most one access config currently supported.", 400)
            if nat_ip:
                conflict = _nat_conflict(ctx, nat_ip)
                if conflict:
                    raise conflict
            ac = _access_config({**body, "natIP": nat_ip})
            if not nat_ip and inst["status"] not in ("TERMINATED", "STOPPING"):
                ac["natIP"] = ctx.store.ephemeral_ips.allocate()
            nic["accessConfigs"] = [ac]
            _nic_fingerprint(nic)
            if ac.get("natIP"):
                refresh_address(ctx.store, ac["natIP"])
            vm = vm_view(inst)
        ctx.runtime.update(vm)

    return ctx.operation(call, "addAccessConfig", "instance_update", link, inst_id, [(1.0, apply)])


def delete_access_config(ctx: Ctx, call: Call) -> dict:
    key = _key(call)
    ac_name = call.query.get("accessConfig")
    if not ac_name:
        raise ApiError(400, "required", "Required field 'accessConfig' not specified")
    with ctx.store.lock:
        inst = _instance(ctx, call)
        nic = _nic(inst, call)
        if not any(ac["name"] == ac_name for ac in nic.get("accessConfigs", [])):
            raise invalid(
                f"Invalid value for field 'accessConfig': '{ac_name}'. The specified access config does not exist."
            )
        inst_id, link, nic_name = inst["id"], inst["selfLink"], nic["name"]

    def apply() -> None:
        with ctx.store.lock:
            inst = _alive(ctx, key, inst_id)
            nic = next(n for n in inst["networkInterfaces"] if n["name"] == nic_name)
            removed = [ac for ac in nic.get("accessConfigs", []) if ac["name"] == ac_name]
            nic["accessConfigs"] = [ac for ac in nic.get("accessConfigs", []) if ac["name"] != ac_name]
            _nic_fingerprint(nic)
            for ac in removed:
                if ac.get("natIP"):
                    release_ip(ctx.store, ac["natIP"])
            vm = vm_view(inst)
        ctx.runtime.update(vm)

    return ctx.operation(call, "deleteAccessConfig", "instance_update", link, inst_id, [(1.0, apply)])


def set_labels(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    key = _key(call)
    labels = _labels(body.get("labels"))
    with ctx.store.lock:
        inst = _instance(ctx, call)
        if body.get("labelFingerprint", "") != inst["labelFingerprint"]:
            raise ApiError(412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have changed")
        inst_id, link = inst["id"], inst["selfLink"]

    def apply() -> None:
        with ctx.store.lock:
            _set_labels(_alive(ctx, key, inst_id), labels)

    return ctx.operation(call, "setLabels", "instance_update", link, inst_id, [(1.0, apply)])


def set_metadata(ctx: Ctx, call: Call) -> dict:
    body = call.json()
    key = _key(call)
    items = _metadata_items(body)
    with ctx.store.lock:
        inst = _instance(ctx, call)
        if body.get("fingerprint", "") != inst["metadata"]["fingerprint"]:
            raise ApiError(412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint.")
        inst_id, link = inst["id"], inst["selfLink"]

    def apply() -> None:
        with ctx.store.lock:
            inst = _alive(ctx, key, inst_id)
            inst["metadata"] = _metadata(items)
            vm = vm_view(inst)
        ctx.runtime.update(vm)

    return ctx.operation(call, "setMetadata", "instance_update", link, inst_id, [(1.0, apply)])


def stop_now(ctx: Ctx, key: tuple[str, str, str], inst_id: str) -> None:
    """Stop an instance: runtime.stop, TERMINATED, ephemeral external IPs released."""
    with ctx.store.lock:
        inst = _alive(ctx, key, inst_id)
        if inst["status"] == "TERMINATED":
            return
        inst["status"] = "STOPPING"
        vm = vm_view(inst)
    ctx.runtime.stop(vm)
    with ctx.store.lock:
        inst = _alive(ctx, key, inst_id)
        inst["status"] = "TERMINATED"
        for nic in inst["networkInterfaces"]:
            for ac in nic.get("accessConfigs", []):
                ip = ac.get("natIP")
                if ip and not any(a.get("address") == ip for a in ctx.store.addresses.values()):
                    del ac["natIP"]
                    release_ip(ctx.store, ip)
            _nic_fingerprint(nic)


def stop(ctx: Ctx, call: Call) -> dict:
    key = _key(call)
    with ctx.store.lock:
        inst = _instance(ctx, call)
        inst_id, link = inst["id"], inst["selfLink"]
        if inst["status"] not in ("TERMINATED",):
            inst["status"] = "STOPPING"
    return ctx.operation(call, "stop", "instance_stop", link, inst_id, [(1.0, lambda: stop_now(ctx, key, inst_id))])


def start(ctx: Ctx, call: Call) -> dict:
    key = _key(call)
    with ctx.store.lock:
        inst = _instance(ctx, call)
        inst_id, link = inst["id"], inst["selfLink"]
        if inst["status"] in ("STOPPING",):
            raise ApiError(400, "resourceNotReady", f"The resource '{_path(call)}' is not ready (it is stopping)")
        already = inst["status"] in ("RUNNING", "PROVISIONING", "STAGING")
        if not already:
            inst["status"] = "STAGING"

    def running() -> None:
        if already:
            return
        with ctx.store.lock:
            inst = _alive(ctx, key, inst_id)
            _assign_ephemeral(ctx, inst)
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = now_rfc3339()
            vm = vm_view(inst)
        ctx.runtime.start(vm)

    return ctx.operation(call, "start", "instance_start", link, inst_id, [(1.0, running)])
