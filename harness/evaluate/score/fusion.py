"""Fusion gain: per label of a multilabel task, the entry's AUROC minus a reference's.

``fusion_gain`` is the gain over one reference (the EHR-only one); ``fusion_gain_unimodal`` over
the better single modality on each label. Each label's p-value is BH-adjusted within the family
named in ``bh_family`` (the entry's labels), and ``significant`` means delta > 0 with q < alpha.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.evaluate.score.accuracy import check_runs
from harness.metrics.bootstrap import Resamples
from harness.metrics.comparisons import BH_FAMILY, fusion_gain

#: The metric fusion gains are measured in.
GAIN_METRIC = "auroc"


def state_family(gain: dict[str, Any]) -> dict[str, Any]:
    """Name the Benjamini-Hochberg family of a fusion-gain block and its size (defined p)."""
    gain["bh_family"] = BH_FAMILY
    gain["bh_m"] = sum(1 for row in gain["labels"].values() if row.get("p_value") is not None)
    return gain


def gain_over(
    labels: Sequence[str],
    y: np.ndarray,
    runs: list[np.ndarray],
    reference: str,
    ref_runs: list[np.ndarray],
    r: Resamples,
    alpha: float,
) -> dict[str, Any]:
    """``fusion_gain``: the per-label gain over one reference."""
    return state_family(
        {
            "reference": reference,
            "metric": GAIN_METRIC,
            "alpha": alpha,
            "labels": fusion_gain(labels, y, runs, ref_runs, r, alpha=alpha),
        }
    )


def gain_over_best(
    labels: Sequence[str],
    y: np.ndarray,
    runs: list[np.ndarray],
    references: Mapping[str, list[np.ndarray]],
    r: Resamples,
    alpha: float,
) -> dict[str, Any]:
    """``fusion_gain_unimodal``: per label, the gain over the best of ``references`` on it
    (by their own point value on that label)."""
    return state_family(
        {
            "references": list(references),
            "metric": GAIN_METRIC,
            "alpha": alpha,
            "labels": fusion_gain(labels, y, runs, dict(references), r, alpha=alpha),
        }
    )


def fusion_blocks(
    labels: Sequence[str],
    y: np.ndarray,
    runs: list[np.ndarray],
    reference_probs: Mapping[str, Sequence[np.ndarray]],
    shape: tuple,
    r: Resamples,
    *,
    fusion_reference: str | None,
    unimodal_references: Sequence[str] | None,
    alpha: float,
) -> dict[str, Any]:
    """``fusion_gain`` over ``fusion_reference`` (default: the first reference) and, with two
    or more ``unimodal_references`` given, ``fusion_gain_unimodal`` over the best of them."""
    name = fusion_reference or next(iter(reference_probs))
    ref = check_runs("fusion reference", reference_probs[name], shape)
    out = {"fusion_gain": gain_over(labels, y, runs, name, ref, r, alpha)}
    uni = [n for n in (unimodal_references or ()) if n in reference_probs]
    if len(uni) >= 2:
        named = {n: check_runs(n, reference_probs[n], shape) for n in uni}
        out["fusion_gain_unimodal"] = gain_over_best(labels, y, runs, named, r, alpha)
    return out
