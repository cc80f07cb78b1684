"""Where an evaluation unit runs: ``isolated`` (sandboxed worker, the default) or ``local``.

Planning units, skipping finished ones, pooling and scoring never depend on the executor; every
executor answers the same `Runner` requests and gives byte-identical predictions for a seed.
"""

from __future__ import annotations

from harness.executors.base import (
    FAILURE_CATEGORIES,
    Executor,
    Limits,
    Runner,
    TrainJob,
    TrainSummary,
    UnitFailure,
)
from harness.registry import Registry

EXECUTORS: Registry[type[Executor]] = Registry("executor")
DEFAULT_EXECUTOR = "isolated"


def _register() -> None:
    from harness.executors.isolated import IsolatedExecutor
    from harness.executors.local import LocalExecutor

    for cls in (IsolatedExecutor, LocalExecutor):
        if cls.name not in EXECUTORS:
            EXECUTORS.add(cls.name, cls)


def get_executor(name: str | None = None) -> Executor:
    """An executor by name (``None``: ``HARNESS_EXECUTOR``, else ``isolated``)."""
    import os

    _register()
    return EXECUTORS.get(name or os.environ.get("HARNESS_EXECUTOR") or DEFAULT_EXECUTOR)()


__all__ = [
    "DEFAULT_EXECUTOR", "EXECUTORS", "FAILURE_CATEGORIES", "Executor", "Limits", "Runner",
    "TrainJob", "TrainSummary", "UnitFailure", "get_executor",
]  # fmt: skip
