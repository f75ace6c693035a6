"""The emulator's Compute API through the real google-cloud-compute clients."""

from __future__ import annotations

import uuid

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from tests.fixtures.emulator import compute_clients, wait_op

P = "proj"
Z = "us-central1-a"
R = "us-central1"
DONE = compute_v1.Operation.Status.DONE


def rid() -> str:
    return str(uuid.uuid4())


def instance(name: str, external: bool = True, nat_ip: str | None = None, **kw) -> compute_v1.Instance:
    acs = [compute_v1.AccessConfig(name="External NAT", nat_i_p=nat_ip)] if external else []
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{Z}/machineTypes/e2-medium",
        network_interfaces=[compute_v1.NetworkInterface(access_configs=acs)],
        **kw,
    )


def create_vm(c, name: str, **kw) -> compute_v1.Instance:
    op = c.instances.insert_unary(
        request=compute_v1.InsertInstanceRequest(
            project=P, zone=Z, instance_resource=instance(name, **kw), request_id=rid()
        )
    )
    op = wait_op(c, op)
    assert not op.error.errors, op.error
    return c.instances.get(project=P, zone=Z, instance=name)


@pytest.fixture
def c(bare_emulator):
    return compute_clients(bare_emulator.url)


def test_regions_and_zones(c):
    regions = {r.name: r for r in c.regions.list(project=P)}
    assert {"us-central1", "us-east1", "europe-west1", "europe-west4", "asia-east1"} <= set(regions)
    assert [z.rsplit("/", 1)[1] for z in regions["us-central1"].zones] == [
        "us-central1-a",
        "us-central1-b",
        "us-central1-c",
        "us-central1-f",
    ]
    zone = c.zones.get(project=P, zone="europe-west1-d")
    assert zone.region.endswith("/regions/europe-west1") and zone.status == "UP"
    assert [
        z.name for z in c.zones.list(request=compute_v1.ListZonesRequest(project=P, filter="name eq us-east1-.*"))
    ] == ["us-east1-b", "us-east1-c", "us-east1-d"]
    with pytest.raises(exceptions.NotFound):
        c.zones.get(project=P, zone="mars-north1-a")
    with pytest.raises(exceptions.NotFound):
        c.regions.get(project=P, region="mars-north1")


def test_catalog_extension(tmp_path):
    from haplane.emulator.catalog import Catalog
    from haplane.emulator.server import Emulator

    path = tmp_path / "catalog.json"
    path.write_text('{"regions": {"us-west1": ["a", "b", "c"]}}')
    with Emulator(catalog=Catalog.from_file(path)) as emu:
        zone = compute_clients(emu.url).zones.get(project=P, zone="us-west1-b")
        assert zone.region.endswith("/regions/us-west1")


def test_instance_lifecycle(c, bare_emulator):
    op = c.instances.insert_unary(
        request=compute_v1.InsertInstanceRequest(
            project=P, zone=Z, instance_resource=instance("m1", labels={"cluster": "c1"}), request_id=rid()
        )
    )
    assert op.operation_type == "insert" and op.target_link.endswith(f"/zones/{Z}/instances/m1")
    assert op.self_link.startswith(bare_emulator.url + "/compute/v1/projects/proj/zones/")
    op = wait_op(c, op)
    assert op.status == DONE and op.progress == 100 and op.end_time and not op.error.errors
    vm = c.instances.get(project=P, zone=Z, instance="m1")
    assert vm.status == "RUNNING" and vm.id and vm.creation_timestamp and vm.label_fingerprint
    assert str(op.target_id) == str(vm.id)
    nic = vm.network_interfaces[0]
    assert nic.network_i_p.startswith("127.10.") and nic.fingerprint
    assert nic.access_configs[0].nat_i_p.startswith("127.20.")
    create_vm(c, "m2", external=False, labels={"cluster": "c2"})

    # filters
    def names(f):
        return sorted(
            i.name for i in c.instances.list(request=compute_v1.ListInstancesRequest(project=P, zone=Z, filter=f))
        )

    assert names('name = "m1"') == ["m1"]
    assert names("name eq m.*") == ["m1", "m2"]
    assert names("labels.cluster eq c2") == ["m2"]
    assert names('(labels.cluster = "c1") (name = "m1")') == ["m1"]
    assert names('labels.cluster = "c1" AND name = "m2"') == []
    assert names("") == ["m1", "m2"]
    with pytest.raises(exceptions.BadRequest):
        names("name = m1 OR name = m2")
    with pytest.raises(exceptions.BadRequest):
        names("((name")
    # stop / start
    op = wait_op(
        c,
        c.instances.stop_unary(
            request=compute_v1.StopInstanceRequest(project=P, zone=Z, instance="m1", request_id=rid())
        ),
    )
    assert op.operation_type == "stop"
    assert c.instances.get(project=P, zone=Z, instance="m1").status == "TERMINATED"
    wait_op(
        c,
        c.instances.start_unary(
            request=compute_v1.StartInstanceRequest(project=P, zone=Z, instance="m1", request_id=rid())
        ),
    )
    assert c.instances.get(project=P, zone=Z, instance="m1").status == "RUNNING"
    # delete
    op = wait_op(
        c,
        c.instances.delete_unary(
            request=compute_v1.DeleteInstanceRequest(project=P, zone=Z, instance="m1", request_id=rid())
        ),
    )
    assert op.operation_type == "delete" and not op.error.errors
    with pytest.raises(exceptions.NotFound):
        c.instances.get(project=P, zone=Z, instance="m1")


