"""The ``local`` executor: the submission runs in the harness process (trusted code only).

For a developer's own model (``harness evaluate --trusted``): no start-up cost and a debugger
works, but the model runs with the harness's rights and could read anything the harness can.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.executors.base import (
    Executor,
    Limits,
    Runner,
    TrainJob,
    TrainSummary,
    UnitFailure,
    check_probabilities,
    fit_job,
    summary_of,
)


class LocalRunner(Runner):
    def __init__(self, sub: Any):
        self.sub = sub
        self.trained: Any = None
        self.task: Any = None

    def train(self, job: TrainJob) -> TrainSummary:
        self.trained, self.task = None, job.task
        try:
            self.trained = fit_job(self.sub, job)
        except SystemExit as exc:
            raise UnitFailure(
                "exited", f"the submission called sys.exit({exc.code!r}) during training"
            ) from None
        return summary_of(self.trained)

    def predict(self, tensors: Any) -> np.ndarray:
        if self.trained is None:
            raise RuntimeError("predict before train")
        try:
            p = self.trained.predict_proba(tensors)
        except SystemExit as exc:
            raise UnitFailure(
                "exited", f"the submission called sys.exit({exc.code!r}) during prediction"
            ) from None
        return check_probabilities(p, self.task, len(tensors))


class LocalExecutor(Executor):
    name = "local"

    def open(self, sub: Any, limits: Limits) -> Runner:
        return LocalRunner(sub)
