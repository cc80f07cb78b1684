"""The harness-owned training loop: loss by task kind, AdamW, early stopping on validation.

Every submission is trained here the same way: seeded, deterministic on CPU, checkpoint chosen
on the validation split's main metric (the test split is never looked at), and scored on
probabilities produced by one link function (sigmoid for binary and multilabel, softmax for
multiclass).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.config import resolve_device
from harness.errors import InputError, SubmissionError
from harness.models.data import FeatureSet, FitSplit, NormStats, Split, make_tensors, prepare_split
from harness.models.protocol import Batch, ModelSpec, StepContext, TaskInfo, Tensors
from harness.models.submission import Submission, describe_exception, load_submission

if TYPE_CHECKING:  # pragma: no cover
    from harness.cohort.spec import TaskSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Validation-split selection metric


def selection_score(task: TaskInfo, y: np.ndarray, proba: np.ndarray) -> float:
    """The validation score that drives early stopping (higher is better; NaN if undefined).

    The task's ``main_metric`` resolved in the metric registry
    (:func:`harness.metrics.registry.main_metric_for`: the same name and the same value as the
    headline the scorer ranks by), negated when lower is better (Brier, ECE) so that the loop
    always maximises. No ``main_metric`` gives the kind's default headline; an unknown one raises.
    """
    from harness.metrics.registry import METRICS, main_metric_for

    metric = METRICS.get(main_metric_for(task.kind, task.main_metric))
    value = float(metric(y, proba))
    return value if metric.higher_is_better else -value


# --------------------------------------------------------------------------------------------
# Output checks shared by the loop and `harness validate`


def expected_shape(spec: ModelSpec, batch_size: int) -> tuple[int, ...]:
    return (batch_size,) if spec.task_kind == "binary" else (batch_size, spec.n_outputs)


def split_output(
    out: Any, spec: ModelSpec, batch_size: int, where: Path
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Canonical-shape logits plus extra ``loss_*`` terms; bad output -> `SubmissionError`."""
    extra: dict[str, torch.Tensor] = {}
    if isinstance(out, dict):
        if "logits" not in out:
            raise SubmissionError(
                f"{where}: forward returned a dict without a 'logits' entry (keys: "
                f"{sorted(out)}). Fix: return logits, or a dict with 'logits' and loss_* terms."
            )
        extra = {k: v for k, v in out.items() if k.startswith("loss_")}
        out = out["logits"]
    if not isinstance(out, torch.Tensor):
        raise SubmissionError(
            f"{where}: forward returned {type(out).__name__}, not a tensor of logits. "
            "Fix: return a torch.Tensor (or a dict with 'logits')."
        )
    logits = out
    if spec.task_kind == "binary" and logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    want = expected_shape(spec, batch_size)
    if tuple(logits.shape) != want:
        kind = {
            "binary": "binary task (1 output)",
            "multilabel": f"multilabel task with {spec.n_outputs} labels",
            "multiclass": f"multiclass task with {spec.n_outputs} classes",
        }[spec.task_kind]
        raise SubmissionError(
            f"{where}: forward returned logits of shape {tuple(out.shape)} for a {kind} on a "
            f"batch of {batch_size}; expected {want}. Fix: size the output layer with "
            "spec.n_outputs and keep the batch dimension first."
        )
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise SubmissionError(
            f"{where}: forward returned non-finite logits ({bad} of {logits.numel()} values are "
            "NaN or inf). Fix: check for divisions by zero, log of 0 or exploding activations "
            "(missing CXRs arrive as zero vectors with has_cxr = 0)."
        )
    for key, value in extra.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise SubmissionError(
                f"{where}: forward returned {key!r} that is not a scalar tensor. "
                "Fix: loss_* entries must be scalar tensors."
            )
    return logits, extra


@contextlib.contextmanager
def _model_errors(where: Path, what: str) -> Iterator[None]:
    """Turn an exception raised inside submission code into one clear `SubmissionError`."""
    try:
        yield
    except SubmissionError:
        raise
    except Exception as exc:
        raise SubmissionError(
            f"{describe_exception(exc, where)} (during {what}). Fix: correct the code at that "
            "line; batch fields and shapes are listed in harness.models.protocol.Batch."
        ) from exc