def test_labels_and_metadata_fingerprints(c):
    vm = create_vm(c, "m1", metadata=compute_v1.Metadata(items=[compute_v1.Items(key="a", value="1")]))
    req = compute_v1.InstancesSetLabelsRequest(labels={"x": "y"}, label_fingerprint=vm.label_fingerprint)
    wait_op(
        c,
        c.instances.set_labels_unary(
            request=compute_v1.SetLabelsInstanceRequest(
                project=P, zone=Z, instance="m1", instances_set_labels_request_resource=req, request_id=rid()
            )
        ),
    )
    vm2 = c.instances.get(project=P, zone=Z, instance="m1")
    assert dict(vm2.labels) == {"x": "y"} and vm2.label_fingerprint != vm.label_fingerprint
    with pytest.raises(exceptions.PreconditionFailed):  # stale fingerprint: 412 conditionNotMet
        c.instances.set_labels_unary(
            request=compute_v1.SetLabelsInstanceRequest(
                project=P, zone=Z, instance="m1", instances_set_labels_request_resource=req, request_id=rid()
            )
        )
    md = compute_v1.Metadata(
        fingerprint=vm.metadata.fingerprint,
        items=[compute_v1.Items(key="a", value="2"), compute_v1.Items(key="b", value="3")],
    )
    wait_op(
        c,
        c.instances.set_metadata_unary(
            request=compute_v1.SetMetadataInstanceRequest(
                project=P, zone=Z, instance="m1", metadata_resource=md, request_id=rid()
            )
        ),
    )
    vm3 = c.instances.get(project=P, zone=Z, instance="m1")
    assert {i.key: i.value for i in vm3.metadata.items} == {"a": "2", "b": "3"}
    assert vm3.metadata.fingerprint != vm.metadata.fingerprint
    with pytest.raises(exceptions.PreconditionFailed):
        c.instances.set_metadata_unary(
            request=compute_v1.SetMetadataInstanceRequest(
                project=P, zone=Z, instance="m1", metadata_resource=md, request_id=rid()
            )
        )


def test_error_shapes(c):
    create_vm(c, "m1")
    with pytest.raises(exceptions.NotFound):
        c.instances.delete_unary(
            request=compute_v1.DeleteInstanceRequest(project=P, zone=Z, instance="nope", request_id=rid())
        )
    with pytest.raises(exceptions.Conflict):
        c.instances.insert_unary(
            request=compute_v1.InsertInstanceRequest(
                project=P, zone=Z, instance_resource=instance("m1"), request_id=rid()
            )
        )
    for bad in (instance(""), instance("Bad_Name"), instance("-x"), instance("a" * 64)):
        with pytest.raises(exceptions.BadRequest):
            c.instances.insert_unary(
                request=compute_v1.InsertInstanceRequest(project=P, zone=Z, instance_resource=bad, request_id=rid())
            )
    bad_type = instance("m9")
    bad_type.machine_type = f"zones/{Z}/machineTypes/banana-1"
    with pytest.raises(exceptions.BadRequest):
        c.instances.insert_unary(
            request=compute_v1.InsertInstanceRequest(project=P, zone=Z, instance_resource=bad_type, request_id=rid())
        )
    with pytest.raises(exceptions.NotFound):
        c.instances.insert_unary(
            request=compute_v1.InsertInstanceRequest(
                project=P, zone="mars-north1-a", instance_resource=instance("m9"), request_id=rid()
            )
        )
    with pytest.raises(exceptions.BadRequest):
        c.instances.insert_unary(
            request=compute_v1.InsertInstanceRequest(
                project=P, zone=Z, instance_resource=instance("m9"), request_id="not-a-uuid"
            )
        )


