"""Shared pytest configuration: fixtures live in tests/fixtures/, one module per service."""

import os

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
