"""The restore boot path of the startup script: an empty data dir filled from a sealed snapshot, served by
a real etcd (the script's other checks, and the fixtures used here, are tests/unit/test_startup_script.py)."""

from __future__ import annotations

import base64
import json
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from haplane.cloud import snapshots as snap
from haplane.node.spec import (
    RESTORE_KEY,
    SNAPSHOT_KEY_KEY,
    SNAPSHOT_KEY_SECRET,
    EtcdSpec,
    NodeSpec,
    RestoreSpec,
    peer_url,
)
from haplane.node.startup import (
    ETCD_DATA_DIR,
)
from haplane.processes import stop_group
from tests.unit import test_startup_script as unit
from tests.unit.test_startup_script import IP, _boot, needs_jq

# the unit half's module fixtures, used here too
script = unit.script
script_path = unit.script_path
node_spec_tls = unit.node_spec_tls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_and_read(etcd_bin: str, data_dir: Path, log: Path, prefix: str) -> dict[str, str]:
    """Start a real etcd on ``data_dir`` (plain HTTP on loopback) and read every key under ``prefix``."""
    client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    argv = [
        etcd_bin,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--logger",
        "zap",
        "--log-level",
        "error",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        key = base64.b64encode(prefix.encode()).decode()
        end = base64.b64encode(prefix[:-1].encode() + bytes([prefix.encode()[-1] + 1])).decode()
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                assert proc.poll() is None, f"etcd exited on the restored data dir: {log.read_text()[-800:]}"
                try:
                    r = http.post(f"{client}/v3/kv/range", json={"key": key, "range_end": end})
                    if r.status_code == 200:
                        return {
                            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
                            for kv in r.json().get("kvs", [])
                        }
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (
                    f"etcd on the restored data did not answer: {log.read_text()[-800:]}"
                )
                time.sleep(0.2)
    finally:
        stop_group(proc, grace=5)


@needs_jq
def test_restore_boot_fills_the_empty_data_dir_from_a_sealed_snapshot(
    script_path: Path, tmp_path: Path, node_spec_tls: dict[str, str], etcd_cluster_factory, etcd_bin: str
):
    """A real etcd's snapshot, sealed by haplane.cloud.snapshots, restored by the boot step with the real etcdutl;
    a real etcd then serves its keys. A snapshot whose sha256 is not the one asked for is refused."""
    source = etcd_cluster_factory(1, cluster="rs")
    client = source.client()
    want = {f"/registry/k{i}": f"v{i}" for i in range(20)}
    for k, v in want.items():
        client.put(k, v)
    client.snapshot(tmp_path / "plain.db")
    db = (tmp_path / "plain.db").read_bytes()
    meta = snap.describe(db, "rs", members=1)
    key = snap.new_key()
    sealed = tmp_path / f"{meta.snapshot_id}.snap"
    sealed.write_bytes(snap.seal(db, meta, key))

    etcd = EtcdSpec(name="rs-master-0", initial_cluster=f"rs-master-0={peer_url(IP)}", initial_cluster_token="rs-2")
    restore = RestoreSpec(url=f"file://{sealed}", snapshot_id=meta.snapshot_id, sha256=meta.sha256)
    metadata = NodeSpec(etcd=etcd, apiserver=None, tls=node_spec_tls, restore=restore, snapshot_key=key).to_metadata()
    assert RESTORE_KEY in metadata
    env = {"HAPLANE_ETCDUTL": snap.find_etcdutl(), "HAPLANE_PYTHON3": sys.executable}

    # a bad hash: refused loudly, before etcd is started, and nothing is written into the data dir
    bad = {
        **metadata,
        RESTORE_KEY: RestoreSpec(url=restore.url, snapshot_id=meta.snapshot_id, sha256="0" * 64).to_json(),
    }
    result = _boot(script_path, tmp_path / "bad", bad, env=env)
    assert result.returncode != 0
    assert f"snapshot {meta.snapshot_id}: bad hash: its sha256 is {meta.sha256}" in result.stderr, result.stderr
    data = tmp_path / "bad" / "root" / str(ETCD_DATA_DIR).lstrip("/")
    assert list(data.iterdir()) == []
    assert (
        not (tmp_path / "bad" / "root" / "systemctl.log").exists()
        or "etcd.service" not in (tmp_path / "bad" / "root" / "systemctl.log").read_text()
    )
    assert key not in result.stderr + result.stdout

    # the right snapshot: restored into the data dir, then etcd starts on it
    result = _boot(script_path, tmp_path / "good", metadata, env=env)
    assert result.returncode == 0, result.stderr
    assert key not in result.stderr + result.stdout
    assert f"restored etcd data of rs-master-0 from snapshot {meta.snapshot_id}" in result.stderr
    root = tmp_path / "good" / "root"
    data = root / str(ETCD_DATA_DIR).lstrip("/")
    assert (data / "member" / "snap" / "db").is_file()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert "restart --no-block etcd.service" in (root / "systemctl.log").read_text().splitlines()
    assert not any(p.name.endswith(".restoring") for p in data.parent.iterdir())

    # a later boot never restores over the data dir (a key written after the restore survives it)
    marker = data / "member" / "kept"
    marker.write_text("x")
    again = _boot(script_path, tmp_path / "good", metadata, env=env)
    assert again.returncode == 0, again.stderr
    assert marker.exists() and "restoring etcd data" not in again.stderr

    # a VM with a service account reads the key from Secret Manager: none in its metadata
    ref = "projects/p/secrets/rs-master-0-snapshot-key/versions/1"
    via_sm = NodeSpec(
        etcd=etcd, apiserver=None, tls=node_spec_tls, restore=restore, secret_refs={SNAPSHOT_KEY_SECRET: ref}
    ).to_metadata()
    assert SNAPSHOT_KEY_KEY not in via_sm and key not in json.dumps(via_sm)
    denied = _boot(script_path, tmp_path / "denied", via_sm, secrets={}, env=env)
    assert denied.returncode != 0 and f"cannot read {ref}" in denied.stderr, denied.stderr
    from_sm = _boot(script_path, tmp_path / "sm", via_sm, secrets={ref: key}, env=env)
    assert from_sm.returncode == 0, from_sm.stderr
    assert (tmp_path / "sm" / "root" / str(ETCD_DATA_DIR).lstrip("/") / "member" / "snap" / "db").is_file()

    marker.unlink()
    assert _serve_and_read(etcd_bin, data, tmp_path / "restored-etcd.log", "/registry/") == want
