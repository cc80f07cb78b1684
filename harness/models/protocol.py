"""The submission contract: what a model receives (`Batch`, `Tensors`, `ModelSpec`) and the hooks.

A ``torch`` submission is an ``nn.Module`` built as ``Class(spec, **params)``. Its
``forward(batch)`` returns logits of shape ``(B, spec.n_outputs)`` (``(B,)`` is accepted for a
binary task), or a dict with ``"logits"`` plus extra scalar loss terms whose names start with
``loss_`` (they are added to the harness loss). The harness owns everything else: loss, optimiser,
early stopping on the validation split, seeds, device placement and the link function.

Optional hooks, looked up by name on the module (all documented in `TrainHooks`):

``fit_setup(train: Tensors)``
    called once before training with the (normalised) training split, e.g. to build a faiss
    k-means bank of training CXR embeddings.
``extra_parameters() -> Iterable[Parameter]``
    parameters the optimiser must update that are not registered sub-modules.
``training_step(batch, y, loss_fn, ctx) -> Tensor | None``
    replaces the default step (forward, loss). Return the loss and the harness calls
    ``backward``/``step``; return ``None`` after stepping ``ctx.optimizer`` yourself (alternating
    modality updates, meta-learning inner loops).
``on_after_backward(ctx)``
    called between ``backward`` and the optimiser step (gradient modulation).
``on_epoch_end(ctx)``
    called after each epoch with the validation score in ``ctx.val_score``.

An ``estimator`` submission is built as ``Class(spec, **params)`` and implements ``fit(X, y)`` and
``predict_proba(X)`` on a flat float array built from its declared inputs (see
``ModelSpec.flat_feature_names``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from harness.kinds import TASK_KINDS

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from harness.cohort.spec import TaskSpec

#: Inputs a submission may declare in ``submission.yaml``.
INPUTS = ("ehr", "ehr_summary", "cxr", "cxr_pixels", "demographics")
#: Inputs an estimator can consume (flat arrays only).
ESTIMATOR_INPUTS = ("ehr_summary", "cxr", "demographics")


@dataclass(frozen=True)
class TaskInfo:
    """What the training loop needs to know about a task (a view of the cohort's `TaskSpec`)."""

    name: str
    kind: str
    label_columns: tuple[str, ...]
    n_classes: int | None = None
    main_metric: str | None = None

    @property
    def n_outputs(self) -> int:
        if self.kind == "binary":
            return 1
        if self.kind == "multilabel":
            return len(self.label_columns)
        return int(self.n_classes or 0)

    @classmethod
    def coerce(cls, task: TaskInfo | TaskSpec) -> TaskInfo:
        """The training view of a task: a `TaskInfo` as is, a task file's `TaskSpec` reduced to
        the fields the loop needs (name, kind, label columns, class count, main metric)."""
        if isinstance(task, TaskInfo):
            return task
        kind = str(task.kind)
        if kind not in TASK_KINDS:
            raise ValueError(f"task kind {kind!r} is not one of {TASK_KINDS}")
        n_classes = task.n_classes
        return cls(
            name=str(task.name),
            kind=kind,
            label_columns=tuple(task.label_columns),
            n_classes=int(n_classes) if n_classes else None,
            main_metric=task.main_metric,
        )


@dataclass
class Batch:
    """One mini-batch as a model sees it. Missing modalities travel only as masks.

    ``ehr`` (B, T, F) normalised and imputed; ``ehr_mask`` (B, T, F) 1 where observed;
    ``ehr_summary`` (B, S); ``cxr`` (B, d) zeros where missing; ``has_cxr`` (B,) 1.0/0.0;
    ``cxr_time_hours`` (B,) 0 where missing; ``demographics`` (B, D); ``stay_id`` (B,);
    ``cxr_pixels`` (B, 3, H, W) only in the end-to-end track. Labels are never in a batch.
    """

    ehr: torch.Tensor
    ehr_mask: torch.Tensor
    ehr_summary: torch.Tensor
    cxr: torch.Tensor
    has_cxr: torch.Tensor
    cxr_time_hours: torch.Tensor
    demographics: torch.Tensor
    stay_id: torch.Tensor
    cxr_pixels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.stay_id.shape[0])

    def to(self, device: Any) -> Batch:
        """Move every tensor to ``device``; pixels stored compactly (float16) become float32."""
        import torch

        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                value = value.to(device, non_blocking=True)
                if f.name == "cxr_pixels" and value.dtype == torch.float16:
                    value = value.float()
            moved[f.name] = value
        return Batch(**moved)

    def replace(self, **changes: Any) -> Batch:
        return replace(self, **changes)