def test_unknown_paths_answer_errors(bare_emulator):
    import httpx

    r = httpx.get(bare_emulator.url + "/compute/v1/projects/p/zones/us-central1-a/disks")
    assert r.status_code == 404 and r.json()["error"]["errors"][0]["reason"] == "notFound"
    r = httpx.post(bare_emulator.url + "/compute/v1/projects/p/zones/us-central1-a/instances/x/setTags", json={})
    assert r.status_code == 501 and r.json()["error"]["code"] == 501
    r = httpx.get(bare_emulator.url + "/nothing")
    assert r.status_code == 404


def test_request_id_dedup(c, bare_emulator):
    request_id = rid()
    first = c.instances.insert_unary(
        request=compute_v1.InsertInstanceRequest(
            project=P, zone=Z, instance_resource=instance("m1"), request_id=request_id
        )
    )
    again = c.instances.insert_unary(
        request=compute_v1.InsertInstanceRequest(
            project=P, zone=Z, instance_resource=instance("m1"), request_id=request_id
        )
    )
    assert again.name == first.name
    wait_op(c, first)
    # even after DONE, and even with another body, the same requestId changes nothing
    third = c.instances.insert_unary(
        request=compute_v1.InsertInstanceRequest(
            project=P, zone=Z, instance_resource=instance("m2"), request_id=request_id
        )
    )
    assert third.name == first.name
    assert [i.name for i in c.instances.list(project=P, zone=Z)] == ["m1"]
    outcomes = [e["outcome"] for e in bare_emulator.calls.entries("compute.instances.insert")]
    assert outcomes == ["ok", "deduplicated", "deduplicated"]
    # another scope (zone) is another requestId space, as GCE
    other = c.instances.insert_unary(
        request=compute_v1.InsertInstanceRequest(
            project=P,
            zone="us-central1-b",
            instance_resource=compute_v1.Instance(name="m1", machine_type="e2-small"),
            request_id=request_id,
        )
    )
    assert other.name != first.name
    # regional dedup
    r2 = rid()
    a1 = c.addresses.insert_unary(
        request=compute_v1.InsertAddressRequest(
            project=P, region=R, address_resource=compute_v1.Address(name="a1"), request_id=r2
        )
    )
    a2 = c.addresses.insert_unary(
        request=compute_v1.InsertAddressRequest(
            project=P, region=R, address_resource=compute_v1.Address(name="a1"), request_id=r2
        )
    )
    assert a1.name == a2.name and a1.region.endswith("/regions/us-central1")


