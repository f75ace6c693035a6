"""``haplane unlock``'s rule: a lock is free to take back only from a holder whose run has ended, told
apart by what can be seen of it (its flow run's state, whether its process runs, on which host).

The command itself, on real Prefect locks: tests/test_unlock.py.
"""

from __future__ import annotations

import socket

import pytest

from haplane.cloud.locks import Holder, holder_ended

HERE = socket.gethostname()


def _holder(**kw) -> Holder:
    base = dict(flow_run="3f1c", run_name="add-replica-run", host=HERE, pid=4242, started="77", since="2026-12-01")
    return Holder(**(base | kw))


@pytest.mark.parametrize(
    ("holder", "state", "alive", "ended", "words"),
    [
        (_holder(), "COMPLETED", True, True, "has ended (COMPLETED)"),
        (_holder(), "CRASHED", None, True, "has ended (CRASHED)"),
        (_holder(), "RUNNING", False, True, "is gone: that process no longer runs (its flow run still shows RUNNING"),
        (_holder(), "RUNNING", True, False, "whose process is running"),
        (_holder(host="worker-2"), "RUNNING", None, False, "only on its own host, so run this on worker-2"),
        (_holder(flow_run=None, run_name=None), None, True, False, "a process outside any flow run"),
        (None, None, None, False, "nothing says who holds it"),
    ],
)
def test_a_lock_is_free_to_take_back_only_from_a_holder_that_has_ended(holder, state, alive, ended, words):
    got, why = holder_ended(holder, state, alive)
    assert got is ended and words in why, why