@dataclass
class Tensors:
    """Model-ready tensors for a set of stays (normalised, imputed); labels kept apart in ``y``.

    What ``fit_setup`` receives and what the harness cuts into `Batch` objects; built from a
    `FeatureSet` by :func:`harness.models.data.make_tensors`.
    """

    ehr: torch.Tensor
    ehr_mask: torch.Tensor
    ehr_summary: torch.Tensor
    cxr: torch.Tensor
    has_cxr: torch.Tensor
    cxr_time_hours: torch.Tensor
    demographics: torch.Tensor
    stay_id: torch.Tensor
    y: torch.Tensor | None
    index: np.ndarray
    cxr_pixels: torch.Tensor | None = None
    demo_names: list[str] = field(default_factory=list)
    summary_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.stay_id.shape[0])

    def batch(self, idx: torch.Tensor | slice) -> Batch:
        """Rows ``idx`` as a `Batch` (tensor indexing, no per-item Python)."""
        return Batch(
            ehr=self.ehr[idx],
            ehr_mask=self.ehr_mask[idx],
            ehr_summary=self.ehr_summary[idx],
            cxr=self.cxr[idx],
            has_cxr=self.has_cxr[idx],
            cxr_time_hours=self.cxr_time_hours[idx],
            demographics=self.demographics[idx],
            stay_id=self.stay_id[idx],
            cxr_pixels=None if self.cxr_pixels is None else self.cxr_pixels[idx],
        )

    def all(self) -> Batch:
        return self.batch(slice(None))

    def labels(self) -> torch.Tensor:
        """``y``, for the harness code paths that only run on labelled splits.

        Raises:
            ValueError: these tensors were built without labels.
        """
        if self.y is None:
            raise ValueError("these tensors carry no labels")
        return self.y

    def _batch_rows(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None
    ) -> Iterator[torch.Tensor]:
        """Row indices of each batch; with ``shuffle`` the order comes from ``generator``."""
        import torch

        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]

    def iter_batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Batch, torch.Tensor | None]]:
        """Yield ``(batch, y)`` (``y`` None for unlabelled tensors); ``shuffle`` as seeded."""
        for idx in self._batch_rows(batch_size, shuffle, generator):
            yield self.batch(idx), (None if self.y is None else self.y[idx])

    def labelled_batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """`iter_batches` for training, where every batch must come with its labels.

        Raises:
            ValueError: these tensors were built without labels.
        """
        y = self.labels()
        for idx in self._batch_rows(batch_size, shuffle, generator):
            yield self.batch(idx), y[idx]

    def flat(self, inputs: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """The flat estimator array for ``inputs`` (fixed order) and its column names."""
        parts: list[np.ndarray] = []
        names: list[str] = []
        if "ehr_summary" in inputs:
            parts.append(self.ehr_summary.numpy())
            names += self.summary_names or [f"ehr_summary_{i}" for i in range(parts[-1].shape[1])]
        if "cxr" in inputs:
            parts.append(self.cxr.numpy())
            names += [f"cxr_{i}" for i in range(parts[-1].shape[1])]
            parts.append(self.has_cxr.numpy()[:, None])
            names.append("has_cxr")
        if "demographics" in inputs:
            parts.append(self.demographics.numpy())
            names += self.demo_names or [f"demo_{i}" for i in range(parts[-1].shape[1])]
        if not parts:
            return np.zeros((len(self), 0), dtype=np.float32), []
        return np.concatenate(parts, axis=1).astype(np.float32), names


@dataclass(frozen=True)
class ModelSpec:
    """Shapes and task facts a model is built from: ``Class(spec, **params)``."""

    task_kind: str
    n_outputs: int
    ehr_dim: int
    ehr_summary_dim: int
    cxr_dim: int
    demo_dim: int
    seq_len: int = 48
    variables: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    #: Trainable image backbone (end-to-end track): maps (B, 3, H, W) to (B, cxr_dim).
    cxr_backbone: Any = field(default=None, compare=False, repr=False)
    #: Column names of the flat array an estimator receives, in order.
    flat_feature_names: tuple[str, ...] = ()
    #: The run's seed (estimators pass it as ``random_state``).
    seed: int = 0

    @property
    def end_to_end(self) -> bool:
        return self.cxr_backbone is not None


@dataclass
class StepContext:
    """State handed to the optional hooks."""

    model: Any
    optimizer: Any
    epoch: int = 0
    step: int = 0
    seed: int = 0
    device: Any = None
    max_epochs: int = 0
    val_score: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class TrainHooks(Protocol):
    """Documentation of the optional hooks a torch submission may implement (all optional)."""

    def fit_setup(self, train: Tensors) -> None: ...

    def extra_parameters(self) -> Iterable[Any]: ...

    def training_step(self, batch: Batch, y: Any, loss_fn: Any, ctx: StepContext) -> Any: ...

    def on_after_backward(self, ctx: StepContext) -> None: ...

    def on_epoch_end(self, ctx: StepContext) -> None: ...
