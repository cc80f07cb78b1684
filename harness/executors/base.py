"""What one evaluation unit asks of a submission, independent of where the submission runs.

The harness (trusted) cuts a unit into a `TrainJob` (the fold's training and validation tensors
with their labels) and a series of prediction requests (validation, clean test, each scenario and
rate, the other cohort: inputs only, labels removed). A `Runner` answers them: in this process
(`local`, for code the user trusts) or in a sandboxed worker (`isolated`, the default). Both call
the same functions below, so both give byte-identical predictions for the same seed.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import progress
from harness.errors import SubmissionError

if TYPE_CHECKING:  # pragma: no cover
    from harness.models.protocol import TaskInfo, Tensors
    from harness.models.submission import Submission
    from harness.models.train import TrainedModel

#: Failure categories a unit can end with (the leaderboard publishes only these words).
FAILURE_CATEGORIES = (
    "timeout",  # wall-clock limit per unit exceeded
    "memory",  # memory limit exceeded
    "exited",  # the submission ended its process (sys.exit, os._exit, a fatal signal)
    "sandbox_denied",  # the submission tried to reach files, network or processes it may not
    "invalid_output",  # wrong shape, NaN, values outside [0, 1], malformed messages
    "error",  # an exception in the submission's code
)

#: Limits of a unit when ``submission.yaml`` declares none, and the harness's caps on what a
#: submission may declare (the caps can be changed by the maintainer, not by a submission).
DEFAULT_UNIT_SECONDS = 1800
DEFAULT_MEMORY_MB = 6144
MAX_UNIT_SECONDS = 4 * 3600
MAX_MEMORY_MB = 16384


class UnitFailure(SubmissionError):
    """A unit that did not finish; ``category`` is one of `FAILURE_CATEGORIES`."""

    def __init__(self, category: str, message: str):
        if category not in FAILURE_CATEGORIES:
            category = "error"
        super().__init__(message)
        self.category = category


@dataclass(frozen=True)
class Limits:
    """Wall-clock seconds per unit and resident memory of the worker, after the harness caps."""

    unit_seconds: float = DEFAULT_UNIT_SECONDS
    memory_mb: int = DEFAULT_MEMORY_MB

    @classmethod
    def for_submission(cls, declared: dict[str, Any] | None) -> Limits:
        """The submission's ``limits`` capped by ``HARNESS_MAX_UNIT_SECONDS`` / ``_MEMORY_MB``."""
        declared = declared or {}
        cap_s = float(os.environ.get("HARNESS_MAX_UNIT_SECONDS", MAX_UNIT_SECONDS))
        cap_mb = int(os.environ.get("HARNESS_MAX_MEMORY_MB", MAX_MEMORY_MB))
        seconds = float(declared.get("unit_seconds", DEFAULT_UNIT_SECONDS))
        memory = int(declared.get("memory_mb", DEFAULT_MEMORY_MB))
        return cls(unit_seconds=min(seconds, cap_s), memory_mb=min(memory, cap_mb))


@dataclass
class TrainJob:
    """One unit's training request: everything the model may learn from, labels included."""

    task: TaskInfo
    fold: int
    seed: int
    variables: list[str]
    train: Tensors  # with y
    val: Tensors  # with y (early stopping)
    device: str | None = None
    max_epochs: int | None = None
    cxr_dropout: float | None = None
    #: A configuration of the submission's search space (``{"params.hidden": 64, ...}``,
    #: :func:`harness.models.search.apply_config`): a tuning trial's, or the tuned one.
    config: dict[str, Any] | None = None


@dataclass
class TrainSummary:
    val_score: float
    best_epoch: int
    train_seconds: float
    #: Seconds per training stage as measured where the model trained (``train.steps``,
    #: ``train.validation``): benchmark diagnostics only, never published.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: When the optimizer steps ran, (start, end) on ``time.monotonic()``: diagnostics only.
    step_spans: list[tuple[float, float]] = field(default_factory=list)


class Runner(ABC):
    """Trains one unit at a time and predicts from the last trained model."""

    @abstractmethod
    def train(self, job: TrainJob) -> TrainSummary: ...

    @abstractmethod
    def predict(self, tensors: Tensors) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 - optional
        pass


class Executor(ABC):
    """Where units run. ``open`` gives a `Runner` bound to one submission."""

    name: str = ""

    @abstractmethod
    def open(self, sub: Submission, limits: Limits) -> Runner: ...

    def prestart(self, sub: Submission, limits: Limits) -> Runner | None:
        """A runner started ahead of need (hides start-up time), or None when not worth it."""
        return None

    @contextlib.contextmanager
    def session(self, sub: Submission, limits: Limits) -> Iterator[Runner]:
        runner = self.open(sub, limits)
        try:
            yield runner
        finally:
            runner.close()


# --------------------------------------------------------------------------------------------
# The work itself, shared by every executor


