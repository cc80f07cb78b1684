"""The leak checks of `harness audit`, on plain arrays and frames (no files are read here).

Each check returns a :class:`Check`: a status (``passed``, ``failed``, ``warning``, ``skipped``),
the threshold it applied in words, a one-line summary, aggregate ``details`` (counts, AUROCs,
p-values: fit for the readable report) and ``private`` findings (subject and image ids: written to
the cache's ``audit.json`` only, never published). Partitions are an (n, folds) int8 table:
:data:`TRAIN`, :data:`VAL`, :data:`TEST`, or :data:`ABSENT` where a stay is not in that fold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from harness.cohort.folds import ABSENT, PARTITION_CODES

PASSED, FAILED, WARNING, SKIPPED = "passed", "failed", "warning", "skipped"
TRAIN, VAL, TEST = (PARTITION_CODES[p] for p in ("train", "val", "test"))
PARTITION_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
#: Partition pairs across which a shared subject or image is a leak, in report order.
SPLIT_PAIRS = ((TRAIN, TEST), (VAL, TEST), (TRAIN, VAL))
#: At most this many ids per finding go to audit.json (counts are always complete).
MAX_PRIVATE = 1000

#: A variable (or the image embedding) whose AUROC for a label on training data is above this is
#: a label leak: nothing measured before the prediction time should separate the classes that well.
LEAK_AUROC = 0.98
#: A label needs this many positives and negatives among the rows a feature is observed on before
#: its AUROC is judged (fewer: an AUROC of 1.0 happens by chance).
MIN_CLASS = 20
#: Distribution shift: a fold differs when the BH-adjusted p-value of its test is below this.
SHIFT_Q = 0.001


@dataclass
class Check:
    """One check's outcome (see the module docstring)."""

    name: str
    status: str
    threshold: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    private: dict[str, Any] = field(default_factory=dict)

    def record(self, *, private: bool = True) -> dict[str, Any]:
        out = {
            "status": self.status,
            "threshold": self.threshold,
            "summary": self.summary,
            "details": self.details,
        }
        if private:
            out["private"] = self.private
        return out


def pair_name(a: int, b: int) -> str:
    return f"{PARTITION_NAMES[a]}-{PARTITION_NAMES[b]}"


def fold_names(n_folds: int) -> list[str]:
    return [f"fold{k}" for k in range(1, n_folds + 1)]


# ----------------------------------------------------------------------------- subject overlap


def subject_overlap(
    subject_id: np.ndarray, partitions: np.ndarray, *, given: bool = False
) -> Check:
    """Subjects with stays in two partitions (train/val/test) of the same fold.

    Folds are built by subject, so any such subject means the model saw a test patient in
    training. ``given`` says the partitions came with the data (a CareBench folder's splits).
    """
    subject_id = np.asarray(subject_id, dtype=np.int64)
    per_fold: dict[str, dict[str, int]] = {}
    leaked: set[int] = set()
    for k, name in enumerate(fold_names(partitions.shape[1])):
        col = partitions[:, k]
        present = col != ABSENT
        frame = pd.DataFrame({"s": subject_id[present], "p": col[present]}).drop_duplicates()
        members = frame.groupby("s")["p"].agg(frozenset)
        counts = {}
        for a, b in SPLIT_PAIRS:
            both = members[members.map(lambda m, a=a, b=b: a in m and b in m)]
            counts[pair_name(a, b)] = int(len(both))
            leaked.update(int(s) for s in both.index)
        per_fold[name] = counts
    n = len(leaked)
    source = "the data's own partitions" if given else "the harness's subject folds"
    return Check(
        name="subject_overlap",
        status=FAILED if n else PASSED,
        threshold="0 subjects in two partitions (train, val, test) of any fold",
        summary=(
            f"{n} subject(s) appear in two partitions of a fold ({source})"
            if n
            else f"no subject appears in two partitions of any fold ({source})"
        ),
        details={
            "partitions": "given" if given else "harness",
            "per_fold": per_fold,
            "n_subjects": int(len(np.unique(subject_id))),
            "n_leaking_subjects": n,
        },
        private={"subject_ids": sorted(leaked)[:MAX_PRIVATE]},
    )


# ------------------------------------------------------------------------------- time leakage


