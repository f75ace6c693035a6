"""Benchmark of etcd snapshots and restore (RPO / RTO) on the GCE emulator (prints figures; not a test).

    .venv/bin/python bench/bench_snapshots.py [--keys 10000] [--value-bytes 1024] [--storage gcs|local]

Starts its own Prefect server and an in-process GCE emulator (latency profile "instant": the figures
are haplane's and etcd's own work, not GCE's VM boot time) whose VMs run real etcd with mutual TLS,
and, with --storage gcs (the default when gcp-storage-emulator is installed), a GCS API emulator
holding the snapshots in a prefect-gcp GcsBucket block. Then:

  1. create_cluster, 3 replicas; write --keys keys of --value-bytes bytes (batched transactions);
  2. the raw snapshot stream from the leader (/v3/maintenance/snapshot), and verify (etcd's sha256
     trailer, etcdutl snapshot status, a trial restore into a throw-away etcd), timed apart;
  3. snapshot_cluster: stream + verify + seal (AES-256-GCM) + store + prune, end to end;
  4. two of three VMs deleted; restore_cluster from that snapshot (RTO): until etcd answers on the
     restored replica, until the API server answers through the endpoint IP, and until the cluster
     is back at 3 replicas.

The cluster is deleted at the end; every process started is stopped even when a step fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from common import delete_clusters, prefect_server, print_seconds

from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.processes import stop_group
from haplane.testing.prefect import free_port

PROJECT = "haplane-bench"
REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]


class ApiWatch(threading.Thread):
    """Polls https://IP:6443/readyz (TLS verified against the cluster CA) until it answers 200."""

    def __init__(self, ip: str, ca_pem: str) -> None:
        super().__init__(daemon=True)
        self.url, self.ctx = f"https://{ip}:6443/readyz", ssl.create_default_context(cadata=ca_pem)
        self.started, self.answered_after, self._halt = time.monotonic(), None, threading.Event()
        self.was_down = False  # an answer counts only after the endpoint was seen not answering

    def run(self) -> None:
        with httpx.Client(verify=self.ctx, timeout=1.0) as http:
            while not self._halt.is_set() and self.answered_after is None:
                try:
                    ok = http.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok and self.was_down:
                    self.answered_after = time.monotonic() - self.started
                self.was_down = self.was_down or not ok
                time.sleep(0.1)

    def halt(self) -> None:
        self._halt.set()
        self.join(5)