def unit_threads(sub: Submission) -> int:
    """Intra-op threads a unit of ``sub`` trains and predicts with: its ``resources.cpus``
    (default 1), on every executor. Float reductions split across threads round differently,
    so a unit's predictions would otherwise depend, in their last bits, on the machine's cores
    and on how many units run beside it; fixed, they are byte-identical wherever it runs."""
    return int((sub.resources or {}).get("cpus", 1))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` threads in torch and in the native pools scikit-learn and
    numpy use (OpenMP, BLAS: threadpoolctl), then restore the previous counts."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def epoch_budget(sub: Submission, job: TrainJob) -> int:
    """Epochs ``job`` trains at most (early stopping may end it sooner); an estimator's one fit
    counts as one."""
    if sub.kind == "estimator":
        return 1
    return int(job.max_epochs if job.max_epochs is not None else sub.train.max_epochs)


def fit_job(
    sub: Submission, job: TrainJob, on_epoch: Callable[[int], None] | None = None
) -> TrainedModel:
    """Train ``sub`` on ``job`` (the same call in-process and inside the sandbox).

    ``on_epoch(n)``: called once ``n`` epochs are done, n = 1, 2, ... (an estimator: once, after
    its fit); it only counts, and what is trained does not depend on it."""
    from harness.models.data import FitSplit
    from harness.models.search import apply_config
    from harness.models.train import fit_split

    def log(record: dict[str, Any]) -> None:
        if on_epoch is not None:
            on_epoch(int(record["epoch"]) + 1)

    split = FitSplit(fold=job.fold, train=job.train, val=job.val)
    trained = fit_split(
        apply_config(sub, job.config), job.task, split, list(job.variables), job.seed,
        device=job.device, max_epochs=job.max_epochs, cxr_dropout=job.cxr_dropout, log=log,
    )  # fmt: skip
    if sub.kind == "estimator" and on_epoch is not None:
        on_epoch(1)
    return trained


@contextlib.contextmanager
def epoch_bar(sub: Submission, job: TrainJob) -> Iterator[progress.Bar]:
    """The bar of one unit's training epochs (:mod:`harness.progress`), up to its epoch budget;
    a run that stopped early is closed at the epochs it trained."""
    what = "fit" if sub.kind == "estimator" else "epochs"
    with progress.bar(what, epoch_budget(sub, job), unit="epoch") as b:
        yield b
        if b.completed:
            b.update(total=b.completed)


def summary_of(trained: TrainedModel) -> TrainSummary:
    return TrainSummary(
        val_score=float(trained.val_score),
        best_epoch=int(trained.best_epoch),
        train_seconds=float(trained.train_seconds),
        stage_seconds=dict(trained.stage_seconds),
        step_spans=list(trained.step_spans),
    )


def check_probabilities(p: np.ndarray, task: TaskInfo, n: int) -> np.ndarray:
    """Predictions that come back across the boundary: right shape, finite, in [0, 1]."""
    p = np.asarray(p)
    want = (n,) if task.kind == "binary" else (n, task.n_outputs)
    if p.dtype.kind != "f" or p.shape != want:
        raise UnitFailure(
            "invalid_output",
            f"predictions of shape {p.shape} and dtype {p.dtype}; expected float {want}",
        )
    if n and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise UnitFailure("invalid_output", "predictions are not finite probabilities in [0, 1]")
    return p.astype(np.float64)


def classify_exception(exc: BaseException) -> str:
    """The failure category of an exception raised by submission code."""
    if isinstance(exc, UnitFailure):
        return exc.category
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, SystemExit):
        return "exited"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, OSError) or isinstance(cause, OSError):
        return "sandbox_denied"
    if isinstance(cause, MemoryError):
        return "memory"
    return "error"


# --------------------------------------------------------------------------------------------
# Stay ids cross the boundary as pseudonyms


def pseudonym_key(scope: str = "") -> bytes:
    """A secret of this cache (derived from its signing key) for one ``scope`` (task/cohort/fold):
    pseudonyms are stable across runs on one installation but differ between scopes, so ids
    cannot be linked across folds, and a submitter holding the source data cannot invert them."""
    import hashlib
    import hmac

    from harness.signing import signing_key

    secret = signing_key()
    if secret is None:  # signing_key creates the key when absent: only a broken cache gets here
        raise RuntimeError("no result-signing key to derive stay-id pseudonyms from")
    label = b"stay-id pseudonyms/" + scope.encode()
    return hmac.new(secret, label, hashlib.sha256).digest()


def pseudonymise(tensors: Tensors, key: bytes) -> Tensors:
    """The same tensors with ``stay_id`` replaced by keyed 56-bit hashes.

    A model may compare ids (e.g. to leave a stay out of its own neighbour bank) but cannot look
    its labels up in a copy of the source data it holds outside the harness.
    """
    import hashlib
    from dataclasses import replace

    import torch

    ids = tensors.stay_id.tolist()
    coded = [
        int.from_bytes(
            hashlib.blake2b(
                int(i).to_bytes(8, "little", signed=True), key=key[:64], digest_size=7
            ).digest(),
            "little",
        )  # fmt: skip
        for i in ids
    ]
    return replace(tensors, stay_id=torch.tensor(coded, dtype=torch.long))