def time_leakage(
    stays: pd.DataFrame,
    hourly: pd.DataFrame,
    *,
    prediction_hours: float,
    lookback_hours: float = 0.0,
    observed: np.ndarray | None = None,
    observed_stay_ids: np.ndarray | None = None,
    observed_variables: Sequence[str] | None = None,
    source_image_times: pd.Series | None = None,
) -> Check:
    """Every EHR value and every linked image must be dated before the stay's prediction time.

    Checked on the cohort files: hours of the hourly series (counted from ICU admission) below
    ``prediction_hours``; ``prediction_time = intime + prediction_hours``; each linked image's
    ``cxr_time_hours`` below ``prediction_hours``. Where given: the EHR feature cache
    (``observed``: stays x hours x variables, rows ``observed_stay_ids``, columns
    ``observed_variables``) holds no value at or after the prediction hour and none the hourly
    series lacks, and ``source_image_times`` (dicom_id -> study time, re-read from the image
    source's metadata) puts each linked image before its stay's prediction time, at the time the
    cohort records. Values or images dated before the window (before admission, or before the
    image look-back) are counted but are not leaks.
    """
    findings: dict[str, int] = {}
    private: dict[str, Any] = {}
    hours = hourly["hour"].to_numpy()
    late = hours >= prediction_hours
    findings["ehr_values_after_prediction"] = int(late.sum())
    findings["ehr_values_before_admission"] = int((hours < 0).sum())
    if late.any():
        rows = hourly.loc[late]
        private["ehr_stays"] = sorted(int(s) for s in rows["stay_id"].unique())[:MAX_PRIVATE]
        findings["ehr_stays_affected"] = int(rows["stay_id"].nunique())
        findings["ehr_variables_affected"] = int(rows["variable"].nunique())
    if observed is not None:
        first = int(np.ceil(prediction_hours))
        late_cells = observed[:, first:, :].any(axis=(1, 2))
        findings["cache_stays_with_values_after_prediction"] = int(late_cells.sum())
        flagged = late_cells.copy()
        if observed_stay_ids is not None and observed_variables is not None:
            # the cache must hold exactly the series' cells: one it has that the series lacks
            # was computed from something else (a stale or wrongly built cache)
            n, t, f = observed.shape
            s_pos = pd.Index(np.asarray(observed_stay_ids)).get_indexer(
                pd.Index(hourly["stay_id"].to_numpy())
            )
            v_pos = pd.Index(list(observed_variables)).get_indexer(
                pd.Index(hourly["variable"].astype(str).to_numpy())
            )
            ok = (s_pos >= 0) & (v_pos >= 0) & (hours >= 0) & (hours < t)
            series = np.zeros(n * t * f, dtype=bool)
            series[(s_pos[ok] * t + hours[ok].astype(np.int64)) * f + v_pos[ok]] = True
            extra = observed.reshape(-1) & ~series
            extra_stays = extra.reshape(n, t * f).any(axis=1)
            findings["cache_values_not_in_series"] = int(extra.sum())
            flagged |= extra_stays
        if flagged.any() and observed_stay_ids is not None:
            ids = np.asarray(observed_stay_ids)[flagged]
            private["cache_stays"] = [int(s) for s in ids][:MAX_PRIVATE]
    expected = stays["intime"] + pd.to_timedelta(prediction_hours, unit="h")
    off = (stays["prediction_time"] - expected).abs() > pd.Timedelta(seconds=1)
    findings["stays_with_wrong_prediction_time"] = int(off.sum())
    has = stays["has_cxr"].fillna(0).astype(bool) & stays["dicom_id"].notna()
    t_img = stays.loc[has, "cxr_time_hours"].astype(float)
    bad = t_img >= prediction_hours
    findings["images_after_prediction"] = int(bad.sum())
    findings["images_before_window"] = int((t_img < -lookback_hours).sum())
    findings["images_without_time"] = int(t_img.isna().sum())
    if bad.any():
        private["images"] = [str(d) for d in stays.loc[t_img.index[bad], "dicom_id"]][:MAX_PRIVATE]
    if source_image_times is not None:
        linked = stays.loc[has]
        study = linked["dicom_id"].astype(str).map(source_image_times)
        unknown = study.isna()
        findings["images_not_in_source"] = int(unknown.sum())
        after = ~unknown & (study >= linked["prediction_time"])
        findings["images_after_prediction_in_source"] = int(after.sum())
        recorded = linked["intime"] + pd.to_timedelta(linked["cxr_time_hours"], unit="h")
        differs = ~unknown & ((study - recorded).abs() > pd.Timedelta(minutes=1))
        findings["images_time_differs_from_source"] = int(differs.sum())
        if (after | differs).any():
            private["source_images"] = [str(d) for d in linked.loc[after | differs, "dicom_id"]][
                :MAX_PRIVATE
            ]
    leaks = {k: v for k, v in findings.items() if v and k in LEAK_FINDINGS}
    checked = "hourly EHR series, prediction times, linked image times"
    if observed is not None:
        checked += ", the EHR feature cache"
    if source_image_times is not None:
        checked += ", image times re-read from the source metadata"
    return Check(
        name="time_leakage",
        status=FAILED if leaks else PASSED,
        threshold=(
            f"0 EHR values or images at or after the prediction time (hour {prediction_hours:g} "
            "of the stay), 0 cache values the series lacks, 0 image times differing from the "
            "source"
        ),
        summary=(
            "found " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in leaks.items())
            if leaks
            else f"nothing dated at or after the prediction time ({checked})"
        ),
        details={"checked": checked, **findings},
        private=private,
    )


