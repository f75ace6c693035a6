"""Every list the emulator serves, paged through by the real google-cloud-compute pagers.

The instances here are bare (the emulator's NullRuntime: no processes), which
is what an instance without haplane's node metadata is under the process
runtime too; so 250 of them cost a few seconds.
"""

from __future__ import annotations

import uuid
from collections import Counter

import httpx
import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.server import Emulator
from tests.fixtures.emulator import compute_clients

P = "proj"
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f", "us-east1-b", "us-east1-c"]
N_INSTANCES = 250


def rid() -> str:
    return str(uuid.uuid4())


def post(http: httpx.Client, path: str, body: dict) -> dict:
    reply = http.post(f"/compute/v1/projects/{P}/{path}", params={"requestId": rid()}, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_all_done(http: httpx.Client, ops: list[dict]) -> None:
    for op in ops:
        scope = op["selfLink"].split(f"/projects/{P}/", 1)[1].rsplit("/operations/", 1)[0]
        done = http.post(f"/compute/v1/projects/{P}/{scope}/operations/{op['name']}/wait").json()
        assert done["status"] == "DONE" and "error" not in done, done


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A bare emulator holding 250 instances over six zones of two regions."""
    emulator = Emulator(state_dir=tmp_path_factory.mktemp("emulator"), wait_timeout=30.0)
    emulator.start()
    try:
        with httpx.Client(base_url=emulator.url, timeout=60) as http:
            ops, names = [], {}
            for i in range(N_INSTANCES):
                zone, name = ZONES[i % len(ZONES)], f"vm-{i:03d}"
                names[name] = zone
                ops.append(
                    post(
                        http,
                        f"zones/{zone}/instances",
                        {
                            "name": name,
                            "machineType": "e2-small",
                            "labels": {"parity": "odd" if i % 2 else "even"},
                            "networkInterfaces": [{}],
                        },
                    )
                )
            wait_all_done(http, ops)
        yield emulator, names
    finally:
        emulator.stop()


def test_aggregated_list_pages_through_250_instances_over_zones(fleet):
    emulator, names = fleet
    c = compute_clients(emulator.url)
    pager = c.instances.aggregated_list(request=compute_v1.AggregatedListInstancesRequest(project=P, max_results=40))
    seen: list[tuple[str, str]] = []
    pages = 0
    for page in pager.pages:
        pages += 1
        on_page = sum(len(scoped.instances) for scoped in page.items.values())
        assert on_page <= 40
        for scope, scoped in page.items.items():
            if not scoped.instances:
                assert scoped.warning.code == "NO_RESULTS_ON_PAGE"
            seen.extend((scope, inst.name) for inst in scoped.instances)
    assert pages == 7  # ceil(250 / 40): the client followed nextPageToken six times
    assert len(seen) == N_INSTANCES and Counter(n for _, n in seen).most_common(1)[0][1] == 1
    assert {name: scope.removeprefix("zones/") for scope, name in seen} == names
    # the pager's flat iteration (what inventory tools do) yields every zone, with or without instances
    scopes = {scope for scope, _ in c.instances.aggregated_list(project=P)}
    assert {f"zones/{z}" for z in ZONES} <= scopes and "zones/europe-west1-b" in scopes


def test_zonal_list_pages_with_filter_and_order(fleet):
    emulator, names = fleet
    c = compute_clients(emulator.url)
    zone = ZONES[0]
    in_zone = sorted(n for n, z in names.items() if z == zone)
    pager = c.instances.list(request=compute_v1.ListInstancesRequest(project=P, zone=zone, max_results=7))
    assert [i.name for i in pager] == in_zone
    assert len(
        list(c.instances.list(request=compute_v1.ListInstancesRequest(project=P, zone=zone, max_results=7)).pages)
    ) == -(-len(in_zone) // 7)
    odd = c.instances.list(
        request=compute_v1.ListInstancesRequest(project=P, zone=zone, max_results=5, filter='labels.parity = "odd"')
    )
    assert [i.name for i in odd] == [n for n in in_zone if int(n[3:]) % 2]
    newest = list(
        c.instances.list(
            request=compute_v1.ListInstancesRequest(
                project=P, zone=zone, max_results=4, order_by="creationTimestamp desc"
            )
        )
    )
    stamps = [i.creation_timestamp for i in newest]
    assert stamps == sorted(stamps, reverse=True) and {i.name for i in newest} == set(in_zone)
    for bad in (dict(order_by="zone"), dict(max_results=501), dict(page_token="not-a-token")):
        with pytest.raises(exceptions.BadRequest):
            list(c.instances.list(request=compute_v1.ListInstancesRequest(project=P, zone=zone, **bad)))


def test_pages_do_not_repeat_or_skip_when_the_list_changes_between_pages(fleet):
    emulator, names = fleet
    zone = ZONES[1]
    with httpx.Client(base_url=emulator.url, timeout=60) as http:
        url = f"/compute/v1/projects/{P}/zones/{zone}/instances"
        first = http.get(url, params={"maxResults": 10}).json()
        # a new instance sorting before the cursor appears between the pages: the next page starts after
        # the last name served, so nothing already served repeats and nothing not yet served is skipped
        wait_all_done(http, [post(http, f"zones/{zone}/instances", {"name": "aaa-new", "machineType": "e2-small"})])
        try:
            rest, token = [], first["nextPageToken"]
            while token:
                page = http.get(url, params={"maxResults": 10, "pageToken": token}).json()
                rest += [i["name"] for i in page.get("items", [])]
                token = page.get("nextPageToken")
        finally:
            gone = http.delete(f"{url}/aaa-new", params={"requestId": rid()}).json()
            wait_all_done(http, [gone])
    served = [i["name"] for i in first["items"]] + rest
    assert served == sorted(n for n, z in names.items() if z == zone)


def test_aggregated_list_names_an_unreachable_zone_instead_of_leaving_it_out(fleet):
    emulator, names = fleet
    c = compute_clients(emulator.url)
    with EmulatorAdmin(emulator.url) as admin:
        admin.fail_zone(ZONES[2])
        try:
            with pytest.raises(exceptions.ServiceUnavailable):
                list(c.instances.aggregated_list(project=P, retry=None))  # the client retries 503 by default
            # returnPartialSuccess (not in this client version's request type): over REST
            page = httpx.get(
                f"{emulator.url}/compute/v1/projects/{P}/aggregated/instances", params={"returnPartialSuccess": "true"}
            ).json()
            assert page["unreachables"] == [f"zones/{ZONES[2]}"]
            assert f"zones/{ZONES[2]}" not in page["items"]
            listed = {i["name"] for scoped in page["items"].values() for i in scoped.get("instances", [])}
            assert listed == {n for n, z in names.items() if z != ZONES[2]}
            assert compute_v1.InstanceAggregatedList.from_json(
                httpx.get(
                    f"{emulator.url}/compute/v1/projects/{P}/aggregated/instances",
                    params={"returnPartialSuccess": "true"},
                ).text
            ).unreachables == [f"zones/{ZONES[2]}"]
        finally:
            admin.restore_zone(ZONES[2])


def test_pagers_page_through_600_operations(fleet):
    emulator, names = fleet
    c = compute_clients(emulator.url)
    with httpx.Client(base_url=emulator.url, timeout=60) as http:
        ops = [
            post(http, "global/firewalls", {"name": f"fw-{i:03d}", "allowed": [{"IPProtocol": "tcp"}]})
            for i in range(300)
        ]
        wait_all_done(http, ops)
        deletes = [
            http.delete(f"/compute/v1/projects/{P}/global/firewalls/fw-{i:03d}", params={"requestId": rid()}).json()
            for i in range(300)
        ]
        wait_all_done(http, deletes)
    expected = {op["name"] for op in ops + deletes}
    pager = c.global_operations.list(request=compute_v1.ListGlobalOperationsRequest(project=P, max_results=100))
    listed = [op.name for op in pager]
    assert len(listed) == 600 and set(listed) == expected
    assert Counter(op.operation_type for op in c.global_operations.list(project=P)) == {"insert": 300, "delete": 300}
    done = c.global_operations.list(
        request=compute_v1.ListGlobalOperationsRequest(project=P, max_results=250, filter='operationType = "delete"')
    )
    assert {op.name for op in done} == {op["name"] for op in deletes}
    # aggregated: the 600 global ones and every zone's instance inserts, over pages of 500
    agg = c.global_operations.aggregated_list(
        request=compute_v1.AggregatedListGlobalOperationsRequest(project=P, max_results=500)
    )
    by_scope: Counter = Counter()
    for scope, scoped in agg:
        by_scope[scope] += len(scoped.operations)
    assert by_scope["global"] == 600
    assert sum(by_scope[f"zones/{z}"] for z in ZONES) >= N_INSTANCES
    zone_ops = c.zone_operations.list(
        request=compute_v1.ListZoneOperationsRequest(
            project=P, zone=ZONES[0], max_results=9, filter='operationType = "insert"'
        )
    )
    assert {op.target_link.rsplit("/", 1)[1] for op in zone_ops} >= {n for n, z in names.items() if z == ZONES[0]}


def test_load_balancer_and_address_lists_page(fleet):
    emulator, names = fleet
    c = compute_clients(emulator.url)
    region = "us-central1"
    members = [
        f"{emulator.url}/compute/v1/projects/{P}/zones/{names[n]}/instances/{n}"
        for n in sorted(names)
        if names[n].startswith(region)
    ][:3]
    with httpx.Client(base_url=emulator.url, timeout=60) as http:
        ops = [post(http, "global/httpHealthChecks", {"name": f"hc-{i}", "port": 8080}) for i in range(3)]
        ops += [
            post(http, "global/healthChecks", {"name": f"hhc-{i}", "type": "TCP", "tcpHealthCheck": {"port": 22}})
            for i in range(3)
        ]
        ops += [post(http, f"regions/{region}/addresses", {"name": f"addr-{i}"}) for i in range(3)]
        ops += [
            post(http, f"regions/{region}/targetPools", {"name": f"pool-{i}", "instances": members}) for i in range(3)
        ]
        wait_all_done(http, ops)
        rules = [
            post(
                http,
                f"regions/{region}/forwardingRules",
                {
                    "name": f"rule-{i}",
                    "target": f"{emulator.url}/compute/v1/projects/{P}/regions/{region}/targetPools/pool-{i}",
                },
            )
            for i in range(3)
        ]
        wait_all_done(http, rules)
        legacy = []
        token = None
        while True:
            page = http.get(
                f"/compute/v1/projects/{P}/global/httpHealthChecks",
                params={"maxResults": 2, **({"pageToken": token} if token else {})},
            ).json()
            assert page["kind"] == "compute#httpHealthCheckList"
            legacy += [hc["name"] for hc in page["items"]]
            token = page.get("nextPageToken")
            if not token:
                break
    assert legacy == ["hc-0", "hc-1", "hc-2"]
    one = {"project": P, "max_results": 1}
    assert [h.name for h in c.health_checks.list(request=compute_v1.ListHealthChecksRequest(**one))] == [
        "hhc-0",
        "hhc-1",
        "hhc-2",
    ]
    assert [a.name for a in c.addresses.list(request=compute_v1.ListAddressesRequest(region=region, **one))] == [
        "addr-0",
        "addr-1",
        "addr-2",
    ]
    pools = list(c.target_pools.list(request=compute_v1.ListTargetPoolsRequest(region=region, **one)))
    assert [p.name for p in pools] == ["pool-0", "pool-1", "pool-2"] and list(pools[0].instances) == members
    assert [
        f.name for f in c.forwarding_rules.list(request=compute_v1.ListForwardingRulesRequest(region=region, **one))
    ] == ["rule-0", "rule-1", "rule-2"]
    for client, request, field in (
        (c.addresses, compute_v1.AggregatedListAddressesRequest, "addresses"),
        (c.target_pools, compute_v1.AggregatedListTargetPoolsRequest, "target_pools"),
        (c.forwarding_rules, compute_v1.AggregatedListForwardingRulesRequest, "forwarding_rules"),
        (c.health_checks, compute_v1.AggregatedListHealthChecksRequest, "health_checks"),
    ):
        found = {
            (scope, r.name)
            for scope, scoped in client.aggregated_list(request=request(**one))
            for r in getattr(scoped, field)
        }
        where = "global" if field == "health_checks" else f"regions/{region}"
        assert {name for scope, name in found if scope == where} >= {n for _, n in found}, field
        assert len(found) == 3, (field, found)
    region_ops = c.region_operations.list(request=compute_v1.ListRegionOperationsRequest(region=region, **one))
    assert len(list(region_ops)) == 9  # 3 addresses, 3 pools, 3 rules
