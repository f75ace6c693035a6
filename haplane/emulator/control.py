"""The emulator's admin API under ``/_emulator/`` (not part of GCE; not in the call log).

=======  =================================================  ===========================================
verb     path                                               what
=======  =================================================  ===========================================
GET      /_emulator/health                                  ``{"status": "ok", "latency": ..., ...}``
GET      /_emulator/calls[?method=ID]                       ``{"calls": [call log entries]}``
DELETE   /_emulator/calls                                   clear the call log
GET      /_emulator/faults                                  ``{"faults": [pending fault specs]}``
POST     /_emulator/faults                                  add a fault spec (see :mod:`.faults`)
DELETE   /_emulator/faults[?method=ID]                      clear faults; releases hung operations
GET      /_emulator/latency                                 ``{"profile", "timeScale", "seconds"}``
POST     /_emulator/latency                                 ``{"profile"?, "timeScale"?, "seconds"?}``
GET      /_emulator/instances/{project}/{zone}/{name}       status, addresses, ``runtime.processes``
POST     /_emulator/instances/{project}/{zone}/{name}/kill  ``runtime.kill``: processes die, GCE says RUNNING
POST     /_emulator/instances/{project}/{zone}/{name}/stop  as instances.stop, at once, not logged
GET      /_emulator/zones                                   ``{"failed": [zones]}``
POST     /_emulator/zones/{zone}/fail[?mode=partition|kill]  the zone's API answers 503, and its network is
                                                            cut (``partition``: VMs keep running; the
                                                            default where the runtime can, i.e. the
                                                            namespaced network) or its VMs' processes
                                                            die (``kill``: the loopback default)
POST     /_emulator/zones/{zone}/restore                    the zone's API answers again and a cut network
                                                            reconnects (killed VMs stay killed)
=======  =================================================  ===========================================

Errors use Google's error shape too (404 unknown instance/zone/path, 400 bad spec).
"""

from __future__ import annotations

import re

from haplane.emulator import instances
from haplane.emulator.api import ROUTES
from haplane.emulator.calllog import CallLog
from haplane.emulator.errors import ApiError, invalid, not_found
from haplane.emulator.faults import Fault, FaultBook
from haplane.emulator.resources import Ctx, vm_view

MUTATING = {route.method for route in ROUTES if route.kind is not None}
ALL_METHODS = {route.method for route in ROUTES}
INSTANCE = re.compile(r"^/_emulator/instances/(?P<project>[^/]+)/(?P<zone>[^/]+)/(?P<name>[^/]+)(?:/(?P<act>\w+))?$")
ZONE = re.compile(r"^/_emulator/zones/(?P<zone>[^/]+)/(?P<act>fail|restore)$")


