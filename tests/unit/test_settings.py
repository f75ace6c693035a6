"""The ``HAPLANE_*`` settings: read when used (never at import), only through haplane.settings, all in the README.

Pure: no processes, no network.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from haplane import settings

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PACKAGES = ("haplane", "flows", "tasks", "blocks", "deployments")

# (function, variable, default when unset, a value and what the function returns for it)
CASES = [
    (settings.gce_endpoint, "HAPLANE_GCE_ENDPOINT", None, "http://127.0.0.1:8787", "http://127.0.0.1:8787"),
    (settings.project, "HAPLANE_PROJECT", None, "p-1", "p-1"),
    (settings.gce_token, "HAPLANE_GCE_TOKEN", None, "t0k3n", "t0k3n"),
    (
        settings.workers_account,
        "HAPLANE_WORKERS_ACCOUNT",
        None,
        "w@p-1.iam.gserviceaccount.com",
        "w@p-1.iam.gserviceaccount.com",
    ),
    (settings.gce_read_retry_s, "HAPLANE_GCE_READ_RETRY_S", 30.0, "2", 2.0),
    (settings.op_wait_s, "HAPLANE_OP_WAIT_S", 900.0, "30", 30.0),
    (settings.lb_wait_s, "HAPLANE_LB_WAIT_S", 3600.0, "7.5", 7.5),
    (settings.retry_delays_s, "HAPLANE_RETRY_DELAYS_S", None, "0.5, 2", [0.5, 2.0]),
    (settings.lock_lease_s, "HAPLANE_LOCK_LEASE_S", 120.0, "90", 90.0),
    (settings.health_lock_wait_s, "HAPLANE_HEALTH_LOCK_WAIT_S", 2.0, "0", 0.0),
    (settings.etcd_binary, "HAPLANE_ETCD", None, "/opt/etcd/etcd", "/opt/etcd/etcd"),
    (settings.etcdutl_binary, "HAPLANE_ETCDUTL", None, "/opt/etcd/etcdutl", "/opt/etcd/etcdutl"),
    (settings.snapshot_dir, "HAPLANE_SNAPSHOT_DIR", None, "/var/snaps", Path("/var/snaps")),
    (settings.watch_heartbeat_s, "HAPLANE_WATCH_HEARTBEAT_S", 60.0, "3", 3.0),
]

# (function, a value it refuses)
BAD = [
    (settings.gce_read_retry_s, "HAPLANE_GCE_READ_RETRY_S", "thirty"),
    (settings.gce_read_retry_s, "HAPLANE_GCE_READ_RETRY_S", "0"),
    (settings.op_wait_s, "HAPLANE_OP_WAIT_S", "-5"),
    (settings.op_wait_s, "HAPLANE_OP_WAIT_S", "nan"),
    (settings.lb_wait_s, "HAPLANE_LB_WAIT_S", "inf"),
    (settings.retry_delays_s, "HAPLANE_RETRY_DELAYS_S", "1,x"),
    (settings.retry_delays_s, "HAPLANE_RETRY_DELAYS_S", "1,-2"),
    (settings.lock_lease_s, "HAPLANE_LOCK_LEASE_S", "two minutes"),
    (settings.health_lock_wait_s, "HAPLANE_HEALTH_LOCK_WAIT_S", "-1"),
    (settings.watch_heartbeat_s, "HAPLANE_WATCH_HEARTBEAT_S", "0"),
]


def test_every_setting_has_a_case():
    assert sorted(name for _, name, *_ in CASES) == sorted(settings.NAMES)


@pytest.mark.parametrize(("read", "name", "default", "value", "expected"), CASES, ids=[c[1] for c in CASES])
def test_default_then_value_read_at_each_call(monkeypatch, read, name, default, value, expected):
    monkeypatch.delenv(name, raising=False)
    assert read() == default
    monkeypatch.setenv(name, "  ")  # blank is unset
    assert read() == default
    monkeypatch.setenv(name, value)  # set after haplane.settings was imported: read at the call
    assert read() == expected


@pytest.mark.parametrize(("read", "name", "bad"), BAD, ids=[f"{n}={b}" for _, n, b in BAD])
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, read, name, bad):
    monkeypatch.setenv(name, bad)
    with pytest.raises(ValueError, match=rf"^{name} must be .* got {re.escape(repr(bad))}"):
        read()


def test_lock_lease_is_at_least_prefects_minimum(monkeypatch):
    monkeypatch.setenv("HAPLANE_LOCK_LEASE_S", "5")
    assert settings.lock_lease_s() == 60.0


def _project_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _reads_environment(node: ast.AST) -> bool:
    """``os.environ.get(...)``, ``os.environ[...]`` (read), ``os.getenv(...)``, or a call of haplane.settings."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        target = node.func.value
        if isinstance(target, ast.Name) and target.id == "settings":
            return True
        if node.func.attr == "getenv" and isinstance(target, ast.Name) and target.id == "os":
            return True
        if node.func.attr == "get" and ast.unparse(target) == "os.environ":
            return True
    return (
        isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and ast.unparse(node.value) == "os.environ"
    )


def import_time_reads(source: str) -> list[int]:
    """Lines where a module reads the environment or a setting while it is imported (outside any function)."""
    found: list[int] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return  # runs when called, not at import (its default values are visited below)
        if _reads_environment(node):
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    tree = ast.parse(source)
    for node in ast.walk(tree):  # default values of functions are evaluated at import
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                visit(default)
    for node in tree.body:
        visit(node)
    return sorted(found)


def test_no_setting_is_read_at_import_time():
    offenders = {
        str(p.relative_to(ROOT)): lines for p in _project_modules() if (lines := import_time_reads(p.read_text()))
    }
    assert offenders == {}, "read the setting inside the function that uses it"


def test_the_import_time_check_sees_a_module_level_read():
    assert import_time_reads('import os\nLEASE = float(os.environ.get("HAPLANE_LOCK_LEASE_S", "120"))\n') == [2]
    assert import_time_reads("from haplane import settings\nWAIT = settings.health_lock_wait_s()\n") == [2]
    assert import_time_reads("def f(w=settings.op_wait_s()):\n    return w\n") == [1]
    assert import_time_reads("def f():\n    return settings.op_wait_s()\n") == []


def test_haplane_variables_are_read_only_in_haplane_settings():
    """The settings a user sets; the test harness (tests/, haplane/testing/) reads its own test-only ones."""
    pattern = re.compile(r"HAPLANE_[A-Z0-9_]+")
    offenders = []
    for path in _project_modules():
        if path == ROOT / "haplane" / "settings.py" or (ROOT / "haplane" / "testing") in path.parents:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                _reads_environment(node)
                and not (isinstance(node, ast.Call) and ast.unparse(node.func).startswith("settings."))
                and pattern.search(ast.unparse(node))
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], "add a function to haplane/settings.py and call it"


def test_the_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(HAPLANE_[A-Z0-9_]+)` \|", section, flags=re.MULTILINE))
    assert set(settings.NAMES) <= listed, f"missing from the README's Settings table: {set(settings.NAMES) - listed}"
