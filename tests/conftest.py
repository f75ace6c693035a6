"""Shared pytest configuration: fixtures live in tests/fixtures/, one module per service."""

import os

import pytest

# Prefect must not phone home (the machine is offline) and must not write to the user's ~/.prefect.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.etcd",
    "tests.fixtures.prefect",
    "tests.fixtures.cluster",
    "tests.fixtures.worker",
    "tests.fixtures.gcs",
    "tests.fixtures.postgres",
]


# Files whose tests share nothing but session fixtures (no module-scoped fixture, no order between them):
# pytest-xdist may run each of their tests on another test process, so that no one long file is the
# critical path of a run. Every other file's tests run together, in one process (``--dist loadfile``).
SPREAD = {
    "tests/test_checkpoints.py",
    "tests/test_endpoint_flows.py",
    "tests/test_fault_matrix.py",
    "tests/test_flows.py",
    "tests/test_health_lock.py",
    "tests/test_kill_matrix.py",
    "tests/test_ownership.py",
    "tests/test_refusals.py",
    "tests/test_restore.py",
    "tests/test_resume.py",
    "tests/test_rotation.py",
    "tests/test_secret_manager.py",
    "tests/test_secrets.py",
    "tests/test_service_account.py",
}


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile`` (pyproject's addopts), except that each test of a file in ``SPREAD`` is a unit
    of its own. (pytest-xdist's ``xdist_group`` marks cannot do it: under pytest 9 they are ignored.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    missing = sorted(p for p in SPREAD if not (config.rootpath / p).is_file())
    if missing:
        raise pytest.UsageError(f"tests/conftest.py's SPREAD names files that do not exist: {missing}")

    class SpreadFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path in SPREAD else path

    return SpreadFileScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests first, the unit tier's many short ones last, where they fill the test processes
    that finish early (pyproject's ``--no-loadscope-reorder`` keeps this order). A stable sort: each
    file's tests stay together, in their order."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/unit/"))