class Control:
    def __init__(self, ctx: Ctx, faults: FaultBook, calls: CallLog):
        self.ctx = ctx
        self.faults = faults
        self.calls = calls

    def handle(self, verb: str, path: str, query: dict[str, str], body) -> tuple[int, dict]:
        try:
            return 200, self._handle(verb, path.rstrip("/"), query, body)
        except ApiError as exc:
            return exc.code, exc.body()
        except ValueError as exc:
            return 400, invalid(str(exc)).body()

    def _handle(self, verb: str, path: str, query: dict[str, str], body) -> dict:
        ctx = self.ctx
        if path == "/_emulator/health" and verb == "GET":
            with ctx.store.lock:
                count = len(ctx.store.instances)
            return {
                "status": "ok",
                "url": ctx.store.base_url,
                "instances": count,
                "latency": ctx.latency.snapshot(),
                "failedZones": sorted(ctx.store.failed_zones),
            }
        if path == "/_emulator/calls":
            if verb == "GET":
                return {"calls": self.calls.entries(query.get("method"))}
            if verb == "DELETE":
                self.calls.clear()
                return {"calls": []}
        if path == "/_emulator/faults":
            if verb == "GET":
                return {"faults": self.faults.list()}
            if verb == "POST":
                fault = Fault.from_json(body or {})
                if fault.method not in ALL_METHODS:
                    raise ValueError(f"unknown method {fault.method!r}; the emulator serves {sorted(ALL_METHODS)}")
                if fault.mode in ("operation_error", "hang") and fault.method not in MUTATING:
                    raise ValueError(
                        f"mode {fault.mode!r} needs a method that returns an operation; {fault.method} does not"
                    )
                self.faults.add(fault)
                return {"faults": self.faults.list()}
            if verb == "DELETE":
                self.faults.clear(query.get("method"))
                released = ctx.ops.release_hung() if not self.faults.list() or not query.get("method") else 0
                return {"faults": self.faults.list(), "releasedOperations": released}
        if path == "/_emulator/latency":
            if verb == "GET":
                return ctx.latency.snapshot()
            if verb == "POST":
                body = body or {}
                return ctx.latency.configure(
                    profile=body.get("profile"), time_scale=body.get("timeScale"), seconds=body.get("seconds")
                )
        if path == "/_emulator/zones" and verb == "GET":
            return {"failed": sorted(ctx.store.failed_zones)}
        m = ZONE.match(path)
        if m and verb == "POST":
            return self._zone(m.group("zone"), m.group("act"), query.get("mode"))
        m = INSTANCE.match(path)
        if m:
            return self._instance(verb, m.group("project"), m.group("zone"), m.group("name"), m.group("act"))
        raise ApiError(404, "notFound", f"No such emulator admin endpoint: {verb} {path}")

    def _zone(self, zone: str, act: str, mode: str | None) -> dict:
        ctx = self.ctx
        if not ctx.catalog.has_zone(zone):
            raise not_found(f"zones/{zone}")
        if mode not in (None, "partition", "kill"):
            raise ValueError(f"zone fault 'mode' must be 'partition' or 'kill', got {mode!r}")
        if act == "restore":
            with ctx.store.lock:
                ctx.store.failed_zones.discard(zone)
            ctx.runtime.reconnect_zone(zone)
            return {"zone": zone, "failed": False, "killed": []}
        with ctx.store.lock:
            victims = [vm_view(i) for (_, z, _), i in ctx.store.instances.items() if z == zone]
        if mode != "kill":
            if ctx.runtime.partition_zone(zone):
                with ctx.store.lock:
                    ctx.store.failed_zones.add(zone)
                return {
                    "zone": zone,
                    "failed": True,
                    "mode": "partition",
                    "killed": [],
                    "partitioned": [vm.key for vm in victims],
                }
            if mode == "partition":
                raise ValueError(
                    "this emulator's network cannot partition a zone: run it with "
                    "--network namespaces (root), or fail the zone with mode=kill"
                )
        with ctx.store.lock:
            ctx.store.failed_zones.add(zone)
        for vm in victims:
            ctx.runtime.kill(vm)
        return {"zone": zone, "failed": True, "mode": "kill", "killed": [vm.key for vm in victims]}

    def _instance(self, verb: str, project: str, zone: str, name: str, act: str | None) -> dict:
        ctx = self.ctx
        key = (project, zone, name)
        with ctx.store.lock:
            inst = ctx.store.instances.get(key)
            if inst is None:
                raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
            vm, inst_id, status = vm_view(inst), inst["id"], inst["status"]
        if act is None and verb == "GET":
            return {
                "project": project,
                "zone": zone,
                "name": name,
                "status": status,
                "internalIP": vm.internal_ip,
                "externalIPs": list(vm.external_ips),
                "processes": ctx.runtime.processes(vm),
            }
        if act == "kill" and verb == "POST":
            ctx.runtime.kill(vm)
            return {"killed": vm.key}
        if act == "stop" and verb == "POST":
            instances.stop_now(ctx, key, inst_id)
            return {"stopped": vm.key}
        raise ApiError(404, "notFound", f"No such emulator admin endpoint: {verb} {act}")