#: Findings of `time_leakage` that are leaks (the others are counted for the report).
LEAK_FINDINGS = frozenset(
    {
        "ehr_values_after_prediction",
        "cache_stays_with_values_after_prediction",
        "cache_values_not_in_series",
        "stays_with_wrong_prediction_time",
        "images_after_prediction",
        "images_after_prediction_in_source",
        "images_time_differs_from_source",
    }
)


# ------------------------------------------------------------------------------ label leakage


def auroc_matrix(
    x: np.ndarray, labels: np.ndarray, *, min_class: int = MIN_CLASS
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC of every feature (columns of ``x``, NaN = unobserved) for every binary label
    (columns of ``labels``, NaN = unlabelled), on the rows where both are known.

    The Mann-Whitney statistic from average ranks; NaN where a label has fewer than
    ``min_class`` positives or negatives among those rows. Returns (auroc, n_minority), both
    (features, labels).
    """
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    p, n_labels = x.shape[1], labels.shape[1]
    out = np.full((p, n_labels), np.nan)
    minority = np.zeros((p, n_labels), dtype=np.int64)
    label_known = ~np.isnan(labels)
    complete = label_known.all(axis=0)
    for j in range(p):
        seen = ~np.isnan(x[:, j])
        if seen.sum() < 2 * min_class:
            continue
        # labels known on every row share one ranking; the others get their own
        groups = [(np.flatnonzero(complete), seen)] + [
            (np.array([c]), seen & label_known[:, c]) for c in np.flatnonzero(~complete)
        ]
        for cols, rows in groups:
            if not len(cols) or rows.sum() < 2 * min_class:
                continue
            r = rankdata(x[rows, j])
            y = labels[np.ix_(rows, cols)] == 1
            n1 = y.sum(axis=0)
            n0 = len(r) - n1
            minority[j, cols] = np.minimum(n1, n0)
            with np.errstate(invalid="ignore", divide="ignore"):
                u = r @ y - n1 * (n1 + 1) / 2.0
                auc = u / (n1 * n0)
            auc[(n1 < min_class) | (n0 < min_class)] = np.nan
            out[j, cols] = auc
    return out, minority


def embedding_auroc(
    emb: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, min_class: int = MIN_CLASS
) -> np.ndarray:
    """Out-of-fold AUROC per label of a ridge model on the image embedding (a small-model
    probe: 3 folds grouped by subject, standardised inputs, one fit for every label)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_labels = labels.shape[1]
    out = np.full(n_labels, np.nan)
    known = ~np.isnan(labels).any(axis=1)
    emb, labels, groups = emb[known], labels[known], groups[known]
    if len(np.unique(groups)) < 3 or len(emb) < 2 * min_class:
        return out
    model = make_pipeline(StandardScaler(), Ridge(alpha=float(emb.shape[1])))
    pred = cross_val_predict(model, emb, labels, groups=groups, cv=GroupKFold(3))
    pred = pred.reshape(len(emb), n_labels)
    auc, _ = auroc_matrix(pred, labels, min_class=min_class)
    return np.diag(auc)


def label_leakage(
    features: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    embedding: np.ndarray | None = None,
    embedding_rows: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    threshold: float = LEAK_AUROC,
    min_class: int = MIN_CLASS,
) -> Check:
    """Each input variable's univariate AUROC for each label (oriented: max(a, 1 - a)), and a
    ridge probe's on the image embedding, on training rows; above ``threshold`` is a leak.

    ``features`` and ``labels`` are aligned rows (training stays); ``embedding`` holds the image
    rows ``embedding_rows`` (positions in those rows) with ``groups`` (subject per row).
    """
    auc, _ = auroc_matrix(
        features.to_numpy(np.float64), labels.to_numpy(np.float64), min_class=min_class
    )
    oriented = np.fmax(auc, 1.0 - auc)
    names = list(features.columns)
    label_names = list(labels.columns)
    flagged: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    for c, label in enumerate(label_names):
        col = oriented[:, c]
        if np.all(np.isnan(col)):
            best[label] = {"feature": None, "auroc": None}
            continue
        j = int(np.nanargmax(col))
        best[label] = {"feature": names[j], "auroc": round(float(col[j]), 4)}
        for jj in np.flatnonzero(col > threshold):
            flagged.append(
                {"label": label, "feature": names[jj], "auroc": round(float(col[jj]), 4)}
            )
    emb_best: dict[str, float | None] = {}
    if embedding is not None and len(embedding) and groups is not None:
        rows = np.asarray(embedding_rows)
        probe = embedding_auroc(
            np.asarray(embedding, np.float64),
            labels.to_numpy(np.float64)[rows],
            groups,
            min_class=min_class,
        )
        probe = np.fmax(probe, 1.0 - probe)
        for c, label in enumerate(label_names):
            v = probe[c]
            emb_best[label] = None if np.isnan(v) else round(float(v), 4)
            if not np.isnan(v) and v > threshold:
                flagged.append(
                    {"label": label, "feature": "cxr_embedding", "auroc": round(float(v), 4)}
                )
    judged = int(np.isfinite(oriented).any(axis=0).sum())
    status = FAILED if flagged else PASSED
    if not flagged and judged == 0:
        status = SKIPPED
    summary = (
        f"{len(flagged)} input(s) predict a label almost perfectly: "
        + ", ".join(f"{f['feature']} -> {f['label']} (AUROC {f['auroc']:.3f})" for f in flagged[:5])
        if flagged
        else (
            f"no input predicts a label with AUROC > {threshold:g} ({len(names)} features"
            f"{' and the image embedding' if emb_best else ''}, {judged} labels judged)"
            if judged
            else f"no label has {min_class} positives and negatives on training data"
        )
    )
    return Check(
        name="label_leakage",
        status=status,
        threshold=(
            f"univariate AUROC (or the embedding probe's) <= {threshold:g} on training data; "
            f"labels with >= {min_class} positives and negatives"
        ),
        summary=summary,
        details={
            "n_features": len(names),
            "n_rows": int(len(features)),
            "flagged": flagged,
            "strongest_feature": best,
            "embedding_probe": emb_best,
        },
    )


# -------------------------------------------------------------------------- distribution shift


def distribution_shift(
    fold: np.ndarray, labels: pd.DataFrame, variables: pd.DataFrame, *, q: float = SHIFT_Q
) -> Check:
    """Per fold: the prevalence of each label (chi-square test of homogeneity over folds) and
    the distribution of each key variable (Kruskal-Wallis over folds). P-values are adjusted
    together (Benjamini-Hochberg); a test with q < ``q`` is reported with the fold that
    departs most. A warning, never a failure: folds may differ by chance or by design."""
    from scipy.stats import chi2_contingency, kruskal

    from harness.metrics.comparisons import benjamini_hochberg

    fold = np.asarray(fold)
    folds = sorted(int(f) for f in np.unique(fold))
    tests: list[dict[str, Any]] = []
    prevalence: dict[str, dict[str, float | None]] = {}
    for name in labels.columns:
        y = labels[name].to_numpy(np.float64)
        ok = ~np.isnan(y)
        table = pd.crosstab(fold[ok], y[ok] == 1)
        prevalence[name] = {
            f"fold{f}": round(float(np.mean(y[ok & (fold == f)] == 1)), 4)
            if (ok & (fold == f)).any()
            else None
            for f in folds
        }
        if table.shape[0] < 2 or table.shape[1] < 2:
            continue
        p = float(chi2_contingency(table.to_numpy())[1])
        rate = table[True] / table.sum(axis=1)
        overall = float((y[ok] == 1).mean())
        tests.append(
            {
                "kind": "prevalence",
                "name": name,
                "p": p,
                "fold": f"fold{int(str((rate - overall).abs().idxmax()))}",
            }
        )
    medians: dict[str, dict[str, float | None]] = {}
    for name in variables.columns:
        x = variables[name].to_numpy(np.float64)
        parts = [x[(fold == f) & ~np.isnan(x)] for f in folds]
        medians[name] = {
            f"fold{f}": round(float(np.median(v)), 4) if len(v) else None
            for f, v in zip(folds, parts, strict=True)
        }
        parts_ok = [v for v in parts if len(v)]
        if len(parts_ok) < 2 or len(np.unique(np.concatenate(parts_ok))) < 2:
            continue
        p = float(kruskal(*parts_ok).pvalue)
        centre = np.median(np.concatenate(parts_ok))
        far = max(
            zip(folds, parts, strict=True),
            key=lambda fp: abs(np.median(fp[1]) - centre) if len(fp[1]) else -1,
        )[0]
        tests.append({"kind": "variable", "name": name, "p": p, "fold": f"fold{far}"})
    if tests:
        adjusted = benjamini_hochberg([t["p"] for t in tests])
        for t, a in zip(tests, adjusted, strict=True):
            t["q"] = float(a)
    differing = [{**t, "p": round(t["p"], 6), "q": round(t["q"], 6)} for t in tests if t["q"] < q]
    return Check(
        name="distribution_shift",
        status=WARNING if differing else PASSED,
        threshold=(
            f"label prevalence (chi-square) and key variables (Kruskal-Wallis) across folds; "
            f"BH-adjusted q < {q:g} is reported"
        ),
        summary=(
            f"{len(differing)} of {len(tests)} distributions differ between folds: "
            + ", ".join(f"{t['name']} ({t['fold']}, q={t['q']:.1e})" for t in differing[:5])
            if differing
            else f"no label prevalence or key variable differs between folds ({len(tests)} tests)"
        ),
        details={
            "n_tests": len(tests),
            "differing": differing,
            "prevalence": prevalence,
            "medians": medians,
        },
    )


def pairs_by_split(
    a: np.ndarray, b: np.ndarray, partitions: np.ndarray, fold: np.ndarray
) -> tuple[dict[str, dict[str, int]], dict[str, int], np.ndarray]:
    """Classify pairs of rows (``a[i]``, ``b[i]``): per evaluation fold, the count in each pair
    of different partitions; per pair of the ``fold`` column, the count; and a mask of the pairs
    that cross a split in at least one fold."""
    per_fold: dict[str, dict[str, int]] = {}
    crossing = np.zeros(len(a), dtype=bool)
    for k, name in enumerate(fold_names(partitions.shape[1])):
        pa, pb = partitions[a, k], partitions[b, k]
        counts = {}
        for x, y in SPLIT_PAIRS:
            hit = ((pa == x) & (pb == y)) | ((pa == y) & (pb == x))
            counts[pair_name(x, y)] = int(hit.sum())
            crossing |= hit
        per_fold[name] = counts
    by_fold_pair: dict[str, int] = {}
    fa, fb = np.minimum(fold[a], fold[b]), np.maximum(fold[a], fold[b])
    for x, y in combinations(sorted({int(f) for f in np.unique(fold)}), 2):
        n = int(((fa == x) & (fb == y)).sum())
        if n:
            by_fold_pair[f"fold{x}-fold{y}"] = n
    return per_fold, by_fold_pair, crossing


def key_variables(
    summary: np.ndarray, summary_names: Sequence[str], stays: pd.DataFrame
) -> pd.DataFrame:
    """The variables the shift check compares across folds: age, image availability, and for
    every EHR variable its mean value and its observed-hour count over the window."""
    cols: dict[str, np.ndarray] = {}
    if "age" in stays:
        cols["age"] = stays["age"].to_numpy(np.float64)
    if "has_cxr" in stays:
        cols["has_cxr"] = stays["has_cxr"].fillna(0).to_numpy(np.float64)
    for j, name in enumerate(summary_names):
        if name.endswith("__mean") or name.endswith("__count"):
            cols[name] = summary[:, j].astype(np.float64)
    return pd.DataFrame(cols)


def demographic_features(stays: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """Numeric and one-hot demographic columns as features (``columns``: name -> numeric |
    categorical); a category seen on fewer than 2 rows is dropped."""
    out: dict[str, np.ndarray] = {}
    for name, kind in columns.items():
        if name not in stays or stays[name].isna().all():
            continue
        if kind == "numeric":
            out[name] = pd.to_numeric(stays[name], errors="coerce").to_numpy(np.float64)
            continue
        values = stays[name].astype("string")
        for level, n in values.value_counts().items():
            if n >= 2:
                out[f"{name}={level}"] = np.where(values.isna(), np.nan, values == level).astype(
                    np.float64
                )
    return pd.DataFrame(out, index=stays.index)
