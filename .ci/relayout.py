"""Rewrite references to haplane's flat modules to their subpackages (issue 19's layout).

For a branch that began before the move: merge main, then from the repository's root
    python3 .ci/relayout.py $(git ls-files)
rewrites what the branch still says the old way; a second run changes nothing. (``--move`` first did the
``git mv`` of the modules; they are moved on main.) Rewrites, in the given files:
  haplane.<mod>            -> haplane.<pkg>.<new>   (imports, dotted strings, -m, entry points, docs)
  haplane/<mod>.py         -> haplane/<pkg>/<new>.py
  from haplane import a, b -> one import line per new package
"""

import re
import subprocess
import sys
from pathlib import Path

MOVES = {
    # pure rules: import nothing but the standard library and each other
    "model": "core.model",
    "steps": "core.steps",
    "quorum": "core.quorum",
    "topology": "core.topology",
    "ownership": "core.ownership",
    "endpoint": "core.endpoint",
    "gce_timings": "core.gce_timings",
    "rotation": "core.rotation",
    "remediation": "core.remediation",
    "plans": "core.plans",
    "restore": "core.restore",
    "versions": "core.versions",
    "scrub": "core.scrub",
    # adapters: the services haplane calls and the key material they carry
    "gce": "cloud.gce",
    "etcd": "cloud.etcd",
    "secretstore": "cloud.secretstore",
    "snapshot_store": "cloud.snapshot_store",
    "snapshots": "cloud.snapshots",
    "pki": "cloud.pki",
    "serviceaccount": "cloud.serviceaccount",
    "observe": "cloud.observe",
    "locks": "cloud.locks",
    # what a VM runs
    "node": "node.spec",
    "restore_boot": "node.restore_boot",
    "startup": "node.startup",
}
NAMES = "|".join(sorted(MOVES, key=len, reverse=True))
# not preceded by a name, path or dot character (so /etc/haplane/pki stays), not followed by one
# the package node is also the old module's name: its modules, and the package's name quoted as a string
# (never the old module's way), are left alone, so a second run changes nothing
NODE = "spec|restore_boot|startup"
DOTTED = re.compile(rf"""(?<![\w/.-])haplane\.({NAMES})(?![\w])(?!\.(?:{NODE})\b| import (?:{NODE})\b|(?<=node)["'])""")
PATH = re.compile(rf"(?<![\w/.-])haplane/({NAMES})\.py\b")
FROM = re.compile(r"^(?P<indent>[ \t]*)from haplane import (?P<names>[^\n(#]+?)(?P<comment>[ \t]*#[^\n]*)?$", re.M)


def _from(m: re.Match) -> str:
    indent, comment = m["indent"], m["comment"] or ""
    groups: dict[str, list[str]] = {}
    for item in (s.strip() for s in m["names"].split(",")):
        name, _, alias = item.partition(" as ")
        name = name.strip()
        if name in MOVES:
            pkg, _, new = MOVES[name].rpartition(".")
            target = f"haplane.{pkg}"
            if new != name:
                alias = alias.strip() or name
            text = new + (f" as {alias.strip()}" if alias.strip() and alias.strip() != new else "")
        else:
            target, text = "haplane", item
        groups.setdefault(target, []).append(text)
    lines = [f"{indent}from {t} import {', '.join(ns)}" for t, ns in sorted(groups.items())]
    lines[0] += comment
    return "\n".join(lines)


def rewrite(text: str) -> str:
    text = FROM.sub(_from, text)
    text = DOTTED.sub(lambda m: f"haplane.{MOVES[m[1]]}", text)
    return PATH.sub(lambda m: f"haplane/{MOVES[m[1]].replace('.', '/')}.py", text)


def main(argv: list[str]) -> None:
    moved = bool(argv) and argv[0] == "--move"
    if moved:
        argv = argv[1:]
        for pkg in sorted({v.split(".")[0] for v in MOVES.values()}):
            Path("haplane", pkg).mkdir(exist_ok=True)
        for old, new in MOVES.items():
            subprocess.run(["git", "mv", f"haplane/{old}.py", f"haplane/{new.replace('.', '/')}.py"], check=True)
    if moved:
        argv = [*argv, *(f"haplane/{new.replace('.', '/')}.py" for new in MOVES.values())]
    for name in argv:
        path = Path(name)
        if not path.is_file() or path.resolve() == Path(__file__).resolve():
            continue
        try:
            old = path.read_text()
        except UnicodeDecodeError:
            continue
        new = rewrite(old)
        if new != old:
            path.write_text(new)
            print("rewrote", name)


if __name__ == "__main__":
    main(sys.argv[1:])