def start_gcs(work: Path) -> subprocess.Popen | None:
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    port = free_port()
    log = open(work / "gcs.log", "ab")
    proc = subprocess.Popen(
        [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/storage/v1/b?project=x", timeout=1)
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_group(proc)
                raise RuntimeError(f"gcp-storage-emulator did not start; see {work / 'gcs.log'}") from None
            time.sleep(0.2)


def gcs_block(work: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from prefect_gcp import GcpCredentials
    from prefect_gcp.cloud_storage import GcsBucket

    storage.Client(credentials=AnonymousCredentials(), project=PROJECT).create_bucket("bench-snapshots")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    creds = GcpCredentials(
        project=PROJECT,
        service_account_info={
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "bench",
            "private_key": pem,
            "client_email": f"bench@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "http://127.0.0.1:9/token",
        },
    )
    GcsBucket(bucket="bench-snapshots", bucket_folder="etcd", gcp_credentials=creds).save("bench", overwrite=True)
    return "gcs-bucket/bench"


def run(keys: int, value_bytes: int, storage: str, work: Path) -> dict[str, float]:
    from blocks.cluster import ClusterSpec
    from flows.create_cluster import create_cluster
    from flows.restore_cluster import restore_cluster
    from flows.snapshot_cluster import snapshot_cluster
    from haplane.cloud import snapshots as snap
    from haplane.cloud.etcd import EtcdClient, EtcdTLS
    from haplane.cloud.gce import Gce, request_id
    from haplane.core.topology import LABEL_CLUSTER, ClusterNames
    from haplane.node.spec import client_url, find_etcd
    from tasks.pki import load_cas

    f: dict[str, float] = {}
    cluster = f"bench-dr-{uuid.uuid4().hex[:4]}"
    state = work / "emulator"
    emulator = Emulator(state_dir=state, runtime=ProcessRuntime(state)).start()
    os.environ["HAPLANE_GCE_ENDPOINT"], os.environ["HAPLANE_PROJECT"] = emulator.url, PROJECT
    os.environ["HAPLANE_GCE_TOKEN"] = emulator.workers_token
    gce = Gce(PROJECT, emulator.url)
    created = False
    try:
        rows = create_cluster(cluster=cluster, region=REGION, zones=ZONES, replicas=3)
        created = True
        spec_name = ClusterNames(cluster).spec_block
        spec = ClusterSpec.load(spec_name)
        spec.snapshot_storage = None if storage == "local" else storage
        spec.save(spec_name, overwrite=True)
        cas = load_cas(cluster)
        endpoint = rows[0]["endpoint IP"]

        def etcd() -> EtcdClient:
            vms = gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
            return EtcdClient(
                [client_url(v.internal_ip) for v in vms if v.status == "RUNNING"], tls=EtcdTLS.from_cas(cas), timeout=30
            )

        value = os.urandom(value_bytes // 2).hex().encode()[:value_bytes]
        start = time.monotonic()
        with etcd() as c:
            last = c.put_many((f"/bench/{i:06d}", value) for i in range(keys))
        f["write"] = time.monotonic() - start
        print(f"  wrote {keys} keys of {value_bytes} B in {f['write']:.1f} s (revision {last})", flush=True)

        db_path = work / "raw.db"
        start = time.monotonic()
        with etcd() as c:
            c.snapshot(db_path)
        f["stream"] = time.monotonic() - start
        db = db_path.read_bytes()
        f["db_mib"] = len(db) / 2**20
        start = time.monotonic()
        checked = snap.verify(db, find_etcd())
        f["verify"] = time.monotonic() - start
        assert checked.keys_served >= keys, checked
        print(f"  raw stream {f['stream']:.2f} s ({f['db_mib']:.1f} MiB), verify {f['verify']:.2f} s", flush=True)

        start = time.monotonic()
        taken = snapshot_cluster(cluster=cluster)
        f["snapshot"] = time.monotonic() - start
        print(f"  snapshot_cluster {f['snapshot']:.1f} s -> {taken['where']}", flush=True)

        vms = gce.list_instances(ZONES, labels={LABEL_CLUSTER: cluster})
        for vm in vms[:2]:
            gce.wait(gce.delete_instance(vm.zone, vm.name, rid=request_id(cluster, "bench-loss", vm.name)))
        watch = ApiWatch(endpoint, cas.ca.cert_pem)
        start = time.monotonic()
        watch.start()
        try:
            rows = restore_cluster(cluster=cluster, snapshot=taken["snapshot"])
        finally:
            f["restore"] = time.monotonic() - start
            watch.halt()
        f["api_back"] = watch.answered_after if watch.answered_after is not None else float("nan")
        with etcd() as c:
            assert c.get(f"/bench/{keys - 1:06d}") == value
            f["members"] = len([m for m in c.member_list() if not m.is_learner])
        print(
            f"  restore_cluster {f['restore']:.1f} s (API through the endpoint after {f['api_back']:.1f} s)", flush=True
        )
    finally:
        if created:
            delete_clusters([cluster])
        emulator.stop()
    return f


def report(f: dict[str, float], keys: int, value_bytes: int, storage: str) -> None:
    rows = [
        (f"write {keys} keys of {value_bytes} B (batches of 100)", f["write"]),
        (f"raw snapshot stream from the leader ({f['db_mib']:.1f} MiB)", f["stream"]),
        ("verify: sha256 trailer + etcdutl status + trial restore", f["verify"]),
        (f"snapshot_cluster flow, end to end ({storage})", f["snapshot"]),
        ("restore_cluster: API answers through the endpoint IP", f["api_back"]),
        (f"restore_cluster: back at {f['members']:.0f} replicas (RTO)", f["restore"]),
    ]
    print_seconds(
        f"haplane snapshot benchmark, {dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, emulator latency profile 'instant'",
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10000)
    parser.add_argument("--value-bytes", type=int, default=1024)
    have_gcs = (Path(sys.executable).parent / "gcp-storage-emulator").exists()
    parser.add_argument("--storage", choices=["gcs", "local"], default="gcs" if have_gcs else "local")
    parser.add_argument("--verbose", action="store_true", help="show the flows' logs")
    args = parser.parse_args(argv)

    with prefect_server("haplane-bench-snap-", args.verbose) as work:
        gcs = None
        try:
            storage = "local"
            if args.storage == "gcs":
                gcs = start_gcs(work)
                storage = gcs_block(work)
            figures = run(args.keys, args.value_bytes, storage, work)
        finally:
            if gcs is not None:
                stop_group(gcs)
    report(figures, args.keys, args.value_bytes, args.storage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
