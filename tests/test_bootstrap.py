"""Patient-level bootstrap: shared resamples, batched kernels vs a slow loop, CIs, p-values."""

from __future__ import annotations

import numpy as np
import pytest
from test_metrics import make_data  # tests/ is on sys.path (rootdir-less test modules)

from harness.metrics.bootstrap import (
    DEFAULT_BOOTSTRAP_SEED,
    bootstrap_indices,
    bootstrap_metric,
    bootstrap_p_value,
    paired_metric_delta,
    percentile_ci,
)
from harness.metrics.registry import METRICS


def _subjects(n: int, seed: int = 3) -> np.ndarray:
    # about two stays per subject, ids not contiguous
    return np.random.default_rng(seed).integers(0, n // 2, n) * 7 + 1000


def test_resamples_are_subject_level_and_order_independent():
    subj = _subjects(200)
    r = bootstrap_indices(subj, n_resamples=50)
    assert r.seed == DEFAULT_BOOTSTRAP_SEED
    n_subj = np.unique(subj).size
    for b in range(r.n_resamples):
        # every stay of a subject has the subject's multiplicity
        per_subject = {}
        for s, c in zip(subj, r.counts[b], strict=True):
            assert per_subject.setdefault(s, c) == c
        assert sum(per_subject.values()) == n_subj  # n_subj draws per resample
    perm = np.random.default_rng(0).permutation(subj.size)
    r2 = bootstrap_indices(subj[perm], n_resamples=50)
    np.testing.assert_array_equal(r2.counts, r.counts[:, perm])
    assert r2.key == r.key
    r3 = bootstrap_indices(subj, n_resamples=50, seed=1)
    assert r3.key != r.key and not np.array_equal(r3.counts, r.counts)


@pytest.mark.parametrize("name", METRICS.names())
def test_batched_equals_slow_loop_on_repeated_rows(name):
    """The fast kernels equal scikit-learn-based metrics on the explicitly resampled rows."""
    metric = METRICS.get(name)
    y, s = make_data(metric.kind, seed=11, n=240)
    r = bootstrap_indices(_subjects(240), n_resamples=20)
    fast = bootstrap_metric(name, y, s, r)
    slow = np.array([metric(y[r.indices(b)], s[r.indices(b)]) for b in range(r.n_resamples)])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9, equal_nan=True)


def test_batched_auroc_nan_when_a_resample_has_one_class():
    y = np.array([1, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3])
    w = np.array([[0, 1, 1, 2], [1, 1, 0, 0]])
    out = bootstrap_metric("auroc", y, s, type("R", (), {"counts": w})())
    assert np.isnan(out[0]) and out[1] == 1.0


def test_percentile_ci_and_p_value_hand_cases():
    v = np.arange(1001, dtype=float)
    assert percentile_ci(v) == pytest.approx((25.0, 975.0))
    assert percentile_ci(np.r_[v, np.nan]) == pytest.approx((25.0, 975.0))
    assert np.isnan(percentile_ci(np.array([np.nan]))[0])
    # all deltas positive: p = 2 * (1 + 0) / (1 + 99)
    assert bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(0.02)
    # symmetric around zero: p = 1
    assert bootstrap_p_value(np.r_[-np.ones(50), np.ones(50)]) == 1.0
    d = np.r_[np.full(10, -0.1), np.full(89, 0.2)]  # 10 of 99 at or below zero
    assert bootstrap_p_value(d) == pytest.approx(2 * 11 / 100)


def test_paired_delta_identical_and_better_model():
    rng = np.random.default_rng(5)
    n = 600
    y = rng.integers(0, 2, n)
    weak = 0.2 * y + rng.random(n)
    strong = 1.0 * y + rng.random(n)
    r = bootstrap_indices(_subjects(n), n_resamples=200)
    same = paired_metric_delta("auroc", y, weak, weak, r)
    assert same.delta == 0 and same.ci_low == 0 and same.p_value == 1.0
    better = paired_metric_delta("auroc", y, strong, weak, r)
    assert better.delta > 0.2 and better.ci_low > 0 and better.p_value < 0.05
    # the CI brackets the point delta and matches an explicit percentile of paired differences
    a = bootstrap_metric("auroc", y, strong, r)
    b = bootstrap_metric("auroc", y, weak, r)
    assert (better.ci_low, better.ci_high) == pytest.approx(
        tuple(np.percentile(a - b, [2.5, 97.5]))
    )
