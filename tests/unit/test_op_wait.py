"""The operation-wait and retry settings (waits against the emulator are tests/test_op_wait.py)."""

from __future__ import annotations

import pytest

from tasks.operations import wait_bound
from tasks.results import retry_delays


def test_wait_and_retry_settings(monkeypatch):
    monkeypatch.delenv("HAPLANE_OP_WAIT_S", raising=False)
    monkeypatch.delenv("HAPLANE_LB_WAIT_S", raising=False)
    assert wait_bound() == ("HAPLANE_OP_WAIT_S", 900.0)
    assert wait_bound(load_balancer=True) == ("HAPLANE_LB_WAIT_S", 3600.0)
    monkeypatch.setenv("HAPLANE_OP_WAIT_S", "30")
    assert wait_bound() == ("HAPLANE_OP_WAIT_S", 30.0)
    for bad in ("0", "-5", "ten", "nan"):
        monkeypatch.setenv("HAPLANE_OP_WAIT_S", bad)
        with pytest.raises(ValueError, match="HAPLANE_OP_WAIT_S must be a positive number of seconds"):
            wait_bound()
    monkeypatch.delenv("HAPLANE_RETRY_DELAYS_S", raising=False)
    assert retry_delays([1, 3, 10]) == [1, 3, 10]
    monkeypatch.setenv("HAPLANE_RETRY_DELAYS_S", "0.5, 2")
    assert retry_delays([1, 3, 10]) == [0.5, 2.0]
    monkeypatch.setenv("HAPLANE_RETRY_DELAYS_S", "1,x")
    with pytest.raises(ValueError, match="HAPLANE_RETRY_DELAYS_S must be seconds"):
        retry_delays([1])