def test_addresses_and_in_use(c):
    op = wait_op(
        c,
        c.addresses.insert_unary(
            request=compute_v1.InsertAddressRequest(
                project=P, region=R, address_resource=compute_v1.Address(name="static"), request_id=rid()
            )
        ),
    )
    assert not op.error.errors
    addr = c.addresses.get(project=P, region=R, address="static")
    assert addr.status == "RESERVED" and addr.address.startswith("127.30.") and not addr.users
    vm = create_vm(c, "m1", nat_ip=addr.address)
    assert vm.network_interfaces[0].access_configs[0].nat_i_p == addr.address
    addr = c.addresses.get(project=P, region=R, address="static")
    assert addr.status == "IN_USE" and list(addr.users) == [vm.self_link]
    with pytest.raises(exceptions.BadRequest) as info:
        c.addresses.delete_unary(
            request=compute_v1.DeleteAddressRequest(project=P, region=R, address="static", request_id=rid())
        )
    assert "resourceInUseByAnotherResource" in str(info.value.errors) or info.value.code == 400
    # a second VM can't take the same IP: the operation fails
    op = c.instances.insert_unary(
        request=compute_v1.InsertInstanceRequest(
            project=P, zone=Z, instance_resource=instance("m2", nat_ip=addr.address), request_id=rid()
        )
    )
    op = wait_op(c, op)
    assert op.error.errors[0].code == "IP_IN_USE_BY_ANOTHER_RESOURCE" and op.http_error_status_code == 409
    with pytest.raises(exceptions.NotFound):
        c.instances.get(project=P, zone=Z, instance="m2")
    # deleting the VM frees the address (RESERVED) and then it can be deleted
    wait_op(
        c,
        c.instances.delete_unary(
            request=compute_v1.DeleteInstanceRequest(project=P, zone=Z, instance="m1", request_id=rid())
        ),
    )
    assert c.addresses.get(project=P, region=R, address="static").status == "RESERVED"
    wait_op(
        c,
        c.addresses.delete_unary(
            request=compute_v1.DeleteAddressRequest(project=P, region=R, address="static", request_id=rid())
        ),
    )
    assert [a.name for a in c.addresses.list(project=P, region=R)] == []


