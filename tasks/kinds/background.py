"""await: wait for a GCE step submitted earlier with ``background=True`` (the forwarding rule, whose ~20
minutes on GCE run while the VMs are made); the executor keeps such steps in ``Run.pending``."""

from __future__ import annotations

from haplane.core.steps import StepKind
from tasks.kinds import Kind
from tasks.operations import finish

KINDS = (Kind(StepKind.AWAIT, act=lambda run, s, a: finish(run.change, run.pending.pop(a["step"]), s.id)),)
