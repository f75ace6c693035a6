"""What a VM runs in place of etcd when its metadata carries ``haplane-etcd-restore``.

``python -m haplane.node.restore_boot --restore FILE --data-dir D --name N --peer-url P --token T -- ETCD ARGV...``

On the first start (no ``D/member``): fetch the sealed snapshot from the spec's URL, open it with the
key in FILE (JSON: url, snapshot_id, sha256, key; 0600), check it is the snapshot the flow chose, and
``etcdutl snapshot restore`` it into D (a new one-member cluster with a new token and member id).
Then, and on every later start, exec etcd. A restore that fails exits non-zero before etcd starts:
the supervisor (systemd on GCE, the emulator's) retries it, and etcd never starts on an empty dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from haplane.cloud.snapshot_store import fetch_url
from haplane.cloud.snapshots import SnapshotInvalid, restore_data_dir, unseal


def restore_once(spec_file: Path, data_dir: Path, name: str, peer_url: str, token: str) -> bool:
    """Restore into ``data_dir`` unless it already holds a member; returns whether it restored."""
    if (data_dir / "member").is_dir():
        return False
    spec = json.loads(spec_file.read_text())
    if not spec.get("key"):
        raise SnapshotInvalid(
            f"no key to open snapshot {spec['snapshot_id']} yet (haplane-snapshot-key in the "
            "metadata, or the snapshot-key secret read as the VM's service account)"
        )
    meta, db = unseal(fetch_url(spec["url"]), spec["key"])
    if meta.sha256 != spec["sha256"] or meta.snapshot_id != spec["snapshot_id"]:
        raise SnapshotInvalid(f"{spec['url']} holds snapshot {meta.snapshot_id}, not {spec['snapshot_id']}")
    staging = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="haplane-restore-") as tmp:
        db_path = Path(tmp) / "snapshot.db"
        db_path.write_bytes(db)
        restore_data_dir(db_path, staging, name, peer_url, token)
    shutil.rmtree(data_dir, ignore_errors=True)
    staging.replace(data_dir)
    print(
        f"haplane: restored etcd data of {name} from snapshot {meta.snapshot_id} (revision {meta.revision})",
        file=sys.stderr,
        flush=True,
    )
    return True


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: restore_boot --restore FILE --data-dir D --name N --peer-url P --token T -- etcd ...")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="haplane.node.restore_boot")
    for opt in ("--restore", "--data-dir", "--name", "--peer-url", "--token"):
        p.add_argument(opt, required=True)
    args = p.parse_args(argv[:split])
    etcd = argv[split + 1 :]
    restore_once(Path(args.restore), Path(args.data_dir), args.name, args.peer_url, args.token)
    os.execv(etcd[0], etcd)


if __name__ == "__main__":
    main()