def test_ip_promotion_sequence(c, bare_emulator):
    """The seed's 1 -> 2 move (docs/design.md): promote, drop access config, target pool, forwarding rule, new IP."""
    m1, m2 = create_vm(c, "m1"), create_vm(c, "m2")
    ip = m1.network_interfaces[0].access_configs[0].nat_i_p
    wait_op(
        c,
        c.addresses.insert_unary(
            request=compute_v1.InsertAddressRequest(
                project=P, region=R, address_resource=compute_v1.Address(name="endpoint", address=ip), request_id=rid()
            )
        ),
    )
    addr = c.addresses.get(project=P, region=R, address="endpoint")
    assert addr.address == ip and addr.status == "IN_USE" and list(addr.users) == [m1.self_link]
    # health check + pool
    wait_op(
        c,
        c.http_health_checks.insert_unary(
            project=P,
            http_health_check_resource={"name": "hc", "port": 8080, "requestPath": "/healthz"},
            request_id=rid(),
        ),
    )
    hc = c.http_health_checks.get(project=P, http_health_check="hc")
    assert hc["port"] == 8080 and hc["kind"] == "compute#httpHealthCheck"
    wait_op(
        c,
        c.target_pools.insert_unary(
            request=compute_v1.InsertTargetPoolRequest(
                project=P,
                region=R,
                target_pool_resource=compute_v1.TargetPool(
                    name="pool", instances=[m1.self_link], health_checks=[hc["selfLink"]]
                ),
                request_id=rid(),
            )
        ),
    )
    wait_op(
        c,
        c.target_pools.add_instance_unary(
            request=compute_v1.AddInstanceTargetPoolRequest(
                project=P,
                region=R,
                target_pool="pool",
                request_id=rid(),
                target_pools_add_instance_request_resource=compute_v1.TargetPoolsAddInstanceRequest(
                    instances=[compute_v1.InstanceReference(instance=m2.self_link)]
                ),
            )
        ),
    )
    pool = c.target_pools.get(project=P, region=R, target_pool="pool")
    assert list(pool.instances) == [m1.self_link, m2.self_link]
    # forwarding rule while m1 still uses the IP: fails, creates nothing
    rule = compute_v1.ForwardingRule(
        name="lb", I_p_address=ip, I_p_protocol="TCP", port_range="6443", target=pool.self_link
    )
    op = wait_op(
        c,
        c.forwarding_rules.insert_unary(
            request=compute_v1.InsertForwardingRuleRequest(
                project=P, region=R, forwarding_rule_resource=rule, request_id=rid()
            )
        ),
    )
    assert op.error.errors[0].code == "IP_IN_USE_BY_ANOTHER_RESOURCE" and op.http_error_status_code == 409
    with pytest.raises(exceptions.NotFound):
        c.forwarding_rules.get(project=P, region=R, forwarding_rule="lb")
    # drop m1's access config: RESERVED
    wait_op(
        c,
        c.instances.delete_access_config_unary(
            request=compute_v1.DeleteAccessConfigInstanceRequest(
                project=P,
                zone=Z,
                instance="m1",
                access_config="External NAT",
                network_interface="nic0",
                request_id=rid(),
            )
        ),
    )
    assert not c.instances.get(project=P, zone=Z, instance="m1").network_interfaces[0].access_configs
    addr = c.addresses.get(project=P, region=R, address="endpoint")
    assert addr.status == "RESERVED" and not addr.users
    # forwarding rule on the address now succeeds, and the runtime is told
    seen = {}
    bare_emulator.runtime.set_forwarding = lambda ip_, backends: seen.update(ip=ip_, vms=backends())
    op = wait_op(
        c,
        c.forwarding_rules.insert_unary(
            request=compute_v1.InsertForwardingRuleRequest(
                project=P, region=R, forwarding_rule_resource=rule, request_id=rid()
            )
        ),
    )
    assert not op.error.errors
    fr = c.forwarding_rules.get(project=P, region=R, forwarding_rule="lb")
    assert fr.I_p_address == ip and fr.target == pool.self_link
    assert seen["ip"] == ip and [vm.name for vm in seen["vms"]] == ["m1", "m2"]
    addr = c.addresses.get(project=P, region=R, address="endpoint")
    assert addr.status == "IN_USE" and list(addr.users) == [fr.self_link]
    # m1 gets a fresh ephemeral IP
    wait_op(
        c,
        c.instances.add_access_config_unary(
            request=compute_v1.AddAccessConfigInstanceRequest(
                project=P,
                zone=Z,
                instance="m1",
                network_interface="nic0",
                request_id=rid(),
                access_config_resource=compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT"),
            )
        ),
    )
    new_ip = c.instances.get(project=P, zone=Z, instance="m1").network_interfaces[0].access_configs[0].nat_i_p
    assert new_ip and new_ip != ip
    # getHealth: NullRuntime says unhealthy
    health = c.target_pools.get_health(
        project=P,
        region=R,
        target_pool="pool",
        instance_reference_resource=compute_v1.InstanceReference(instance=m2.self_link),
    )
    assert health.health_status[0].health_state == "UNHEALTHY"
    bare_emulator.runtime.healthy = lambda vm: True
    health = c.target_pools.get_health(
        project=P,
        region=R,
        target_pool="pool",
        instance_reference_resource=compute_v1.InstanceReference(instance=m2.self_link),
    )
    assert health.health_status[0].health_state == "HEALTHY" and health.health_status[0].ip_address == ip
    # in-use resources can't be deleted
    with pytest.raises(exceptions.BadRequest):
        c.target_pools.delete_unary(
            request=compute_v1.DeleteTargetPoolRequest(project=P, region=R, target_pool="pool", request_id=rid())
        )
    with pytest.raises(exceptions.BadRequest):
        c.http_health_checks.delete_unary(project=P, http_health_check="hc", request_id=rid())
    # 2 -> 1: delete the rule, give the address back to m2, remove m1 from the pool
    cleared = []
    bare_emulator.runtime.clear_forwarding = cleared.append
    wait_op(
        c,
        c.forwarding_rules.delete_unary(
            request=compute_v1.DeleteForwardingRuleRequest(project=P, region=R, forwarding_rule="lb", request_id=rid())
        ),
    )
    assert cleared == [ip]
    assert c.addresses.get(project=P, region=R, address="endpoint").status == "RESERVED"
    wait_op(
        c,
        c.instances.delete_access_config_unary(
            request=compute_v1.DeleteAccessConfigInstanceRequest(
                project=P,
                zone=Z,
                instance="m2",
                access_config="External NAT",
                network_interface="nic0",
                request_id=rid(),
            )
        ),
    )
    wait_op(
        c,
        c.instances.add_access_config_unary(
            request=compute_v1.AddAccessConfigInstanceRequest(
                project=P,
                zone=Z,
                instance="m2",
                network_interface="nic0",
                request_id=rid(),
                access_config_resource=compute_v1.AccessConfig(name="External NAT", nat_i_p=ip),
            )
        ),
    )
    assert c.addresses.get(project=P, region=R, address="endpoint").users == [m2.self_link]
    wait_op(
        c,
        c.target_pools.remove_instance_unary(
            request=compute_v1.RemoveInstanceTargetPoolRequest(
                project=P,
                region=R,
                target_pool="pool",
                request_id=rid(),
                target_pools_remove_instance_request_resource=compute_v1.TargetPoolsRemoveInstanceRequest(
                    instances=[compute_v1.InstanceReference(instance=m1.self_link)]
                ),
            )
        ),
    )
    assert list(c.target_pools.get(project=P, region=R, target_pool="pool").instances) == [m2.self_link]
    # a deleted member stays in the pool (as GCE) and reports UNHEALTHY
    wait_op(
        c,
        c.instances.delete_unary(
            request=compute_v1.DeleteInstanceRequest(project=P, zone=Z, instance="m2", request_id=rid())
        ),
    )
    pool = c.target_pools.get(project=P, region=R, target_pool="pool")
    assert list(pool.instances) == [m2.self_link]
    health = c.target_pools.get_health(
        project=P,
        region=R,
        target_pool="pool",
        instance_reference_resource=compute_v1.InstanceReference(instance=m2.self_link),
    )
    assert health.health_status[0].health_state == "UNHEALTHY"
    wait_op(
        c,
        c.target_pools.delete_unary(
            request=compute_v1.DeleteTargetPoolRequest(project=P, region=R, target_pool="pool", request_id=rid())
        ),
    )
    wait_op(c, c.http_health_checks.delete_unary(project=P, http_health_check="hc", request_id=rid()))
    with pytest.raises(exceptions.NotFound):
        c.http_health_checks.get(project=P, http_health_check="hc")


