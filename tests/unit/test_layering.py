"""The shape of the code: a pure core that imports in a bare interpreter, and layers that point one way.

- The rules (every module of haplane/core/: model, plans, remediation, restore, quorum, topology, GCE
  timings ...) import with httpx, google, prefect, cryptography and pydantic made unimportable: they decide,
  they do no I/O. Nothing in haplane/core/ imports the adapters (haplane/cloud/) or the VM's side
  (haplane/node/), not even for a type.
- Nothing in flows/, tasks/, blocks/, deployments/ or the library (other than its command line and
  haplane/testing/, the harness of tests and benchmarks) imports the emulator: production decisions do not
  depend on the test world.
- Nothing in haplane/ imports flows/ or tasks/, except haplane/cli.py (the entry point).
- The project's own modules import one another without a circle (every import counts, also one inside a
  function), and tasks/ never reaches up into deployments/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# every module of haplane/core/ (a new one is checked without being listed)
PURE = sorted(f"haplane.core.{p.stem}" for p in (ROOT / "haplane" / "core").glob("*.py") if p.stem != "__init__")
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


def test_the_core_is_what_the_purity_test_covers():
    assert len(PURE) > 10 and "haplane.core.plans" in PURE


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
    code = BLOCKER.format(blocked=BLOCKED, module="haplane.cloud.observe")
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
    # haplane/testing/ is the harness that tests/ and bench/ share: it may use the emulator
    files = [
        p
        for p in _py("flows", "tasks", "blocks", "deployments", "haplane")
        if not {"emulator", "testing"} & set(p.relative_to(ROOT).parts) and p != ROOT / "haplane" / "cli.py"
    ]
    assert len(files) > 20
    assert _violations(files, ("haplane.emulator",)) == []


def test_the_core_imports_neither_the_adapters_nor_the_node():
    """haplane/core/ decides on observed state; the adapters (haplane/cloud/) and what a VM runs
    (haplane/node/) sit above it and import it, never the other way (an import for type checking counts)."""
    files = _py("haplane/core")
    assert len(files) > 10
    assert _violations(files, ("haplane.cloud", "haplane.node")) == []


def test_the_core_scan_sees_imports():
    """The scan above can fail: the adapters' observation imports the core."""
    assert _violations([ROOT / "haplane" / "cloud" / "observe.py"], ("haplane.core",))


def test_the_sealed_snapshot_format_stands_alone():
    """haplane/node/sealed.py runs on a VM as it is (the startup script embeds its source): it imports
    the standard library and cryptography only, nothing of haplane (also not inside a function)."""
    imported = _imports(ROOT / "haplane" / "node" / "sealed.py")
    assert "cryptography.hazmat.primitives.ciphers.aead" in imported
    assert {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names | {"cryptography"}} == set()


def test_the_library_does_not_import_flows_or_tasks():
    files = [p for p in _py("haplane") if p != ROOT / "haplane" / "cli.py"]
    assert _violations(files, ("flows", "tasks")) == []


def test_the_scan_sees_imports():
    """The scan can fail: the command line does import the emulator."""
    assert _violations([ROOT / "haplane" / "cli.py"], ("haplane.emulator",))


def test_tasks_blocks_and_the_library_do_not_import_the_workspace_setup():
    """deployments/ sets up a workspace (it may use tasks' names); tasks/, blocks/ and the library never
    import it (also not inside a function): the per-cluster schedules and automations are removed by the
    flow (delete-cluster)."""
    files = [p for p in _py("tasks", "blocks", "haplane") if p != ROOT / "haplane" / "cli.py"]
    assert _violations(files, ("deployments",)) == []
    assert _violations([ROOT / "haplane" / "cli.py"], ("deployments",)), "the scan sees the command line's import"


PACKAGES = ("haplane", "flows", "tasks", "blocks", "deployments")


def _modules(root: Path) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project's modules it imports, at module level or inside a function.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``.
    """
    modules = _modules(root)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        deps: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                deps |= {known(f"{base}.{a.name}") for a in node.names}
        graph[module] = {d for d in deps if d is not None and d != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _described(found: list[list[str]], graph: dict[str, set[str]]) -> list[str]:
    return [" / ".join(f"{m} -> {sorted(d for d in graph[m] if d in c)}" for m in c) for c in found]


def test_the_circle_finder_finds_circles():
    """The circle test can fail: a two-module circle, a three-module one and a lazy import are found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "f"}, "f": set()}
    assert circles(graph) == [["a", "b"], ["c", "d", "e"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_sees_lazy_and_relative_imports(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "one.py").write_text("def f():\n    from tasks.two import g\n")
    (tmp_path / "tasks" / "two.py").write_text("from . import one\nfrom tasks import one as again\n")
    graph = import_graph(tmp_path)
    assert graph["tasks.one"] == {"tasks.two"} and graph["tasks.two"] == {"tasks.one"}
    assert circles(graph) == [["tasks.one", "tasks.two"]]


def test_the_projects_modules_import_one_another_without_a_circle():
    graph = import_graph()
    assert len(graph) > 50
    assert circles(graph) == [], _described(circles(graph), graph)


def test_the_executor_names_no_step_kind():
    """tasks/execute.py is generic: what a kind does lives in its module of tasks/kinds/, not in the executor
    (no ``StepKind`` at all, no kind's value as a string)."""
    from haplane.core.steps import StepKind

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
    from haplane.core.steps import StepKind
    from tasks.kinds import handler_modules

    modules = handler_modules()
    homes: dict[StepKind, list[str]] = {k: [] for k in StepKind}
    for module, kinds in modules.items():
        assert kinds, f"tasks/kinds/{module}.py handles no step kind"
        for k in kinds:
            homes[k.kind].append(module)
    assert {k.value: m for k, m in homes.items() if len(m) != 1} == {}
