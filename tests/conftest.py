"""Shared pytest configuration: fixtures live in tests/fixtures/, one module per service."""

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.etcd",
]
