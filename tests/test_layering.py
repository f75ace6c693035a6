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


def test_the_executor_names_no_step_kind():
    """tasks/execute.py is generic: what a kind does lives in its module of tasks/kinds/, not in the executor
    (no ``StepKind`` at all, no kind's value as a string)."""
    from haplane.steps import StepKind

    source = (ROOT / "tasks" / "execute.py").read_text()
    tree = ast.parse(source)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert "StepKind" not in names and "StepKind" not in _imported_names(tree)
    assert not names & {k.name for k in StepKind}, "the executor names a step kind"
    assert not strings & {k.value for k in StepKind}, "the executor names a step kind"


def _imported_names(tree: ast.AST) -> set[str]:
    return {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


def test_the_executor_check_sees_a_kind():
    """The check above can fail: the module that handles the VM kinds names them."""
    tree = ast.parse((ROOT / "tasks" / "kinds" / "vm.py").read_text())
    assert "StepKind" in _imported_names(tree)


def test_every_step_kind_has_exactly_one_handler_module():
    from haplane.steps import StepKind
    from tasks.kinds import handler_modules

    modules = handler_modules()
    homes: dict[StepKind, list[str]] = {k: [] for k in StepKind}
    for module, kinds in modules.items():
        assert kinds, f"tasks/kinds/{module}.py handles no step kind"
        for k in kinds:
            homes[k.kind].append(module)
    assert {k.value: m for k, m in homes.items() if len(m) != 1} == {}


def test_the_step_kinds_and_the_executor_are_in_no_import_circle():
    """Module-level imports among the project's own modules: nothing that tasks.kinds or tasks.execute
    reaches imports them back (the registry finds the kind modules at run time, not by import)."""
    own = ("haplane", "tasks", "flows", "blocks", "deployments")
    graph: dict[str, set[str]] = {}
    for p in _py(*own):
        rel = p.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        tree = ast.parse(p.read_text(), filename=str(p))
        found: set[str] = set()
        for node in tree.body:  # module level: what importing the module imports
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[module] = {m for m in found if m.split(".")[0] in own}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for n in graph.get(m, ()):
                if n in graph and n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    kinds = [m for m in graph if m == "tasks.kinds" or m.startswith("tasks.kinds.")]
    assert len(kinds) > 10 and "tasks.kinds" in reach("tasks.kinds.vm"), "the scan sees the imports"
    assert [m for m in [*kinds, "tasks.execute"] if m in reach(m)] == []
