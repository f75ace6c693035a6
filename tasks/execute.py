"""Run a plan: each step's kind names its handler (:mod:`tasks.kinds`), called with the step's id and arguments.

The flows do not write their steps again: they hand the plan's steps
(:mod:`haplane.core.steps`, built by :mod:`haplane.core.plans`) to :func:`execute`, so the
dry run, the plan artifact and the run are one list. Every step leaves one
task run named by its step id (GCE steps also a ``wait ...`` task run), which
is how tests compare a run with its plan.

This module knows no step kind by name: a kind's module in ``tasks/kinds/`` says
whether its steps are GCE steps (a checkpointed submit, which go through
:func:`tasks.operations.apply`; consecutive steps sharing a ``parallel`` tag through
``apply_all``; ``background=True``: submitted now, waited for by a later ``await`` step)
or local actions, what they produce and what happens before and after them.
Values only an earlier step produces (:class:`haplane.core.steps.Ref`: the endpoint
IP, a new VM's internal IP and self link, a learner's member id) are recorded
in ``Run.outputs`` after that step and resolved when a later step runs.
"""

from __future__ import annotations

from haplane.core.plans import Plan
from haplane.core.steps import PlanStep, resolve
from tasks.kinds import Run, SubPlan, registry
from tasks.operations import apply, apply_all, start

__all__ = ["Run", "execute", "groups"]


def groups(steps: tuple[PlanStep, ...]) -> list[list[PlanStep]]:
    """Consecutive steps with one ``parallel`` tag form a group; every other step is a group of one."""
    out: list[list[PlanStep]] = []
    for s in steps:
        if out and s.parallel is not None and out[-1][-1].parallel == s.parallel:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def execute(run: Run, plan: Plan) -> dict[str, float]:
    """Run the plan's steps in order (a group side by side); returns measured figures."""
    kinds = registry()
    for group in groups(plan.steps):
        resolved = [(s, kinds[s.kind], {k: resolve(v, run.outputs) for k, v in s.args}) for s in group]
        for s, kind, a in resolved:
            if kind.before:
                kind.before(run, s, a)
        if len(group) > 1 and all(kind.submit for _, kind, _ in resolved):
            apply_all(run.change, [kind.submit(run, s, a) for s, kind, a in resolved])
        else:
            for s, kind, a in resolved:
                if kind.submit and a.get("background"):  # submitted now, waited for by a later step
                    run.pending[s.id] = start(run.change, kind.submit(run, s, a))
                elif kind.submit:
                    apply(run.change, kind.submit(run, s, a))
                else:
                    done = kind.act(run, s, a)
                    if isinstance(done, SubPlan):  # a change of its own (an upgrade's replica): run it here
                        execute(done.run, done.plan)
                    elif done:
                        run.outputs[s.id] = done
        for s, kind, a in resolved:
            if kind.produced:
                run.outputs[s.id] = kind.produced(run, s, a)
            if kind.after:
                kind.after(run, s, a)
    return run.figures
