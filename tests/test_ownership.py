"""Whose is a cluster name: create refuses a name taken anywhere, delete refuses a view it cannot trust,
and a finished delete leaves no spec, PKI, health schedule or lock behind."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from haplane.testing import REGION, ZONES


def _limit_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return True
        except ObjectNotFound:
            return False


def _health_schedule(cluster: str, create: bool = False) -> bool:
    """Whether the health-check deployment has the cluster's schedule (``create``: add one, inactive)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectNotFound

    from deployments.setup import HEALTH_DEPLOYMENT

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(HEALTH_DEPLOYMENT)
        except ObjectNotFound:
            flow_id = client.create_flow_from_name(HEALTH_DEPLOYMENT.split("/")[0])
            client.create_deployment(flow_id, HEALTH_DEPLOYMENT.split("/")[1], paused=True)
            deployment = client.read_deployment_by_name(HEALTH_DEPLOYMENT)
        if create:
            client.create_deployment_schedules(
                deployment.id,
                [(IntervalSchedule(interval=dt.timedelta(hours=1)), False)],
                parameters={"cluster": cluster},
                slug=f"health-{cluster}",
            )
        return any(s.slug == f"health-{cluster}" for s in client.read_deployment_schedules(deployment.id))


@pytest.mark.usefixtures("prefect_api")
def test_names_are_owned_and_delete_cleans_up(cloud):
    from blocks.cluster import ClusterSpec, GceConnection
    from flows.create_cluster import create_cluster
    from flows.delete_cluster import delete_cluster
    from tasks.cluster import ensure_lock, spec_where
    from tasks.health import health_lock
    from tasks.pki import load_cas
    from tests.fixtures.cluster import PROJECT

    def refused(call, match):
        cloud.admin.clear_calls()
        with pytest.raises(Exception, match=match):
            call()
        assert cloud.mutating_calls() == [], "a refused request changed GCE"

    cluster = f"own-{uuid.uuid4().hex[:5]}"
    create_cluster(cluster=cluster, region=REGION, zones=ZONES[:1], replicas=1)
    where = spec_where(cluster)
    assert (where.region, where.project) == (REGION, PROJECT) and len(where.uid) == 12

    # the same name in another region: refused, the spec is not overwritten
    refused(
        lambda: create_cluster(cluster=cluster, region="us-central1", zones=["us-central1-a"]),
        f"cluster '{cluster}' already exists in region 'europe-west1'",
    )
    assert spec_where(cluster).region == REGION

    # a name whose resources exist in GCE without a spec here (another workspace's cluster)
    other = f"own-{uuid.uuid4().hex[:5]}"
    cloud.gce.wait(
        cloud.gce.insert_firewall(
            f"{other}-etcd-peer",
            ports=["2380"],
            source_ranges=[],
            source_tags=[],
            target_tags=[],
            description="someone's",
            rid=str(uuid.uuid4()),
        )
    )
    refused(
        lambda: create_cluster(cluster=other, region=REGION, zones=ZONES[:1]),
        f"already has resources named for a cluster '{other}'.*firewall {other}-etcd-peer",
    )

    # delete through a connection to another project: refused, the CA stays
    GceConnection(project="someone-else", endpoint=cloud.emulator.url).save("elsewhere", overwrite=True)
    refused(
        lambda: delete_cluster(cluster=cluster, connection="elsewhere"),
        f"lives in project '{PROJECT}' but the connection points at project 'someone-else'",
    )
    assert load_cas(cluster) is not None and spec_where(cluster) is not None

    # a spec whose cluster GCE does not show: refused unless gone=True
    ghost = f"own-{uuid.uuid4().hex[:5]}"
    ClusterSpec(cluster=ghost, region=REGION, zones=ZONES, project=PROJECT).save(f"{ghost}-spec")
    refused(lambda: delete_cluster(cluster=ghost), f"shows nothing of cluster '{ghost}'.*gone=true")
    assert spec_where(ghost) is not None
    delete_cluster(cluster=ghost, gone=True)
    assert spec_where(ghost) is None

    # a real delete: everything in GCE, then the schedule, the locks and the blocks
    ensure_lock(cluster)
    with health_lock(cluster):
        pass
    assert _limit_exists(f"cluster-{cluster}") and _limit_exists(f"health-{cluster}")
    assert _health_schedule(cluster, create=True)
    delete_cluster(cluster=cluster)
    assert cloud.gce.list_instances(ZONES, labels={"haplane-cluster": cluster}) == []
    assert spec_where(cluster) is None and load_cas(cluster) is None
    assert not _health_schedule(cluster)
    assert not _limit_exists(f"cluster-{cluster}") and not _limit_exists(f"health-{cluster}")


