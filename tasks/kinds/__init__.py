"""Step kinds: one module per resource or action, each declaring the kinds of plan step it runs.

A module of this package (``firewall.py``, ``vm.py``, ``etcd_member.py`` ...) holds everything the
executor (:mod:`tasks.execute`) needs for the :class:`haplane.core.steps.StepKind` members it handles, as a
module-level ``KINDS`` tuple of :class:`Kind`:

- how a step runs: ``submit`` (a GCE step: the checkpointed submit task and its arguments, which
  :func:`tasks.operations.apply` submits and waits for) or ``act`` (a local action: etcd, blocks, Secret
  Manager, a wait), never both;
- what it produces for later steps (``produced``; the names are :data:`haplane.core.steps.OUTPUTS`);
- what happens around it (``before``/``after``: the endpoint's downtime clock, warnings).

:func:`registry` collects them (every module not starting with ``_``); each StepKind has exactly one
handler, so the executor names no kind. To add a kind: a member of ``StepKind``, the plan function that
emits it (``haplane/core/plans.py``), and one module here (or a ``Kind`` in the module of its resource).
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from prefect import get_run_logger

from blocks.cluster import ClusterSpec
from haplane.core.plans import Plan
from haplane.core.steps import OUTPUTS, PlanStep, StepKind
from haplane.core.topology import ClusterNames
from tasks.operations import Started, Step
from tasks.steps import Change


@dataclass
class Run:
    """One execution of a plan: the change, the cluster's spec, and what its steps produced."""

    change: Change
    spec: ClusterSpec
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    down_since: float | None = None  # the endpoint stopped answering (an IP move is under way)
    pending: dict[str, Started] = field(default_factory=dict)  # steps submitted with background=True
    started: float = field(default_factory=time.monotonic)

    @property
    def names(self) -> ClusterNames:
        return ClusterNames(self.change.cluster)

    def endpoint_down(self) -> None:
        """A step that takes the endpoint off the air starts the downtime clock (once)."""
        if self.down_since is None:
            self.down_since = time.monotonic()

    def endpoint_back(self, ip: str) -> None:
        """A step that makes the endpoint answer again stops the clock: ``endpoint_downtime_s``."""
        if self.down_since is None:
            return
        downtime = time.monotonic() - self.down_since
        self.figures["endpoint_downtime_s"] = downtime
        self.down_since = None
        get_run_logger().info("endpoint %s answers again; it was down %.1f s", ip, downtime)


@dataclass(frozen=True)
class SubPlan:
    """What a step that is a change of its own (an upgrade's replica) returns: the executor runs it."""

    run: Run
    plan: Plan


Args = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """How the executor runs the steps of one kind (see the module doc)."""

    kind: StepKind
    submit: Callable[[Run, PlanStep, Args], Step] | None = None  # a GCE step
    act: Callable[[Run, PlanStep, Args], dict[str, Any] | SubPlan | None] | None = None  # a local action
    produced: Callable[[Run, PlanStep, Args], dict[str, Any]] | None = None  # after a GCE step, for later Refs
    before: Callable[[Run, PlanStep, Args], None] | None = None
    after: Callable[[Run, PlanStep, Args], None] | None = None

    def __post_init__(self) -> None:
        if (self.submit is None) == (self.act is None):
            raise TypeError(f"step kind {self.kind}: give exactly one of submit (GCE) or act (local)")


def gce(
    submit: Callable[..., Any],
    args: Callable[[Run, Args], tuple] = lambda run, a: (),
    kwargs: Callable[[Run, Args], dict[str, Any]] = lambda run, a: {},
    load_balancer: bool = False,
) -> Callable[[Run, PlanStep, Args], Step]:
    """A GCE step's ``submit``: the submit task called with the step's id, ``args`` and ``kwargs``
    (``load_balancer``: its wait is reported as the cluster's load-balancer progress)."""

    def step(run: Run, s: PlanStep, a: Args) -> Step:
        progress = f"{run.change.cluster}-load-balancer" if load_balancer else None
        return Step(submit, s.id, s.text, args(run, a), kwargs(run, a), progress_key=progress)

    return step


def handler_modules() -> dict[str, tuple[Kind, ...]]:
    """Each module of this package (not ``_``-prefixed) and the kinds it declares."""
    out: dict[str, tuple[Kind, ...]] = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            out[info.name] = tuple(importlib.import_module(f"{__name__}.{info.name}").KINDS)
    return out


@cache
def registry() -> dict[StepKind, Kind]:
    """Every step kind -> its handler; a kind handled twice, or not at all, is a bug caught here."""
    found: dict[StepKind, tuple[str, Kind]] = {}
    for module, kinds in handler_modules().items():
        for k in kinds:
            if k.kind in found:
                raise TypeError(f"step kind {k.kind} is handled by {found[k.kind][0]} and {module}")
            if k.produced is not None and k.submit is None:
                raise TypeError(f"step kind {k.kind}: produced is for GCE steps (a local act returns its outputs)")
            found[k.kind] = (module, k)
    missing = [k.value for k in StepKind if k not in found]
    if missing:
        raise TypeError(f"no module of tasks.kinds handles the step kind(s) {', '.join(missing)}")
    unnamed = [k.value for k in OUTPUTS if found[k][1].produced is None and found[k][1].submit is not None]
    if unnamed:
        raise TypeError(f"step kind(s) {', '.join(unnamed)} have OUTPUTS but produce nothing")
    return {kind: k for kind, (_, k) in found.items()}
