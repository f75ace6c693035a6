"""The emulator's responses against recordings of real Compute Engine (tests/golden/, source named in each).

Each test replays a recorded exchange sequence against the emulator with raw REST (httpx): the
same methods on the same paths with equivalent bodies (the recordings' values are normalised, so a
body is the recorded one with its placeholders filled and the emulator's own IPs), then compares
each response with the recorded one:

- ``kind`` strings equal, at every level;
- every field the real response has is served, with the same JSON type (lists item by item);
- ``status`` (resources and operations) equal at each step, and every enum-typed value is one of
  google-cloud-compute's enum values for that field;
- every field the emulator serves exists in google-cloud-compute's message for that resource (the
  emulator invents nothing);
- error bodies: the same shape, reason and message pattern.

Values are normalised in the recordings (ids, names, timestamps, IPs): shapes are compared, not values.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
from google.cloud import compute_v1

from haplane.emulator.catalog import Catalog
from haplane.emulator.server import Emulator

GOLDEN = Path(__file__).parent / "golden"
P = "golden-proj"


def fixture(name: str) -> dict:
    data = json.loads((GOLDEN / f"{name}.json").read_text())
    assert data["source"]["repository"] == "GoogleCloudPlatform/k8s-config-connector" and data["source"]["commit"]
    return data


def steps(name: str) -> dict[str, dict]:
    return {s["step"]: s for s in fixture(name)["steps"]}


# --- shape comparison ---------------------------------------------------------------------------


def _type(value) -> str:
    return {
        bool: "bool",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }[type(value)]


def shape_differences(recorded, served, path: str = "", absent: frozenset[str] = frozenset()) -> list[str]:
    """What ``served`` lacks or types differently from ``recorded`` (``absent``: documented omissions)."""
    out: list[str] = []
    if _type(recorded) != _type(served):
        return [f"{path or '.'}: recorded {_type(recorded)}, served {_type(served)}"]
    if isinstance(recorded, dict):
        if "kind" in recorded and recorded["kind"] != served.get("kind"):
            out.append(f"{path}.kind: recorded {recorded['kind']!r}, served {served.get('kind')!r}")
        for key, value in recorded.items():
            where = f"{path}.{key}" if path else key
            if where in absent:
                continue
            if key not in served:
                out.append(f"{where}: missing")
            else:
                out += shape_differences(value, served[key], where, absent)
    elif isinstance(recorded, list) and recorded and served:
        for item in served:
            out += shape_differences(recorded[0], item, f"{path}[]", absent)
    return out


def _enum(descriptor, json_name: str):
    camel = json_name[0].upper() + json_name[1:]
    for name in (camel, camel + "Enum"):
        if name in descriptor.enum_types_by_name:
            return descriptor.enum_types_by_name[name]
    return None


# google-cloud-compute has no message for the legacy httpHealthChecks resource (no longer generated): its
# fields as GCE's REST reference (compute/docs/reference/rest/v1/httpHealthChecks) lists them
LEGACY_HTTP_HEALTH_CHECK = frozenset(
    {
        "kind",
        "id",
        "creationTimestamp",
        "name",
        "description",
        "host",
        "requestPath",
        "port",
        "checkIntervalSec",
        "timeoutSec",
        "unhealthyThreshold",
        "healthyThreshold",
        "selfLink",
        "proxyHeader",
    }
)


def unknown_fields(served, message, path: str = "") -> list[str]:
    """Fields (or enum values) the emulator serves that google-cloud-compute's ``message`` does not have."""
    if isinstance(message, frozenset):
        return [f"{path}{key}: not a field of the resource" for key in served if key not in message]
    descriptor = message.pb().DESCRIPTOR if hasattr(message, "pb") else message
    fields = {f.json_name: f for f in descriptor.fields}
    out = []
    for key, value in served.items():
        where = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            out.append(f"{where}: not a field of {descriptor.name}")
            continue
        enum = _enum(descriptor, key)
        if enum is not None and isinstance(value, str) and value not in enum.values_by_name:
            out.append(f"{where}: {value!r} is not a {descriptor.name}.{enum.name} value")
        sub = field.message_type
        if sub is None or sub.GetOptions().map_entry:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                out += unknown_fields(item, sub, where)
    return out


