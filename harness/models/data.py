"""Training data in memory: a `FeatureSet` per cohort and task, per-fold normalisation, tensors.

Raw features (physical units, NaN where unobserved) stay in the `FeatureSet`; `fit_stats` learns
median/IQR and the demographic encoding from one fold's *training* stays only, and `make_tensors`
is a pure function of (raw features, stats). Robustness scenarios therefore degrade the raw
arrays (values, observed, has_cxr) and call `make_tensors` again with the training statistics.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from harness.cohort.folds import PARTITION_CODES, given_partitions
from harness.errors import InputError
from harness.kinds import TASK_KINDS
from harness.models.protocol import TaskInfo, Tensors

if TYPE_CHECKING:  # pragma: no cover
    from harness.cohort.load import Cohort
    from harness.cohort.spec import TaskSpec

log = logging.getLogger(__name__)

#: Demographic columns encoded for models (those present in the frame are used).
DEMOGRAPHIC_CATEGORICAL = ("gender", "race_group", "insurance", "admission_type")
DEMOGRAPHIC_NUMERIC = ("age",)
#: Normalised EHR values are clipped to this many IQRs: one absurd value must not dominate a batch.
CLIP = 20.0


@dataclass
class FeatureSet:
    """Everything needed to train and test on one cohort and task, as raw in-memory arrays.

    Shapes: ``ehr_values``/``ehr_observed`` (n, T, F); ``ehr_summary`` (n, S); ``cxr`` (n, d);
    ``has_cxr`` (n,) bool (cohort linkage AND a usable embedding); ``cxr_time_hours`` (n,) with NaN
    where missing; ``y`` (n,) float for binary, (n, L) float multilabel, (n,) int multiclass.
    """

    stay_id: np.ndarray
    subject_id: np.ndarray
    fold: np.ndarray
    ehr_values: np.ndarray
    ehr_observed: np.ndarray
    ehr_summary: np.ndarray
    cxr: np.ndarray
    has_cxr: np.ndarray
    cxr_time_hours: np.ndarray
    demographics: pd.DataFrame
    y: np.ndarray
    task: TaskInfo
    variables: list[str]
    summary_names: list[str] = field(default_factory=list)
    #: Preprocessed images (n, 3, H, W) float16 for the end-to-end track, else None.
    cxr_pixels: torch.Tensor | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Linked image id per stay (None where no image); used to load pixels end to end.
    dicom_id: np.ndarray | None = None
    #: Partitions given by the data source (a CareBench folder), or None for the harness rule:
    #: (n, n_folds) int8, column k-1 = fold k, codes `PARTITION_CODES` (-1: not in that fold).
    given_splits: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.stay_id)
        for name in ("subject_id", "fold", "ehr_values", "ehr_observed", "ehr_summary", "cxr"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FeatureSet.{name} has {len(getattr(self, name))} rows, not {n}")
        if self.given_splits is not None and len(self.given_splits) != n:
            raise ValueError(f"FeatureSet.given_splits has {len(self.given_splits)} rows, not {n}")
        for name in ("has_cxr", "cxr_time_hours", "y"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FeatureSet.{name} has {len(getattr(self, name))} rows, not {n}")
        if len(self.demographics) != n:
            raise ValueError(f"FeatureSet.demographics has {len(self.demographics)} rows, not {n}")

    def __len__(self) -> int:
        return len(self.stay_id)

    @property
    def seq_len(self) -> int:
        return int(self.ehr_values.shape[1])

    @property
    def n_folds(self) -> int:
        """Folds of the cohort: the given partition's columns, else the cohort's fold count
        (``provenance["n_folds"]``, what `harness evaluate` records from the cohort), else the
        highest fold number present."""
        if self.given_splits is not None:
            return int(self.given_splits.shape[1])
        recorded = int(self.provenance.get("n_folds") or 0)
        return max(recorded, int(self.fold.max()) if len(self) else 0)

    def split(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions of (train, val, test) for fold ``k``: the given partition when there is
        one, else the harness rule over the cohort's folds (see `split_indices`)."""
        return split_indices(self.fold, k, given=self.given_splits, n_folds=self.n_folds)

    def subset(self, idx: np.ndarray) -> FeatureSet:
        """Rows ``idx`` (positions or a boolean mask) as a new `FeatureSet`."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            stay_id=self.stay_id[idx],
            subject_id=self.subject_id[idx],
            fold=self.fold[idx],
            ehr_values=self.ehr_values[idx],
            ehr_observed=self.ehr_observed[idx],
            ehr_summary=self.ehr_summary[idx],
            cxr=self.cxr[idx],
            has_cxr=self.has_cxr[idx],
            cxr_time_hours=self.cxr_time_hours[idx],
            demographics=self.demographics.iloc[idx].reset_index(drop=True),
            y=self.y[idx],
            cxr_pixels=None if self.cxr_pixels is None else self.cxr_pixels[torch.as_tensor(idx)],
            dicom_id=None if self.dicom_id is None else self.dicom_id[idx],
            given_splits=None if self.given_splits is None else self.given_splits[idx],
        )

    def replace(self, **changes: Any) -> FeatureSet:
        """A copy with some raw arrays replaced (how scenarios degrade test data)."""
        return replace(self, **changes)

    @classmethod
    def synthetic(
        cls,
        n: int = 600,
        *,
        seed: int = 0,
        kind: str = "multilabel",
        seq_len: int = 48,
        n_variables: int = 6,
        cxr_dim: int = 16,
        p_cxr: float = 0.7,
        strength: float = 2.0,
    ) -> FeatureSet:
        """Small generated data with planted signal, for validation and tests.

        Two independent latent factors: ``z_ehr`` drives the first two EHR variables and ``z_cxr``
        the CXR embedding (only visible when ``has_cxr``). Labels: multilabel ``label_ehr``
        (from z_ehr), ``label_cxr`` (from z_cxr), ``label_both`` (from their sum); binary uses
        ``label_both``; multiclass cuts z_ehr + z_cxr into three ordered classes.
        """
        if kind not in TASK_KINDS:
            raise ValueError(f"kind must be binary, multilabel or multiclass, not {kind!r}")
        rng = np.random.default_rng(seed)
        n_subjects = max(1, int(n * 0.85))
        subject_id = np.sort(rng.integers(0, n_subjects, size=n)) + 10_000
        subject_fold = rng.integers(1, 6, size=n_subjects)
        fold = subject_fold[subject_id - 10_000]
        z_ehr = rng.standard_normal(n)
        z_cxr = rng.standard_normal(n)

        variables = [f"var{j}" for j in range(n_variables)]
        base = rng.uniform(10, 100, size=n_variables)
        sd = rng.uniform(1, 10, size=n_variables)
        loading = np.zeros(n_variables)
        loading[: min(2, n_variables)] = 0.8
        noise = rng.standard_normal((n, seq_len, n_variables))
        values = base + sd * (loading * z_ehr[:, None, None] + 0.6 * noise)
        observed = rng.random((n, seq_len, n_variables)) < 0.4
        values = np.where(observed, values, np.nan).astype(np.float32)

        has_cxr = rng.random(n) < p_cxr
        direction = rng.standard_normal(cxr_dim)
        direction /= np.linalg.norm(direction)
        cxr = 1.5 * z_cxr[:, None] * direction + 0.5 * rng.standard_normal((n, cxr_dim))
        cxr = np.where(has_cxr[:, None], cxr, 0.0).astype(np.float32)
        cxr_time = np.where(has_cxr, rng.uniform(0, 48, size=n), np.nan).astype(np.float32)

        def draw(logit: np.ndarray) -> np.ndarray:
            return (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)

        labels = {
            "label_ehr": draw(strength * z_ehr - 0.5),
            "label_cxr": draw(strength * z_cxr - 0.5),
            "label_both": draw(0.75 * strength * (z_ehr + z_cxr) - 0.5),
        }
        if kind == "multilabel":
            y = np.stack(list(labels.values()), axis=1)
            task = TaskInfo("synthetic_multilabel", kind, tuple(labels), None, "macro_auroc")
        elif kind == "binary":
            y = labels["label_both"]
            task = TaskInfo("synthetic_binary", kind, ("label_both",), None, "auprc")
        else:
            score = z_ehr + z_cxr + 0.3 * rng.standard_normal(n)
            y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(np.int64)
            task = TaskInfo("synthetic_multiclass", kind, ("label_class",), 3, "accuracy")

        demographics = pd.DataFrame(
            {
                "age": rng.uniform(18, 90, size=n).round(),
                "gender": rng.choice(["F", "M"], size=n),
                "race_group": rng.choice(["WHITE", "BLACK", "HISPANIC", "ASIAN", "OTHER"], size=n),
                "insurance": rng.choice(["Medicare", "Medicaid", "Private"], size=n),
                "admission_type": rng.choice(["EMERGENCY", "ELECTIVE", "URGENT"], size=n),
            }
        )
        summary, summary_names = summarise_ehr(values, variables)
        return cls(
            stay_id=np.arange(n, dtype=np.int64) + 30_000_000,
            subject_id=subject_id.astype(np.int64),
            fold=fold.astype(np.int64),
            ehr_values=values,
            ehr_observed=observed,
            ehr_summary=summary,
            cxr=cxr,
            has_cxr=has_cxr,
            cxr_time_hours=cxr_time,
            demographics=demographics,
            y=y,
            task=task,
            variables=variables,
            summary_names=summary_names,
            provenance={"source": "FeatureSet.synthetic", "n": n, "seed": seed, "kind": kind},
        )


def summarise_ehr(values: np.ndarray, variables: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Static per-variable statistics of a (n, T, F) NaN array, and their names.

    The encode stage's recipe (:func:`harness.encode.ehr.summarise`: mean, min, max, last, std,
    slope, count per variable, grouped by variable), so a summary recomputed here (robustness
    scenarios, generated data) has the layout of the one stored in the feature cache.
    """
    from harness.encode.ehr import summarise, summary_names

    return summarise(np.asarray(values, dtype=np.float32)), summary_names(variables)


