"""Re-extract the golden fixtures of this directory from Config Connector's recordings of real GCE.

GoogleCloudPlatform/k8s-config-connector keeps ``_http.log`` files of real Compute Engine
exchanges (ids, names, timestamps and IPs normalised) under
``pkg/test/resourcefixture/testdata/basic/compute/``. Each fixture here holds a few exchanges of
one file, picked by their position in it, with the file and the commit named in ``source``::

    python tests/golden/extract.py /path/to/k8s-config-connector.git  [commit]

(the git directory of a clone; nothing is fetched from the network).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = "GoogleCloudPlatform/k8s-config-connector"
COMMIT = "cdb85ecf17085561b9f4abc75a95107cb01446d9"
BASE = "pkg/test/resourcefixture/testdata/basic/compute/v1beta1/"

# fixture -> (recording, [(step name, index of the exchange in the recording)])
PICKS: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "instances": (
        "computeinstance/computeinstancebasicexample/_http.log",
        [
            ("get-missing", 26),
            ("insert", 27),
            ("insert-done", 28),
            ("get-running", 29),
            ("stop", 30),
            ("stop-done", 31),
            ("get-terminated", 32),
            ("set-metadata", 37),
            ("set-labels", 41),
            ("start", 43),
            ("start-done", 44),
            ("delete", 46),
            ("delete-done", 47),
        ],
    ),
    "addresses": (
        "computeaddress/computeaddressipcollection/_http.log",
        [("get-missing", 1), ("insert", 2), ("insert-done", 3), ("get-reserved", 4), ("delete", 5), ("delete-done", 6)],
    ),
    "forwarding_rules": (
        "computeforwardingrule/regionalcomputeforwardingrule-direct/_http.log",
        [
            ("get-missing", 13),
            ("insert", 14),
            ("insert-done", 15),
            ("get", 16),
            ("set-target", 20),
            ("delete", 23),
            ("delete-done", 24),
        ],
    ),
    "firewalls": (
        "computefirewall/computefirewall/_http.log",
        [("get-missing", 1), ("insert", 2), ("insert-done", 3), ("get", 4), ("delete", 8), ("delete-done", 9)],
    ),
    "http_health_checks": (
        "computebackendservice/globalcomputebackendservice/_http.log",
        [("get-missing", 17), ("insert", 18), ("insert-done", 19), ("get", 20), ("delete", 31), ("delete-done", 32)],
    ),
    "health_checks": (
        "computehealthcheck/globalcomputehealthcheck/_http.log",
        [("get-missing", 0), ("insert", 1), ("insert-done", 2), ("get", 3), ("delete", 7), ("delete-done", 8)],
    ),
    "operation_error": ("computerouternat/computerouternatprivate/_http.log", [("done-with-error", 59)]),
    "firewalls_default_source": (
        "computefirewall/computefirewall/_http.log",
        [("insert", 2), ("insert-done", 3), ("get", 4)],
    ),
}
# A fixture taken from another commit than COMMIT: the firewall recording of 2026-06-13 ("E2E: Record and
# update golden files") shows GCE's answer to a firewall inserted without a source (``sourceRanges:
# ["0.0.0.0/0"]``); the file was recorded again on 2026-06-25, and that GET shows no sourceRanges.
COMMITS: dict[str, str] = {"firewalls_default_source": "1e63b160c84c94ffaf519f29f5215e9817798187"}


def exchanges(git_dir: str, commit: str, path: str) -> list[dict]:
    text = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    out = []
    for block in re.split(r"\n---\n", text):
        block = block.strip("\n")
        m = re.match(r"^(GET|POST|PUT|PATCH|DELETE) (\S+)\n", block)
        if not m:
            continue
        rest = block[m.end() :]
        status = re.search(r"^(\d{3}) [^\n]*$", rest, re.M)
        if not status:
            continue

        def body(part: str):
            i = part.find("\n\n")
            raw = part[i + 2 :].strip() if i >= 0 else ""
            return json.loads(raw) if raw else None

        out.append(
            {
                "method": m.group(1),
                "url": m.group(2),
                "request": body(rest[: status.start()]),
                "status": int(status.group(1)),
                "response": body(rest[status.end() :]),
            }
        )
    return out


def main(git_dir: str, commit: str = COMMIT) -> None:
    here = Path(__file__).parent
    for name, (recording, picks) in PICKS.items():
        at = COMMITS.get(name, commit)
        found = exchanges(git_dir, at, BASE + recording)
        steps = []
        for step, index in picks:
            e = found[index]
            path = re.sub(r"^https://compute\.googleapis\.com/compute/v1/", "", e["url"]).split("?")[0]
            steps.append(
                {
                    "step": step,
                    "method": e["method"],
                    "path": path,
                    "status": e["status"],
                    **({"request": e["request"]} if e["request"] is not None else {}),
                    "response": e["response"],
                }
            )
        fixture = {
            "source": {
                "repository": REPOSITORY,
                "commit": at,
                "path": BASE + recording,
                "exchanges": [i for _, i in picks],
            },
            "steps": steps,
        }
        (here / f"{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"{name}.json: {len(steps)} exchanges from {recording}")


if __name__ == "__main__":
    main(*sys.argv[1:])