def check(
    step: dict, served: httpx.Response, message, absent: frozenset[str] = frozenset(), same_status: bool = True
) -> dict:
    """Compare one served response with the recorded step; returns the served JSON."""
    recorded = step["response"]
    body = served.json()
    assert served.status_code == step["status"], (step["step"], served.status_code, body)
    if "error" in recorded and "kind" not in recorded:  # an HTTP error body (not an operation with error)
        assert shape_differences(recorded, body) == [], step["step"]
        pattern = re.escape(recorded["error"]["message"])
        pattern = re.sub(r"\\\$\\\{\w+\\\}", "[^/']+", pattern)
        pattern = pattern.replace("us\\-central1", "[a-z0-9-]+").replace("us\\-west1", "[a-z0-9-]+")
        assert re.fullmatch(pattern, body["error"]["message"]), (recorded["error"]["message"], body["error"]["message"])
        assert [e["reason"] for e in body["error"]["errors"]] == [e["reason"] for e in recorded["error"]["errors"]]
        return body
    assert shape_differences(recorded, body, absent=absent) == [], step["step"]
    assert unknown_fields(body, message) == [], step["step"]
    assert unknown_fields(recorded, message) == [], f"recording {step['step']}: the client lacks a field"
    if same_status and "status" in recorded:
        assert body["status"] == recorded["status"], step["step"]
    return body


# --- the emulator, and raw REST -----------------------------------------------------------------


@pytest.fixture
def emu(tmp_path):
    emulator = Emulator(
        state_dir=tmp_path / "emulator", catalog=Catalog({"us-west1": ["a", "b", "c"]}), wait_timeout=10.0
    )
    emulator.start()
    try:
        with httpx.Client(base_url=f"{emulator.url}/compute/v1/projects/{P}/", timeout=30) as http:
            yield http
    finally:
        emulator.stop()


def call(http: httpx.Client, method: str, path: str, body: dict | None = None) -> httpx.Response:
    params = {"requestId": str(uuid.uuid4())} if method in ("POST", "DELETE") else None
    return http.request(method, path, params=params, json=body)


def done(http: httpx.Client, op: dict) -> httpx.Response:
    scope = op["selfLink"].split(f"/projects/{P}/", 1)[1]
    while True:  # the recordings GET the operation until DONE; so do we (GET, not wait, for the same method)
        reply = http.get(scope)
        if reply.json().get("status") == "DONE":
            return reply
        http.post(f"{scope}/wait")


def fill(value, names: dict[str, str]):
    """The recorded body with its ``${placeholder}``s filled."""
    text = json.dumps(value)
    for placeholder, real in names.items():
        text = text.replace("${" + placeholder + "}", real)
    return json.loads(text)


OP = compute_v1.Operation


# --- per resource -------------------------------------------------------------------------------


def test_instances_match_recorded_gce(emu):
    s = steps("instances")
    zone, region, name = "us-west1-a", "us-west1", "golden-vm"
    check(s["get-missing"], emu.get(f"zones/{zone}/instances/{name}"), compute_v1.Instance)
    # the recorded instance uses a reserved external address as natIP
    addr = done(emu, call(emu, "POST", f"regions/{region}/addresses", {"name": "golden-ip"}).json())
    ip = emu.get(f"regions/{region}/addresses/golden-ip").json()["address"]
    body = fill(
        s["insert"]["request"],
        {
            "projectId": P,
            "instanceID": name,
            "diskID": "golden-disk",
            "networkID": "default",
            "addressID": "golden-ip",
            "uniqueId": "x",
        },
    )
    nic = body["networkInterfaces"][0]
    nic.pop("networkIP")  # normalised to an address link in the recording
    nic["accessConfigs"][0]["natIP"] = ip
    assert addr.json()["status"] == "DONE"
    op = check(s["insert"], call(emu, "POST", f"zones/{zone}/instances", body), OP)
    check(s["insert-done"], done(emu, op), OP)
    got = check(s["get-running"], emu.get(f"zones/{zone}/instances/{name}"), compute_v1.Instance)
    assert got["scheduling"] == body["scheduling"]  # GCE keeps the scheduling it was given
    assert [d["source"].rsplit("/", 1)[1] for d in got["disks"]] == ["golden-disk", "golden-disk"]
    op = check(s["stop"], call(emu, "POST", f"zones/{zone}/instances/{name}/stop"), OP)
    check(s["stop-done"], done(emu, op), OP)
    check(s["get-terminated"], emu.get(f"zones/{zone}/instances/{name}"), compute_v1.Instance)
    fp = emu.get(f"zones/{zone}/instances/{name}").json()["metadata"]["fingerprint"]
    op = check(
        s["set-metadata"],
        call(
            emu,
            "POST",
            f"zones/{zone}/instances/{name}/setMetadata",
            {"fingerprint": fp, "items": [{"key": "foo", "value": "bar"}]},
        ),
        OP,
    )
    done(emu, op)
    fp = emu.get(f"zones/{zone}/instances/{name}").json()["labelFingerprint"]
    op = check(
        s["set-labels"],
        call(
            emu,
            "POST",
            f"zones/{zone}/instances/{name}/setLabels",
            {"labelFingerprint": fp, "labels": {"env": "golden"}},
        ),
        OP,
    )
    done(emu, op)
    op = check(s["start"], call(emu, "POST", f"zones/{zone}/instances/{name}/start"), OP)
    check(s["start-done"], done(emu, op), OP)
    op = check(s["delete"], call(emu, "DELETE", f"zones/{zone}/instances/{name}"), OP)
    check(s["delete-done"], done(emu, op), OP)
    check(s["get-missing"], emu.get(f"zones/{zone}/instances/{name}"), compute_v1.Instance)