def _forward_fill(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Carry the last observed value forward along axis 1; NaN before the first observation."""
    n, t, f = values.shape
    pos = np.where(observed, np.arange(t)[None, :, None], 0)
    np.maximum.accumulate(pos, axis=1, out=pos)
    filled = np.take_along_axis(values, pos, axis=1)
    seen = np.maximum.accumulate(observed, axis=1)
    return np.where(seen, filled, np.nan)


# --------------------------------------------------------------------------------------------
# Per-fold statistics and tensors


@dataclass
class NormStats:
    """Statistics learnt from one fold's training stays; re-applied unchanged to val/test."""

    ehr_median: np.ndarray
    ehr_scale: np.ndarray
    summary_median: np.ndarray
    summary_scale: np.ndarray
    demo_encoder: Any
    demo_names: list[str]
    n_train: int


def _robust_centre_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and IQR of a 2-D array with NaNs (IQR 0 -> std -> 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(x, axis=0)
        q25, q75 = np.nanpercentile(x, [25, 75], axis=0)
        std = np.nanstd(x, axis=0)
    iqr = q75 - q25
    scale = np.where(iqr > 0, iqr, np.where(std > 0, std, 1.0))
    med = np.where(np.isfinite(med), med, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return med.astype(np.float32), scale.astype(np.float32)


def _demo_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    cat = [c for c in DEMOGRAPHIC_CATEGORICAL if c in frame.columns]
    num = [c for c in DEMOGRAPHIC_NUMERIC if c in frame.columns]
    return cat, num


def _as_object(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as object with NaN for missing (scikit-learn cannot test ``pd.NA``)."""
    frame = frame.astype(object)
    return frame.where(frame.notna(), np.nan)


def fit_stats(fs: FeatureSet, train_idx: np.ndarray) -> NormStats:
    """Learn EHR median/IQR and the demographic encoding from the stays ``train_idx`` only."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train_idx = np.asarray(train_idx)
    f = fs.ehr_values.shape[2]
    raw = np.where(fs.ehr_observed[train_idx], fs.ehr_values[train_idx], np.nan).reshape(-1, f)
    ehr_med, ehr_scale = _robust_centre_scale(raw)
    sum_med, sum_scale = _robust_centre_scale(fs.ehr_summary[train_idx].astype(np.float64))

    cat, num = _demo_columns(fs.demographics)
    encoder = None
    names: list[str] = []
    if cat or num:
        transformers = []
        if cat:
            transformers.append(
                (
                    "cat",
                    make_pipeline(
                        SimpleImputer(strategy="most_frequent"),
                        OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                    ),
                    cat,
                )
            )
        if num:
            transformers.append(
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num)
            )
        encoder = ColumnTransformer(transformers)
        frame = fs.demographics.iloc[train_idx][cat + num].copy()
        frame[cat] = _as_object(frame[cat])
        encoder.fit(frame)
        names = list(encoder.get_feature_names_out())
    return NormStats(ehr_med, ehr_scale, sum_med, sum_scale, encoder, names, len(train_idx))


def make_tensors(
    fs: FeatureSet, idx: np.ndarray, stats: NormStats, *, inputs: Sequence[str] | None = None
) -> Tensors:
    """Normalise and impute rows ``idx`` of ``fs`` with ``stats`` (a pure function).

    EHR: (x - median) / IQR where observed, forward fill, then the training median (0 after
    normalisation) before the first observation. The CXR embedding is zeroed and its time set to 0
    wherever ``has_cxr`` is false: degrading ``has_cxr`` alone is a complete missingness scenario.
    ``inputs``: the declared inputs; the tensors they do not open are zeros, not computed (the
    same as :func:`restrict_inputs` of the full tensors).
    """
    idx = np.asarray(idx)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    opened = _opened(inputs)
    n, (_, t, f) = len(idx), fs.ehr_values.shape
    observed = fs.ehr_observed[idx].astype(bool)
    if "ehr" in opened:
        z = (fs.ehr_values[idx] - stats.ehr_median) / stats.ehr_scale
        z = _forward_fill(np.where(observed, z, np.nan), observed)
        ehr = np.clip(np.nan_to_num(z, nan=0.0), -CLIP, CLIP).astype(np.float32)
        mask = observed.astype(np.float32)
    else:
        ehr = mask = np.zeros((n, t, f), dtype=np.float32)

    if "ehr_summary" in opened:
        summary = (fs.ehr_summary[idx] - stats.summary_median) / stats.summary_scale
        summary = np.clip(np.nan_to_num(summary, nan=0.0, posinf=0.0, neginf=0.0), -CLIP, CLIP)
    else:
        summary = np.zeros((n, fs.ehr_summary.shape[1]), dtype=np.float32)

    has = fs.has_cxr[idx].astype(bool)
    if "cxr" in opened:
        cxr = np.where(has[:, None], np.nan_to_num(fs.cxr[idx]), 0.0).astype(np.float32)
    else:
        cxr = np.zeros((n, fs.cxr.shape[1]), dtype=np.float32)
    if "has_cxr" in opened:
        cxr_time = np.where(has, np.nan_to_num(fs.cxr_time_hours[idx]), 0.0).astype(np.float32)
    else:
        has, cxr_time = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float32)

    if stats.demo_encoder is not None and "demographics" in opened:
        cat, num = _demo_columns(fs.demographics)
        frame = fs.demographics.iloc[idx][cat + num].copy()
        frame[cat] = _as_object(frame[cat])
        demo = np.asarray(stats.demo_encoder.transform(frame), dtype=np.float32)
    else:
        demo = np.zeros((len(idx), len(stats.demo_names)), dtype=np.float32)

    pixels = None
    if fs.cxr_pixels is not None:
        pixels = fs.cxr_pixels[torch.as_tensor(idx)]
        if "cxr_pixels" not in opened:
            pixels = torch.zeros_like(pixels)
    y = fs.y[idx]
    y_t = torch.as_tensor(y, dtype=torch.long if fs.task.kind == "multiclass" else torch.float32)
    return Tensors(
        ehr=torch.from_numpy(ehr),
        ehr_mask=torch.from_numpy(mask),
        ehr_summary=torch.from_numpy(summary.astype(np.float32)),
        cxr=torch.from_numpy(cxr),
        has_cxr=torch.from_numpy(has.astype(np.float32)),
        cxr_time_hours=torch.from_numpy(cxr_time),
        demographics=torch.from_numpy(demo),
        stay_id=torch.as_tensor(fs.stay_id[idx], dtype=torch.long),
        y=y_t,
        index=idx,
        cxr_pixels=pixels,
        demo_names=list(stats.demo_names),
        summary_names=list(fs.summary_names),
    )


#: The tensors each declared input of ``submission.yaml`` opens to the model; the others are
#: zeroed (an EHR-only entry cannot read the image it is compared without).
INPUT_FIELDS = {
    "ehr": ("ehr", "ehr_mask"),
    "ehr_summary": ("ehr_summary",),
    "cxr": ("cxr", "has_cxr", "cxr_time_hours"),
    "cxr_pixels": ("cxr_pixels", "has_cxr", "cxr_time_hours"),
    "demographics": ("demographics",),
}


def _opened(inputs: Sequence[str] | None) -> set[str]:
    """The tensors the declared ``inputs`` open (every one for ``None``)."""
    if inputs is None:
        return {name for names in INPUT_FIELDS.values() for name in names}
    return {name for i in inputs for name in INPUT_FIELDS.get(i, ())}


def restrict_inputs(t: Tensors, inputs: Sequence[str] | None) -> Tensors:
    """``t`` with every input tensor the declared ``inputs`` do not open zeroed (same shapes;
    ``None`` keeps them all)."""
    if inputs is None:
        return t
    opened = _opened(inputs)
    changes: dict[str, Any] = {
        name: torch.zeros_like(getattr(t, name))
        for names in INPUT_FIELDS.values()
        for name in names
        if name not in opened and getattr(t, name) is not None
    }
    return replace(t, **changes) if changes else t


def split_indices(
    folds: np.ndarray, k: int, *, given: np.ndarray | None = None, n_folds: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of (train, val, test) for fold ``k``.

    With ``given`` (a `FeatureSet.given_splits` table) fold k's own partition is used as is;
    otherwise the harness rule: test = k, val = k+1 (cyclic over the cohort's ``n_folds``, by
    default the highest fold number in ``folds``), the rest train.
    """
    if given is not None:
        if not 1 <= k <= given.shape[1]:
            raise InputError(
                f"fold {k} does not exist; the given splits have folds 1..{given.shape[1]}",
                fix="pass a fold number the data source defines",
            )
        col = given[:, k - 1]
        return (
            np.flatnonzero(col == PARTITION_CODES["train"]),
            np.flatnonzero(col == PARTITION_CODES["val"]),
            np.flatnonzero(col == PARTITION_CODES["test"]),
        )
    folds = np.asarray(folds)
    if n_folds is None:
        n_folds = int(folds.max()) if folds.size else 0
    if not 1 <= k <= n_folds:
        raise InputError(
            f"fold {k} does not exist; the data has folds 1..{n_folds}",
            fix="pass a fold number between 1 and the cohort's n_folds",
        )
    from harness.cohort.folds import split_masks

    train, val, test = (np.asarray(m, dtype=bool) for m in split_masks(folds, k, n_folds))
    return np.flatnonzero(train), np.flatnonzero(val), np.flatnonzero(test)


@dataclass
class FitSplit:
    """What training needs of a fold: its training and validation tensors, labels included.

    All a sandboxed worker receives (it never sees the test split nor the statistics); a full
    `Split` is one too, so the training loop accepts either.
    """

    fold: int
    train: Tensors
    val: Tensors


@dataclass
class Split(FitSplit):
    """One fold's tensors: train, validation and test, plus the training statistics."""

    test: Tensors
    stats: NormStats


def prepare_split(fs: FeatureSet, fold: int, *, stats: NormStats | None = None) -> Split:
    """Tensors for fold ``fold``; statistics are fitted on its training stays unless given."""
    n_folds = fs.n_folds
    if not 1 <= fold <= max(n_folds, 1):
        raise InputError(
            f"fold {fold} does not exist; the data has folds 1..{n_folds}",
            fix="pass a fold number between 1 and the number of folds",
        )
    train_idx, val_idx, test_idx = fs.split(fold)
    for name, part in (("training", train_idx), ("validation", val_idx), ("test", test_idx)):
        if len(part) == 0:
            raise InputError(
                f"fold {fold} leaves the {name} split empty ({len(fs)} stays in total)",
                fix="use a cohort with stays in every fold",
            )
    if stats is None:
        stats = fit_stats(fs, train_idx)
    return Split(
        fold=fold,
        train=make_tensors(fs, train_idx, stats),
        val=make_tensors(fs, val_idx, stats),
        test=make_tensors(fs, test_idx, stats),
        stats=stats,
    )


# --------------------------------------------------------------------------------------------
# Loading from the cohort and the feature store


def _label_array(stays: pd.DataFrame, task: TaskInfo, where: str) -> np.ndarray:
    missing = [c for c in task.label_columns if c not in stays.columns]
    if missing:
        raise InputError(
            f"label column(s) {missing} of task {task.name!r} are not in the cohort",
            path=where,
            fix="rebuild the cohort with this task's labels (harness cohort build)",
        )
    frame = stays[list(task.label_columns)]
    if task.kind == "multiclass":
        return frame.iloc[:, 0].to_numpy().astype(np.int64)
    arr = frame.to_numpy().astype(np.float32)
    return arr[:, 0] if task.kind == "binary" else arr


def load_feature_set(
    cohort: Cohort | str = "base",
    task: TaskInfo | TaskSpec | str = "mortality_in_hospital",
    encoder: str = "default",
) -> FeatureSet:
    """Assemble a `FeatureSet` from a built cohort, its cached EHR features and CXR embeddings.

    ``cohort`` is a cohort name or a loaded ``Cohort``; ``task`` a task name or ``TaskSpec``;
    ``encoder`` the CXR encoder whose cached embeddings are used.
    """
    from harness import store
    from harness.cohort import load_cohort
    from harness.encode.registry import encoder_key_for

    if isinstance(cohort, str):
        cohort = load_cohort(cohort)
    if isinstance(task, str):
        from harness.cohort.spec import load_task

        task = load_task(task)
    info = TaskInfo.coerce(task)
    stays = cohort.stays.reset_index(drop=True)
    where = f"cohort {cohort.fingerprint}"
    missing = [c for c in info.label_columns if c not in stays.columns]
    if missing:
        raise InputError(
            f"label column(s) {missing} of task {info.name!r} are not in the cohort",
            path=cohort.path,
            fix="rebuild the cohort with this task's labels, or evaluate another task",
        )
    labelled = stays[list(info.label_columns)].notna().all(axis=1).to_numpy()
    if not labelled.all():
        log.info("dropping %d stays without %s labels", int((~labelled).sum()), info.name)
        stays = stays.loc[labelled].reset_index(drop=True)

    ehr = store.read_ehr(cohort)
    pos = pd.Index(np.asarray(ehr.stay_id)).get_indexer(stays["stay_id"].to_numpy())
    if (pos < 0).any():
        raise InputError(
            f"{int((pos < 0).sum())} cohort stays have no cached EHR features",
            path=where,
            fix="run `harness encode` for this cohort",
        )
    values = np.asarray(ehr.values)[pos].astype(np.float32)
    observed = np.asarray(ehr.observed)[pos].astype(bool)
    summary = np.asarray(ehr.summary)[pos].astype(np.float32)

    key = encoder_key_for(encoder)
    dicom = stays["dicom_id"].astype(object).where(stays["dicom_id"].notna(), None)
    linked = stays["has_cxr"].fillna(False).astype(bool).to_numpy() & dicom.notna().to_numpy()
    ids = [str(d) for d in dicom[linked]]
    # read_cxr verifies every chunk it reads: a missing or damaged one raises (the fix is
    # `harness encode --repair`) instead of reading back as zeros.
    feats = store.read_cxr(key, ids)
    emb = np.asarray(feats.embedding, dtype=np.float32)
    cxr = np.zeros((len(stays), emb.shape[1] if emb.ndim == 2 else 0), dtype=np.float32)
    ok = np.zeros(len(stays), dtype=bool)
    cxr[linked] = emb
    ok[linked] = np.asarray(feats.ok, dtype=bool)
    zero = ok & ~cxr.any(axis=1) if cxr.shape[1] else np.zeros_like(ok)
    if zero.any():  # never pass an all-zero vector off as an image embedding
        log.warning(
            "%d images have an all-zero embedding in store %s: treated as missing "
            "(check the store with `harness encode --repair`)",
            int(zero.sum()),
            key,
        )
        ok &= ~zero
    cxr[~ok] = 0.0
    if linked.sum() and not ok[linked].all():
        log.warning("%d linked images have no usable embedding", int((~ok[linked]).sum()))
    cxr_time = stays["cxr_time_hours"].to_numpy(dtype=np.float32, na_value=np.nan)

    demo_cols = [c for c in (*DEMOGRAPHIC_NUMERIC, *DEMOGRAPHIC_CATEGORICAL) if c in stays]
    empty = [c for c in demo_cols if stays[c].isna().all()]
    if empty:  # e.g. CLIF has no insurance: a column with no value carries no information
        log.info("demographic column(s) %s have no values in this cohort; not used", empty)
        demo_cols = [c for c in demo_cols if c not in empty]
    return FeatureSet(
        stay_id=stays["stay_id"].to_numpy(np.int64),
        subject_id=stays["subject_id"].to_numpy(np.int64),
        fold=stays["fold"].to_numpy(np.int64),
        ehr_values=values,
        ehr_observed=observed,
        ehr_summary=summary,
        cxr=cxr,
        has_cxr=ok,
        cxr_time_hours=np.where(ok, cxr_time, np.nan).astype(np.float32),
        demographics=stays[demo_cols].reset_index(drop=True),
        y=_label_array(stays, info, where),
        task=info,
        variables=list(ehr.variables),
        summary_names=list(ehr.summary_names),
        provenance={
            "cohort_fingerprint": cohort.fingerprint,
            "ehr_key": ehr.key,
            "encoder": encoder,
            "encoder_key": key,
            "task": info.name,
        },
        dicom_id=dicom.to_numpy(dtype=object),
        given_splits=given_partitions(cohort.path, stays["stay_id"].to_numpy()),
    )
