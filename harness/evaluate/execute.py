"""Running planned units through the executor seam (:mod:`harness.executors`).

Every unit the plan does not reuse is trained by a :class:`~harness.executors.Runner` of the
evaluation's executor (``isolated``: a sandbox; ``local``: in-process). A fresh worker serves one
(task, fold), or one (task, cohort, fold) when the cohorts' folds do not follow the subject:
everything one worker serves shares one test split, so nothing it remembers from a unit reveals
a label of another unit's test stays (fold k's test stays are in the training set of every other
fold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.evaluate.units import UnitRunner, run_unit
from harness.progress import Bar

if TYPE_CHECKING:
    from harness.evaluate.plan import Plan, PlannedUnit, TaskPlan
    from harness.executors import Executor, Limits, Runner, TrainJob, TrainSummary
    from harness.models.protocol import Tensors
    from harness.models.submission import Submission

#: ``progress(label, done, total)``: called before each unit and once when scoring is done.
ProgressFn = Callable[[str, int, int], None]


class LazyRunner:
    """Opens the executor's runner on the first unit that needs training (none when all reuse).

    ``close`` ends the current runner (the next unit gets a fresh one); meanwhile a spare is
    started in the background, so a sandbox's start-up overlaps the previous fold's work.
    """

    def __init__(
        self, executor: Executor, sub: Submission, limits: Limits, sessions: int | None = None
    ):
        self.executor, self.sub, self.limits = executor, sub, limits
        self.runner: Runner | None = None
        self.spare: Runner | None = None
        #: Runners still to be opened, when known: none is prestarted after the last one.
        self.sessions = sessions
        #: With ``--executor ray``: the :class:`~harness.evaluate.cluster.RayUnits` that runs
        #: the units instead (each on a runner of its own, on a Ray worker).
        self.cluster: Any = None

    def _get(self) -> Runner:
        if self.runner is None:
            self.runner = self.spare or self.executor.open(self.sub, self.limits)
            self.spare = None
            if self.sessions is not None:
                self.sessions -= 1
            if self.sessions is None or self.sessions > 0:
                self.spare = self.executor.prestart(self.sub, self.limits)
        return self.runner

    def shutdown(self) -> None:
        """Close the current runner and the spare."""
        self.close()
        if self.spare is not None:
            self.spare.close()
            self.spare = None

    def train(self, job: TrainJob) -> TrainSummary:
        return self._get().train(job)

    def predict(self, tensors: Tensors) -> np.ndarray:
        return self._get().predict(tensors)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


@dataclass
class Progress:
    """Units done, trained and reused so far, reported to an optional callback and to the
    evaluation's bar (:mod:`harness.progress`: a reused unit moves it without counting in the
    rate, so its ETA is that of the units left to train)."""

    total: int
    callback: ProgressFn | None = None
    done: int = 0
    ran: int = 0
    reused: int = 0
    bar: Bar | None = None

    def starting(self, label: str) -> None:
        if self.callback:
            self.callback(label, self.done, self.total)
        if self.bar is not None:
            self.bar.doing(label)

    def finished(self, *, reused: bool) -> None:
        self.done += 1
        self.reused += int(reused)
        self.ran += int(not reused)
        if self.bar is not None:
            if reused:
                self.bar.skip()
            else:
                self.bar.advance()

    def skip(self, n_units: int) -> None:
        """Units of a skipped (task, cohort) leave the total."""
        self.total -= n_units
        if self.bar is not None:
            self.bar.update(total=self.total)

    def describe(self, what: str) -> None:
        """Say on the bar what the evaluation does now (scoring, writing)."""
        if self.bar is not None:
            self.bar.doing(what)


def run_planned(runner: UnitRunner, plan: Plan, task_plan: TaskPlan, planned: PlannedUnit) -> None:
    """Train one planned unit and write its file."""
    c = planned.unit.cohort
    run_unit(
        runner, task_plan.sets[c], planned.unit, plan.settings, plan.scenarios,
        task_plan.others[c], planned.path, inputs=plan.sub.inputs,
        config=plan.config(planned.unit),
    )  # fmt: skip


def run_task(runner: LazyRunner, plan: Plan, task_plan: TaskPlan, progress: Progress) -> None:
    """Train every unit of a task the plan does not reuse, one worker per (task, fold) (or
    (task, cohort, fold) when the folds do not follow the subject)."""
    for k in plan.folds:
        for c in task_plan.sets:
            if not task_plan.shared_folds:
                runner.close()
            for s in plan.seeds:
                planned = task_plan.unit(c, k, s)
                progress.starting(planned.unit.label)
                if not planned.reuse:
                    run_planned(runner, plan, task_plan, planned)
                progress.finished(reused=planned.reuse)
        runner.close()