# Fields of the recorded address that belong to what the emulator does not serve (say why):
ADDRESS_ABSENT = frozenset(
    {
        "ipCollection",  # BYOIP public delegated prefixes: the emulator's external IPs are its own pool
    }
)


def test_addresses_match_recorded_gce(emu):
    s = steps("addresses")
    region, name = "us-central1", "golden-ip"
    check(s["get-missing"], emu.get(f"regions/{region}/addresses/{name}"), compute_v1.Address)
    body = fill(s["insert"]["request"], {"projectId": P, "addressID": name, "uniqueId": "x"})
    body.pop("ipCollection")
    body.pop("address", None)  # a normalised IP from the BYOIP range: the emulator picks from its pool
    op = check(s["insert"], call(emu, "POST", f"regions/{region}/addresses", body), OP)
    check(s["insert-done"], done(emu, op), OP)
    got = check(
        s["get-reserved"], emu.get(f"regions/{region}/addresses/{name}"), compute_v1.Address, absent=ADDRESS_ABSENT
    )
    assert got["labels"] == body["labels"]
    op = check(s["delete"], call(emu, "DELETE", f"regions/{region}/addresses/{name}"), OP)
    check(s["delete-done"], done(emu, op), OP)


def _pool(emu, region: str, name: str) -> str:
    done(emu, call(emu, "POST", f"regions/{region}/targetPools", {"name": name}).json())
    return emu.get(f"regions/{region}/targetPools/{name}").json()["selfLink"]


def test_forwarding_rules_match_recorded_gce(emu):
    s = steps("forwarding_rules")
    region, name = "us-central1", "golden-rule"
    check(s["get-missing"], emu.get(f"regions/{region}/forwardingRules/{name}"), compute_v1.ForwardingRule)
    target = _pool(emu, region, "golden-pool")  # recorded: a VPN gateway; haplane's rules point at pools
    done(emu, call(emu, "POST", f"regions/{region}/addresses", {"name": "golden-ip"}).json())
    ip = emu.get(f"regions/{region}/addresses/golden-ip").json()["address"]
    body = fill(s["insert"]["request"], {"projectId": P, "forwardingRuleID": name, "uniqueId": "x"})
    body.update(target=target, IPAddress=ip, IPProtocol="TCP")
    op = check(s["insert"], call(emu, "POST", f"regions/{region}/forwardingRules", body), OP)
    check(s["insert-done"], done(emu, op), OP)
    got = check(s["get"], emu.get(f"regions/{region}/forwardingRules/{name}"), compute_v1.ForwardingRule)
    assert got["target"] == target and got["IPAddress"] == ip
    op = check(s["delete"], call(emu, "DELETE", f"regions/{region}/forwardingRules/{name}"), OP)
    check(s["delete-done"], done(emu, op), OP)


def test_target_pool_operations_are_shaped_like_recorded_regional_operations(emu):
    """No recording of target pools exists in the source: their operations are checked against the
    recorded regional ones of the same legacy load-balancer family (forwardingRules.setTarget says
    ``SetTarget``; targetPools.addInstance / removeInstance say ``AddInstance`` / ``RemoveInstance``)."""
    s = steps("forwarding_rules")
    region, zone = "us-central1", "us-central1-a"
    pool = _pool(emu, region, "golden-pool")
    done(emu, call(emu, "POST", f"zones/{zone}/instances", {"name": "vm1", "machineType": "e2-small"}).json())
    vm = emu.get(f"zones/{zone}/instances/vm1").json()["selfLink"]
    for method, op_type in (("addInstance", "AddInstance"), ("removeInstance", "RemoveInstance")):
        reply = call(
            emu, "POST", f"regions/{region}/targetPools/golden-pool/{method}", {"instances": [{"instance": vm}]}
        )
        op = check(s["set-target"], reply, OP)
        assert op["operationType"] == op_type
        finished = done(emu, op).json()
        assert shape_differences(s["delete-done"]["response"], finished) == []
    served = emu.get(f"regions/{region}/targetPools/golden-pool").json()
    assert served["selfLink"] == pool and unknown_fields(served, compute_v1.TargetPool) == []


