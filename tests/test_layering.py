"""The shape of the code: a pure core that imports in a bare interpreter, and layers that point one way.

- The rules (model, plans, remediation, restore, quorum, topology, GCE timings) import with httpx, google,
  prefect, cryptography and pydantic made unimportable: they decide, they do no I/O.
- Nothing in flows/, tasks/, blocks/, deployments/ or the library (other than its command line)
  imports the emulator: production decisions do not depend on the test world.
- Nothing in haplane/ imports flows/ or tasks/, except haplane/cli.py (the entry point).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PURE = [
    "haplane.model",
    "haplane.gce_timings",
    "haplane.steps",
    "haplane.quorum",
    "haplane.topology",
    "haplane.plans",
    "haplane.remediation",
    "haplane.restore",
    "haplane.versions",
]
BLOCKED = ["httpx", "google", "prefect", "cryptography", "pydantic", "haplane.emulator"]

BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked: a pure module must not need it")
        return None
sys.meta_path.insert(0, Blocker())
import {module}
print("ok")
"""


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_without_io_libraries(module):
    code = BLOCKER.format(blocked=BLOCKED, module=module)
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_blocker_does_block():
    """The purity test can fail: a module that needs httpx is refused under the same blocker."""
    code = BLOCKER.format(blocked=BLOCKED, module="haplane.observe")
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0 and "is blocked" in done.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _py(*dirs: str) -> list[Path]:
    return [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in files
        for m in sorted(_imports(p))
        if any(m == f or m.startswith(f + ".") for f in forbidden)
    ]


def test_nothing_but_the_command_line_imports_the_emulator():
    files = [
        p
        for p in _py("flows", "tasks", "blocks", "deployments", "haplane")
        if "emulator" not in p.relative_to(ROOT).parts and p != ROOT / "haplane" / "cli.py"
    ]
    assert len(files) > 20
    assert _violations(files, ("haplane.emulator",)) == []


def test_the_library_does_not_import_flows_or_tasks():
    files = [p for p in _py("haplane") if p != ROOT / "haplane" / "cli.py"]
    assert _violations(files, ("flows", "tasks")) == []


def test_the_scan_sees_imports():
    """The scan can fail: the command line does import the emulator."""
    assert _violations([ROOT / "haplane" / "cli.py"], ("haplane.emulator",))


def test_tasks_blocks_and_the_library_do_not_import_the_workspace_setup():
    """deployments/ sets up a workspace (it may use tasks' names); tasks/, blocks/ and the library never
    import it: the per-cluster schedules and automations are removed by the flow (delete-cluster)."""
    files = [p for p in _py("tasks", "blocks", "haplane") if p != ROOT / "haplane" / "cli.py"]
    assert _violations(files, ("deployments",)) == []
    assert _violations([ROOT / "haplane" / "cli.py"], ("deployments",)), "the scan sees the command line's import"
