"""The ``local`` executor: the submission runs in the harness process (trusted code only).

For a developer's own model (``harness evaluate --trusted``): no start-up cost and a debugger
works, but the model runs with the harness's rights and could read anything the harness can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.executors.base import (
    Executor,
    Limits,
    Runner,
    TrainJob,
    TrainSummary,
    UnitFailure,
    check_probabilities,
    epoch_bar,
    fit_job,
    summary_of,
    torch_threads,
    unit_threads,
)

if TYPE_CHECKING:  # pragma: no cover
    from harness.models.protocol import TaskInfo, Tensors
    from harness.models.submission import Submission
    from harness.models.train import TrainedModel


class LocalRunner(Runner):
    def __init__(self, sub: Submission):
        self.sub = sub
        self.trained: TrainedModel | None = None
        self.task: TaskInfo | None = None

    def train(self, job: TrainJob) -> TrainSummary:
        self.trained, self.task = None, job.task
        try:
            with torch_threads(unit_threads(self.sub)), epoch_bar(self.sub, job) as bar:
                self.trained = fit_job(self.sub, job, on_epoch=lambda n: bar.update(completed=n))
        except SystemExit as exc:
            raise UnitFailure(
                "exited", f"the submission called sys.exit({exc.code!r}) during training"
            ) from None
        return summary_of(self.trained)

    def predict(self, tensors: Tensors) -> np.ndarray:
        if self.trained is None or self.task is None:
            raise RuntimeError("predict before train")
        try:
            with torch_threads(unit_threads(self.sub)):
                p = self.trained.predict_proba(tensors)
        except SystemExit as exc:
            raise UnitFailure(
                "exited", f"the submission called sys.exit({exc.code!r}) during prediction"
            ) from None
        return check_probabilities(p, self.task, len(tensors))


class LocalExecutor(Executor):
    name = "local"

    def open(self, sub: Submission, limits: Limits) -> Runner:
        return LocalRunner(sub)