def test_firewalls_match_recorded_gce(emu):
    s = steps("firewalls")
    name = "golden-fw"
    check(s["get-missing"], emu.get(f"global/firewalls/{name}"), compute_v1.Firewall)
    body = fill(s["insert"]["request"], {"projectId": P, "firewallID": name, "networkID": "default"})
    op = check(s["insert"], call(emu, "POST", "global/firewalls", body), OP)
    check(s["insert-done"], done(emu, op), OP)
    got = check(s["get"], emu.get(f"global/firewalls/{name}"), compute_v1.Firewall)
    assert got["allowed"] == body["allowed"]
    op = check(s["delete"], call(emu, "DELETE", f"global/firewalls/{name}"), OP)
    check(s["delete-done"], done(emu, op), OP)


def test_firewall_without_a_source_matches_recorded_gce(emu):
    """An ingress rule inserted without a source is answered with GCE's default, ``sourceRanges: ["0.0.0.0/0"]``."""
    s = steps("firewalls_default_source")
    name = "golden-fw-default"
    body = fill(s["insert"]["request"], {"projectId": P, "firewallID": name, "networkID": "default"})
    assert not any(body.get(f) for f in ("sourceRanges", "sourceTags", "sourceServiceAccounts"))
    op = check(s["insert"], call(emu, "POST", "global/firewalls", body), OP)
    check(s["insert-done"], done(emu, op), OP)
    recorded, got = s["get"]["response"], emu.get(f"global/firewalls/{name}").json()
    # logConfig is not served by the emulator; enableLogging is not in google-cloud-compute's Firewall
    assert shape_differences(recorded, got, absent=frozenset({"logConfig", "enableLogging"})) == []
    assert unknown_fields(got, compute_v1.Firewall) == []
    assert (
        (got["direction"], got["sourceRanges"])
        == (recorded["direction"], recorded["sourceRanges"])
        == ("INGRESS", ["0.0.0.0/0"])
    )


@pytest.mark.parametrize(
    "given, served",
    [
        ({}, ["0.0.0.0/0"]),
        ({"direction": "INGRESS"}, ["0.0.0.0/0"]),
        ({"sourceRanges": ["10.0.0.0/8"]}, ["10.0.0.0/8"]),
        ({"sourceTags": ["etcd"]}, None),  # a source is given: no default range is added
        ({"sourceServiceAccounts": ["sa@golden-proj.iam.gserviceaccount.com"]}, None),
        ({"direction": "EGRESS", "destinationRanges": ["10.0.0.0/8"]}, None),  # sources are for ingress only
    ],
)
def test_firewall_default_source_range(emu, given, served):
    name = f"fw-{uuid.uuid4().hex[:6]}"
    body = {
        "name": name,
        "network": f"projects/{P}/global/networks/default",
        "allowed": [{"IPProtocol": "tcp", "ports": ["2379"]}],
        **given,
    }
    done(emu, call(emu, "POST", "global/firewalls", body).raise_for_status().json())
    assert emu.get(f"global/firewalls/{name}").json().get("sourceRanges") == served


@pytest.mark.parametrize(
    "collection, message", [("http_health_checks", LEGACY_HTTP_HEALTH_CHECK), ("health_checks", compute_v1.HealthCheck)]
)
def test_health_checks_match_recorded_gce(emu, collection, message):
    s = steps(collection)
    path = "global/httpHealthChecks" if collection == "http_health_checks" else "global/healthChecks"
    name = "golden-hc"
    check(s["get-missing"], emu.get(f"{path}/{name}"), message)
    body = fill(s["insert"]["request"], {"projectId": P, "healthCheckID": name})
    op = check(s["insert"], call(emu, "POST", path, body), OP)
    check(s["insert-done"], done(emu, op), OP)
    check(s["get"], emu.get(f"{path}/{name}"), message)
    op = check(s["delete"], call(emu, "DELETE", f"{path}/{name}"), OP)
    check(s["delete-done"], done(emu, op), OP)


def test_failed_operation_matches_recorded_gce(emu):
    """An operation that ends DONE with an error: the recorded one is a network delete refused because a
    firewall uses it; the emulator's is a second instance on a static IP the first one uses (409)."""
    recorded = steps("operation_error")["done-with-error"]
    zone, region = "us-central1-a", "us-central1"
    done(emu, call(emu, "POST", f"regions/{region}/addresses", {"name": "golden-ip"}).json())
    ip = emu.get(f"regions/{region}/addresses/golden-ip").json()["address"]
    nic = {"accessConfigs": [{"name": "External NAT", "natIP": ip}]}
    for name in ("vm1", "vm2"):
        op = call(
            emu,
            "POST",
            f"zones/{zone}/instances",
            {"name": name, "machineType": "e2-small", "networkInterfaces": [nic]},
        ).json()
        finished = done(emu, op)
    body = check(recorded, finished, OP)
    assert body["error"]["errors"][0]["code"] == "IP_IN_USE_BY_ANOTHER_RESOURCE"
    assert (body["httpErrorStatusCode"], body["httpErrorMessage"]) == (409, "CONFLICT")