def link(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The harness-owned link: sigmoid (binary, multilabel) or softmax (multiclass)."""
    return torch.softmax(logits, dim=-1) if kind == "multiclass" else torch.sigmoid(logits)


# --------------------------------------------------------------------------------------------
# Trained model


@dataclass
class TrainedModel:
    """A fitted submission for one (task, fold, seed), with its training statistics."""

    submission: Submission
    spec: ModelSpec
    task: TaskInfo
    fold: int
    seed: int
    #: The fold's training statistics; None when trained from tensors alone (a sandboxed worker).
    stats: NormStats | None
    model: Any
    device: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    val_score: float = float("nan")
    train_seconds: float = 0.0
    split: FitSplit | None = None
    #: Seconds in the optimizer steps (an estimator's fit) and the validation passes, for the
    #: stage breakdown of `benchmarks/evaluate_speed.py` (:mod:`harness.timing`).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: When the optimizer steps ran: (start, end) on ``time.monotonic()``, one per epoch.
    step_spans: list[tuple[float, float]] = field(default_factory=list)

    def predict_proba(self, data: Tensors | Batch, *, batch_size: int = 1024) -> np.ndarray:
        """Probabilities: (n,) binary, (n, L) multilabel, (n, K) multiclass."""
        if self.submission.kind == "estimator":
            if not isinstance(data, Tensors):
                raise TypeError("estimators predict from Tensors (flat arrays), not a Batch")
            x, _ = data.flat(self.submission.inputs)
            with _model_errors(self.submission.module_path, "predict_proba"):
                raw = self.model.predict_proba(x)
            return estimator_proba(raw, self.task, self.model, self.submission.module_path)
        if self.spec.end_to_end:
            batch_size = min(batch_size, 64)
        return _predict(
            self.model, data, self.spec, self.device, batch_size, self.submission.module_path
        )

    def tensors_for(self, fs: FeatureSet, idx: np.ndarray) -> Tensors:
        """Rows ``idx`` of a (possibly degraded) `FeatureSet`, normalised with this fold's stats."""
        if self.stats is None:
            raise ValueError("this model was trained from tensors alone: it has no statistics")
        return make_tensors(fs, idx, self.stats)

    def predict_feature_set(self, fs: FeatureSet, idx: np.ndarray) -> np.ndarray:
        return self.predict_proba(self.tensors_for(fs, idx))


def _predict(
    model: nn.Module, data: Tensors | Batch, spec: ModelSpec, device: str, bs: int, where: Path
) -> np.ndarray:
    model.eval()
    chunks = []
    with torch.no_grad(), _model_errors(where, "forward (prediction)"):
        batches: Iterator[Batch]
        if isinstance(data, Batch):
            batches = iter([data])
        else:
            batches = (b for b, _ in data.iter_batches(bs))
        for batch in batches:
            batch = batch.to(device)
            logits, _ = split_output(model(batch), spec, len(batch), where)
            chunks.append(link(logits.float(), spec.task_kind).cpu())
    if not chunks:
        return np.zeros(expected_shape(spec, 0), dtype=np.float64)
    return torch.cat(chunks).numpy().astype(np.float64)


def estimator_proba(raw: Any, task: TaskInfo, est: Any, where: Path) -> np.ndarray:
    """Bring scikit-learn style ``predict_proba`` output to the harness shapes and check it."""
    if isinstance(raw, list):  # MultiOutputClassifier: one (n, 2) array per label
        raw = np.stack([np.asarray(r)[:, -1] for r in raw], axis=1)
    p = np.asarray(raw, dtype=np.float64)
    if task.kind == "binary" and p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if task.kind == "multiclass" and p.ndim == 2 and p.shape[1] != task.n_outputs:
        classes = getattr(est, "classes_", None)
        if classes is not None and len(classes) == p.shape[1]:
            full = np.zeros((len(p), task.n_outputs))
            full[:, np.asarray(classes, dtype=int)] = p
            p = full
    n = len(p)
    spec = ModelSpec(task.kind, task.n_outputs, 0, 0, 0, 0)
    want = expected_shape(spec, n)
    if p.shape != want:
        raise SubmissionError(
            f"{where}: predict_proba returned shape {p.shape} for a {task.kind} task; expected "
            f"{want}. Fix: return (n,) or (n, 2) for binary, (n, labels) or a list of (n, 2) for "
            "multilabel, (n, classes) for multiclass."
        )
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise SubmissionError(
            f"{where}: predict_proba returned values outside [0, 1] or non-finite. "
            "Fix: return probabilities, not scores or logits."
        )
    return p


# --------------------------------------------------------------------------------------------
# Training


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch and request deterministic kernels for the duration."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def make_loss(task: TaskInfo, y_train: torch.Tensor, class_weights: str, device: str) -> nn.Module:
    """BCE-with-logits (binary, multilabel) or cross-entropy, optionally class-balanced."""
    if task.kind == "multiclass":
        weight = None
        if class_weights == "balanced":
            counts = torch.bincount(y_train, minlength=task.n_outputs).float().clamp(min=1)
            weight = (len(y_train) / (task.n_outputs * counts)).to(device)
        return nn.CrossEntropyLoss(weight=weight)
    pos_weight = None
    if class_weights == "balanced":
        pos = y_train.float().sum(dim=0).clamp(min=1)
        pos_weight = ((len(y_train) - pos) / pos).to(device)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def drop_cxr(batch: Batch, rate: float, generator: torch.Generator) -> Batch:
    """Train-time CXR dropout: hide the image of a random ``rate`` share of stays that have one."""
    drop = (torch.rand(len(batch), generator=generator) < rate) & (batch.has_cxr > 0)
    if not bool(drop.any()):
        return batch
    keep = (~drop).float()
    return batch.replace(
        has_cxr=batch.has_cxr * keep,
        cxr=batch.cxr * keep[:, None],
        cxr_time_hours=batch.cxr_time_hours * keep,
    )


def build_spec(
    sub: Submission,
    task: TaskInfo,
    train: Tensors,
    variables: Sequence[str] | FeatureSet,
    seed: int,
    backbone: nn.Module | None = None,
    backbone_dim: int | None = None,
) -> ModelSpec:
    """The `ModelSpec` a submission is built from: shapes of ``train``, the task, the EHR
    ``variables`` (names, or the `FeatureSet` that carries them) and the image backbone of the
    end-to-end track with its output dimension."""
    flat_names: tuple[str, ...] = ()
    if sub.kind == "estimator":
        flat_names = tuple(train.flat(sub.inputs)[1])
    cxr_dim = int(train.cxr.shape[1])
    if backbone is not None:
        if backbone_dim is None:
            raise ValueError("an image backbone needs its output dimension (backbone_dim)")
        cxr_dim = int(backbone_dim)
    names = variables.variables if isinstance(variables, FeatureSet) else variables
    return ModelSpec(
        task_kind=task.kind,
        n_outputs=task.n_outputs,
        ehr_dim=int(train.ehr.shape[2]),
        ehr_summary_dim=int(train.ehr_summary.shape[1]),
        cxr_dim=cxr_dim,
        demo_dim=int(train.demographics.shape[1]),
        seq_len=int(train.ehr.shape[1]),
        variables=tuple(names),
        label_names=tuple(task.label_columns),
        inputs=tuple(sub.inputs),
        cxr_backbone=backbone,
        flat_feature_names=flat_names,
        seed=seed,
    )


def _coerce_task(task: TaskInfo | TaskSpec | str | None, fs: FeatureSet) -> TaskInfo:
    """The task to train on, checked against the labels ``fs`` carries (None: ``fs.task``)."""
    if task is None:
        return fs.task
    if isinstance(task, str):
        if task != fs.task.name:
            raise InputError(
                f"task {task!r} does not match the FeatureSet's task {fs.task.name!r}",
                fix="load the FeatureSet for this task (load_feature_set(cohort, task))",
            )
        return fs.task
    info = TaskInfo.coerce(task)
    if info.kind != fs.task.kind or info.n_outputs != fs.task.n_outputs:
        raise InputError(
            f"task {info.name!r} ({info.kind}, {info.n_outputs} outputs) does not match the "
            f"FeatureSet's labels ({fs.task.kind}, {fs.task.n_outputs} outputs)",
            fix="load the FeatureSet for this task",
        )
    return info


def train_model(
    submission: Submission | str | Path,
    fs: FeatureSet,
    task: TaskInfo | TaskSpec | str | None = None,
    fold: int = 1,
    seed: int = 0,
    *,
    device: str | None = None,
    max_epochs: int | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    split: Split | None = None,
    cxr_dropout: float | None = None,
) -> TrainedModel:
    """Train ``submission`` on fold ``fold`` of ``fs`` with ``seed``; select on validation.

    Args:
        task: the task (name, `TaskSpec` or `TaskInfo`); ``None`` uses ``fs.task``.
        max_epochs: overrides the submission's ``train.max_epochs`` (e.g. for quick runs).
        log: called after every epoch with a dict (epoch, train_loss, val_score, seconds).
        split: a precomputed `prepare_split` result to reuse across seeds.
        cxr_dropout: overrides ``train.cxr_dropout`` (train-time CXR dropout rate).
    """
    sub = submission if isinstance(submission, Submission) else load_submission(submission)
    info = _coerce_task(task, fs)
    if split is None:
        split = prepare_split(fs, fold)
    return fit_split(
        sub, info, split, list(fs.variables), seed,
        device=device, max_epochs=max_epochs, log=log, cxr_dropout=cxr_dropout,
    )  # fmt: skip


def fit_split(
    sub: Submission,
    info: TaskInfo,
    split: FitSplit,
    variables: list[str],
    seed: int,
    *,
    device: str | None = None,
    max_epochs: int | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    cxr_dropout: float | None = None,
) -> TrainedModel:
    """Train on ``split.train``, select on ``split.val``: all a unit needs, no `FeatureSet`.

    This is what runs on the far side of the trust boundary (`harness.executors`): it sees the
    training and validation tensors with their labels and nothing else of the cohort.
    """
    device = resolve_device(device)
    cls = sub.load_class()
    started = time.perf_counter()
    with seeded(seed):
        if sub.kind == "estimator":
            trained = _fit_estimator(sub, cls, info, variables, split, split.fold, seed)
        else:
            trained = _train_torch(
                sub, cls, info, variables, split, split.fold, seed, device, max_epochs, log,
                cxr_dropout,
            )  # fmt: skip
    trained.train_seconds = time.perf_counter() - started
    return trained


def _stats(split: FitSplit) -> NormStats | None:
    """The training statistics a full `Split` carries (a worker's `FitSplit` has none)."""
    return split.stats if isinstance(split, Split) else None


def _hook(model: nn.Module, name: str) -> Callable[..., Any] | None:
    """The optional `TrainHooks` method ``name`` of ``model``, or None when it has none.

    Looked up with ``getattr`` because a hook is a plain method of the submission's class:
    ``nn.Module`` attribute typing knows only parameters, buffers and sub-modules.
    """
    return getattr(model, name, None)


def _fit_estimator(
    sub: Submission,
    cls: type,
    task: TaskInfo,
    variables: list[str],
    split: FitSplit,
    fold: int,
    seed: int,
) -> TrainedModel:
    where = sub.module_path
    spec = build_spec(sub, task, split.train, variables, seed)
    x_train, _ = split.train.flat(sub.inputs)
    y_train = split.train.labels().numpy()
    with _model_errors(where, f"{cls.__name__}(spec, **params)"):
        est = cls(spec, **sub.params)
    t0 = time.monotonic()  # the machine-wide clock: spans compare across processes
    with _model_errors(where, "fit"):
        est.fit(x_train, y_train)
    trained = TrainedModel(sub, spec, task, fold, seed, _stats(split), est, "cpu", split=split)
    t1 = time.monotonic()
    trained.step_spans = [(t0, t1)]
    val = trained.predict_proba(split.val)
    trained.val_score = selection_score(task, split.val.labels().numpy(), val)
    trained.stage_seconds = {"train.steps": t1 - t0, "train.validation": time.monotonic() - t1}
    trained.history = [{"epoch": 0, "val_score": trained.val_score}]
    return trained


def _load_backbone(sub: Submission, train: Tensors) -> tuple[nn.Module | None, int | None]:
    if not sub.end_to_end:
        return None, None
    if train.cxr_pixels is None:
        raise InputError(
            f"{sub.name} runs in the end-to-end track (inputs: cxr_pixels) but the FeatureSet "
            "carries no images",
            fix="attach preprocessed images with harness.models.pixels.attach_pixels",
        )
    from harness.models.pixels import build_backbone

    return build_backbone(sub.backbone or "")


def _train_torch(
    sub: Submission,
    cls: type,
    task: TaskInfo,
    variables: list[str],
    split: FitSplit,
    fold: int,
    seed: int,
    device: str,
    max_epochs: int | None,
    log_fn: Callable[[dict[str, Any]], None] | None,
    cxr_dropout: float | None,
) -> TrainedModel:
    where = sub.module_path
    cfg = sub.train
    epochs = int(max_epochs if max_epochs is not None else cfg.max_epochs)
    rate = float(cfg.cxr_dropout if cxr_dropout is None else cxr_dropout)
    backbone, backbone_dim = _load_backbone(sub, split.train)
    spec = build_spec(sub, task, split.train, variables, seed, backbone, backbone_dim)
    with _model_errors(where, f"{cls.__name__}(spec, **params)"):
        model = cls(spec, **sub.params)
    if not isinstance(model, nn.Module):
        raise SubmissionError(
            f"{where}: {cls.__name__} is not a torch.nn.Module but `kind` is torch. "
            "Fix: subclass nn.Module, or set `kind: estimator` with fit/predict_proba."
        )
    model.to(device)
    if (fit_setup := _hook(model, "fit_setup")) is not None:
        with _model_errors(where, "fit_setup"):
            fit_setup(split.train)
    params = [p for p in model.parameters() if p.requires_grad]
    if (extra_parameters := _hook(model, "extra_parameters")) is not None:
        seen = {id(p) for p in params}
        params += [p for p in extra_parameters() if id(p) not in seen]
    if not params:
        raise SubmissionError(f"{where}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = make_loss(task, split.train.labels(), cfg.class_weights, device)
    shuffle_gen = torch.Generator().manual_seed(seed)
    drop_gen = torch.Generator().manual_seed(seed + 1)
    ctx = StepContext(model=model, optimizer=optimizer, seed=seed, device=device, max_epochs=epochs)
    y_val = split.val.labels().numpy()
    best_score, best_state, best_epoch, bad = -math.inf, None, 0, 0
    training_step = _hook(model, "training_step")
    on_after_backward = _hook(model, "on_after_backward")
    on_epoch_end = _hook(model, "on_epoch_end")
    bs = cfg.batch_size
    spent = {"train.steps": 0.0, "train.validation": 0.0}
    spans: list[tuple[float, float]] = []
    for epoch in range(epochs):
        ctx.epoch = epoch
        t0 = time.monotonic()  # the machine-wide clock: spans compare across processes
        model.train()
        losses = []
        for batch, y in split.train.labelled_batches(bs, shuffle=True, generator=shuffle_gen):
            if rate > 0:
                batch = drop_cxr(batch, rate, drop_gen)
            batch, y = batch.to(device), y.to(device)
            with _model_errors(where, f"training step (epoch {epoch})"):
                if training_step is not None:
                    loss = training_step(batch, y, loss_fn, ctx)
                else:
                    logits, extra = split_output(model(batch), spec, len(batch), where)
                    loss = loss_fn(logits, y) + sum(extra.values(), torch.zeros((), device=device))
                if loss is not None:
                    if not bool(torch.isfinite(loss)):
                        raise SubmissionError(
                            f"{where}: the training loss became {loss.item()} at epoch {epoch}, "
                            f"step {ctx.step}. Fix: lower train.lr or check loss_* terms."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if on_after_backward is not None:
                        on_after_backward(ctx)
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    losses.append(float(loss.detach()))
            ctx.step += 1
        t1 = time.monotonic()
        spans.append((t0, t1))
        val = _predict(model, split.val, spec, device, 64 if spec.end_to_end else 1024, where)
        score = selection_score(task, y_val, val)
        spent["train.steps"] += t1 - t0
        spent["train.validation"] += time.monotonic() - t1
        ctx.val_score = score
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else None,
            "val_score": score,
            "seconds": time.monotonic() - t0,
        }
        ctx.history.append(record)
        log.debug("%s fold %d seed %d: %s", sub.name, fold, seed, record)
        if log_fn is not None:
            log_fn(record)
        if on_epoch_end is not None:
            with _model_errors(where, "on_epoch_end"):
                on_epoch_end(ctx)
        comparable = score if math.isfinite(score) else -math.inf
        if best_state is None or comparable > best_score:
            best_score, best_epoch, bad = comparable, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainedModel(
        sub,
        spec,
        task,
        fold,
        seed,
        _stats(split),
        model,
        device,
        history=ctx.history,
        best_epoch=best_epoch,
        val_score=best_score,
        split=split,
        stage_seconds=spent,
        step_spans=spans,
    )