def test_firewalls(c):
    fw = compute_v1.Firewall(
        name="allow-etcd",
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["2379-2380"])],
        source_ranges=["127.0.0.0/8"],
        target_tags=["master"],
    )
    op = c.firewalls.insert_unary(
        request=compute_v1.InsertFirewallRequest(project=P, firewall_resource=fw, request_id=rid())
    )
    assert not op.zone and not op.region
    wait_op(c, op)
    got = c.firewalls.get(project=P, firewall="allow-etcd")
    assert got.allowed[0].ports == ["2379-2380"] and list(got.target_tags) == ["master"]
    assert [
        f.name
        for f in c.firewalls.list(request=compute_v1.ListFirewallsRequest(project=P, filter='name = "allow-etcd"'))
    ] == ["allow-etcd"]
    with pytest.raises(exceptions.Conflict):
        c.firewalls.insert_unary(
            request=compute_v1.InsertFirewallRequest(project=P, firewall_resource=fw, request_id=rid())
        )
    wait_op(
        c,
        c.firewalls.delete_unary(
            request=compute_v1.DeleteFirewallRequest(project=P, firewall="allow-etcd", request_id=rid())
        ),
    )
    with pytest.raises(exceptions.NotFound):
        c.firewalls.get(project=P, firewall="allow-etcd")


def test_health_checks_client_and_target_pool_refusal(c):
    hc = compute_v1.HealthCheck(
        name="modern", type_="HTTP", http_health_check=compute_v1.HTTPHealthCheck(port=8080, request_path="/healthz")
    )
    wait_op(
        c,
        c.health_checks.insert_unary(
            request=compute_v1.InsertHealthCheckRequest(project=P, health_check_resource=hc, request_id=rid())
        ),
    )
    got = c.health_checks.get(project=P, health_check="modern")
    assert got.http_health_check.port == 8080
    with pytest.raises(exceptions.BadRequest):  # target pools take legacy httpHealthChecks only (GCE)
        c.target_pools.insert_unary(
            request=compute_v1.InsertTargetPoolRequest(
                project=P,
                region=R,
                request_id=rid(),
                target_pool_resource=compute_v1.TargetPool(name="pool", health_checks=[got.self_link]),
            )
        )
    wait_op(
        c,
        c.health_checks.delete_unary(
            request=compute_v1.DeleteHealthCheckRequest(project=P, health_check="modern", request_id=rid())
        ),
    )
    with pytest.raises(exceptions.NotFound):
        c.health_checks.get(project=P, health_check="modern")