@pytest.mark.usefixtures("prefect_api")
def test_look_alikes_are_reported_never_touched(cloud):
    """Everything the cluster creates carries its uid; a VM with its label but not its uid, and a pool
    with its pool's name, are left alone by observe and delete, and block a new cluster of that name."""
    from flows.create_cluster import create_cluster
    from flows.delete_cluster import delete_cluster
    from haplane.core.ownership import uid_in
    from haplane.core.topology import LABEL_CLUSTER, LABEL_UID, ClusterNames
    from tasks.cluster import observe_cluster, spec_where

    cluster = f"look-{uuid.uuid4().hex[:5]}"
    names = ClusterNames(cluster)
    create_cluster(cluster=cluster, region=REGION, zones=ZONES[:1], replicas=1, load_balancer="as-needed")
    uid = spec_where(cluster).uid
    gce = cloud.gce
    (vm,) = gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
    assert vm.labels[LABEL_UID] == uid
    for kind, name, region in (
        ("address", names.address, REGION),
        ("firewall", names.firewall_etcd_peer, None),
        ("firewall", names.firewall_apiserver, None),
    ):
        assert uid_in(gce.description_of(kind, name, region)) == uid, f"{kind} {name} is not stamped"

    # look-alikes: a VM with the cluster's label (no uid, or another one) and a pool under its name
    for zone, extra in ((ZONES[1], {}), (ZONES[2], {LABEL_UID: "0123456789ab"})):
        gce.wait(
            gce.insert_instance(
                zone,
                f"{cluster}-fake-{zone[-1]}",
                machine_type="e2-small",
                labels={LABEL_CLUSTER: cluster, **extra},
                metadata={},
                tags=[],
                external_ip=False,
                rid=str(uuid.uuid4()),
            )
        )
    gce.wait(gce.insert_health_check(f"{cluster}-other-hc", port=8080, path="/", rid=str(uuid.uuid4())))
    gce.wait(
        gce.insert_target_pool(
            REGION, names.target_pool, instances=[], health_check=f"{cluster}-other-hc", rid=str(uuid.uuid4())
        )
    )
    state = observe_cluster(cluster, REGION, None)
    assert [r.name for r in state.replicas] == [vm.name]
    assert state.look_alikes == (f"{cluster}-fake-c ({ZONES[1]})", f"{cluster}-fake-d ({ZONES[2]})")

    cloud.admin.clear_calls()
    delete_cluster(cluster=cluster)
    deleted = [c["path"] for c in cloud.admin.calls() if c["verb"] == "DELETE"]
    assert not [p for p in deleted if "fake" in p or names.target_pool in p], deleted
    left = sorted(i.name for i in gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster}))
    assert left == [f"{cluster}-fake-c", f"{cluster}-fake-d"]
    assert gce.get_target_pool(REGION, names.target_pool) is not None
    assert gce.get_address(REGION, names.address) is None and spec_where(cluster) is None

    # the look-alikes still hold the name: a new cluster of that name is refused
    cloud.admin.clear_calls()
    with pytest.raises(Exception, match="already has resources named for a cluster"):
        create_cluster(cluster=cluster, region=REGION, zones=ZONES[:1], replicas=1)
    assert cloud.mutating_calls() == []


@pytest.mark.usefixtures("prefect_api")
def test_delete_cluster_removes_every_schedule_and_automation_naming_the_cluster(shared_cloud):
    """Whatever deployment a schedule is on and whatever an automation is called: the health and snapshot
    schedules, a tagged automation, one whose trigger is the cluster's resource; another cluster's stay."""
    import datetime as dt

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger, Posture

    from blocks.cluster import ClusterSpec
    from deployments.clusters import HEALTH_DEPLOYMENT, SNAPSHOT_DEPLOYMENT
    from flows.delete_cluster import delete_cluster
    from tests.fixtures.cluster import PROJECT

    gone, other = f"own-{uuid.uuid4().hex[:5]}", f"own-{uuid.uuid4().hex[:5]}"
    ClusterSpec(cluster=gone, region=REGION, zones=ZONES, project=PROJECT).save(f"{gone}-spec")
    with get_client(sync_client=True) as client:
        for full in (HEALTH_DEPLOYMENT, SNAPSHOT_DEPLOYMENT):
            flow_name, name = full.split("/")
            try:
                deployment_id = client.read_deployment_by_name(full).id
            except Exception:  # noqa: BLE001 - not deployed in this session yet
                deployment_id = client.create_deployment(client.create_flow_from_name(flow_name), name, paused=True)
            for c in (gone, other):
                client.create_deployment_schedules(
                    deployment_id,
                    [(IntervalSchedule(interval=dt.timedelta(hours=1)), False)],
                    parameters={"cluster": c},
                    slug=f"{name.split('-')[0]}-{c}",
                )

    def automation(name: str, resource: str, tags: list[str]) -> str:
        Automation(
            name=name,
            tags=tags,
            actions=[DoNothing()],
            trigger=EventTrigger(
                expect={"haplane.replica.unhealthy"},
                match={"prefect.resource.id": resource},
                posture=Posture.Reactive,
                threshold=1,
                within=dt.timedelta(0),
            ),
        ).create()
        return name

    tagged = automation(f"haplane-{gone}-anything", "haplane.cluster.*", [f"cluster:{gone}"])
    by_resource = automation(f"whoever-{gone}", f"haplane.cluster.{gone}.replica.*", [])
    kept = automation(f"haplane-{other}-watch", f"haplane.cluster.{other}.*", [f"cluster:{other}"])

    delete_cluster(cluster=gone, gone=True)
    with get_client(sync_client=True) as client:
        left = {
            s.slug
            for full in (HEALTH_DEPLOYMENT, SNAPSHOT_DEPLOYMENT)
            for s in client.read_deployment_schedules(client.read_deployment_by_name(full).id)
        }
        names = {a.name for a in client.read_automations()}
    assert not {f"health-{gone}", f"snapshot-{gone}"} & left, left
    assert {f"health-{other}", f"snapshot-{other}"} <= left
    assert tagged not in names and by_resource not in names and kept in names
