"""Fairness tables vs a plain pandas groupby; suppression, thresholds, fairlearn gap functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from harness.errors import InputError
from harness.metrics.fairness import (
    binary_fairness,
    fairness_groups,
    multiclass_fairness,
    select_threshold,
)


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(7)
    n = 900
    stays = pd.DataFrame(
        {
            "age": rng.integers(18, 95, n),
            "gender": rng.choice(["F", "M"], n),
            "race_group": rng.choice(
                ["WHITE", "BLACK", "ASIAN", "RARE"], n, p=[0.6, 0.25, 0.14, 0.01]
            ),
            "insurance": rng.choice(["Medicare", "Medicaid", None], n),
            "admission_type": rng.choice(["EMERGENCY", "ELECTIVE"], n),
            "dicom_id": np.where(rng.random(n) < 0.5, "img", None),
        }
    )
    y = rng.integers(0, 2, n)
    # planted unfairness: BLACK positives get lower scores -> lowest TPR
    shift = np.where((stays.race_group == "BLACK") & (y == 1), -0.35, 0.0)
    p = np.clip(0.25 + 0.4 * y + shift + 0.35 * rng.random(n), 0, 1)
    return stays, y, p


def _pandas_table(y, p, thr, g):
    df = pd.DataFrame({"y": y, "p": p, "d": (p >= thr).astype(int), "g": g})
    rows = {}
    for name, sub in df.groupby("g"):
        pos, neg = sub[sub.y == 1], sub[sub.y == 0]
        rows[name] = {
            "n": len(sub),
            "prevalence": sub.y.mean(),
            "auroc": roc_auc_score(sub.y, sub.p),
            "auprc": average_precision_score(sub.y, sub.p),
            "auprc_lift": average_precision_score(sub.y, sub.p) / sub.y.mean(),
            "tpr": pos.d.mean(),
            "fpr": neg.d.mean(),
            "ppv": sub[sub.d == 1].y.mean(),
            "selection_rate": sub.d.mean(),
        }
    return pd.DataFrame(rows).T


def test_groups_derivation_and_unknown(cohort):
    stays, _, _ = cohort
    g = fairness_groups(stays)
    assert set(g.age_group) <= {"18-40", "40-60", "60-80", "80+"}
    assert (g.age_group[stays.age == 40] == "40-60").all()
    assert set(g.has_cxr) == {"yes", "no"}
    assert (g.insurance[stays.insurance.isna()] == "Unknown").all()
    assert (g["gender*race_group"] == g.gender + "|" + g.race_group).all()
    assert g.shape[1] == 6 + 15
    with pytest.raises(InputError, match="(?s)'insurance' is missing.*Fix: add"):
        fairness_groups(stays.drop(columns="insurance"))


def test_tables_match_pandas_groupby(cohort):
    stays, y, p = cohort
    groups = fairness_groups(stays, intersections=False)
    report = binary_fairness(y, p, groups, threshold=0.5, min_group_size=20)
    for attr in groups.columns:
        expected = _pandas_table(y, p, 0.5, groups[attr])
        table = report["attributes"][attr]
        kept = [r for r in table["groups"] if not r["suppressed"]]
        positives = expected.n * expected.prevalence
        big = (expected.n >= 20) & (positives >= 10) & (expected.n - positives >= 10)
        assert {r["group"] for r in kept} == set(expected.index[big])
        for row in kept:
            for col in expected.columns:
                assert row[col] == pytest.approx(expected.loc[row["group"], col], abs=1e-12)
        kept_names = [r["group"] for r in kept if r["group"] != "Unknown"]  # not compared
        ref = expected.loc[kept_names]
        assert table["summary"]["auroc"]["difference"] == pytest.approx(
            ref.auroc.max() - ref.auroc.min()
        )
        assert table["summary"]["tpr"]["worst_group"] == ref.tpr.idxmin()
        assert table["summary"]["fpr"]["worst_group"] == ref.fpr.idxmax()
        mask = groups[attr].isin(kept_names).to_numpy()
        d = (p >= 0.5).astype(int)
        assert table["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y[mask], d[mask], sensitive_features=groups[attr][mask])
        )
        assert table["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(y[mask], d[mask], sensitive_features=groups[attr][mask])
        )
    race = report["attributes"]["race_group"]
    assert race["summary"]["tpr"]["worst_group"] == "BLACK"  # the planted truth


def test_small_groups_are_suppressed_without_numbers(cohort):
    stays, y, p = cohort
    groups = fairness_groups(stays, ["race_group"], intersections=False)
    table = binary_fairness(y, p, groups, threshold=0.5)["attributes"]["race_group"]
    rare = [r for r in table["groups"] if r["group"] == "RARE"]
    assert rare == [{"group": "RARE", "suppressed": True}]
    assert table["n_suppressed_groups"] == 1
    big = binary_fairness(y, p, groups, threshold=0.5, min_group_size=1000)["attributes"]
    assert all(r["suppressed"] for r in big["race_group"]["groups"])
    assert big["race_group"]["summary"] == {}


def test_per_stay_threshold_and_gap_tests(cohort):
    stays, y, p = cohort
    groups = fairness_groups(stays, ["gender", "race_group"], intersections=False)
    thr = np.where(np.arange(len(y)) % 2 == 0, 0.4, 0.6)
    report = binary_fairness(y, p, groups, threshold=thr, n_permutations=2000)
    expected = _pandas_table(y, p, thr, groups.gender)
    f_row = next(r for r in report["attributes"]["gender"]["groups"] if r["group"] == "F")
    assert f_row["tpr"] == pytest.approx(expected.loc["F", "tpr"])
    race = report["attributes"]["race_group"]
    assert "gap_ci" not in race  # a percentile CI of a max - min gap is biased upward
    gap = race["gap_test"]["tpr_difference"]
    assert gap["difference"] == pytest.approx(race["summary"]["tpr"]["difference"])
    assert gap["p_value"] < 0.01  # the planted BLACK TPR deficit
    assert report["gap_inference"]["n_permutations"] == 2000


def test_select_threshold_maximises_youden_on_validation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + 0.7 * rng.random(300), 0, 1)
    thr = select_threshold(y, p)
    fpr, tpr, cand = roc_curve(y, p)
    best = max(tpr[i] - fpr[i] for i in range(len(cand)))
    d = p >= thr
    assert d[y == 1].mean() - d[y == 0].mean() == pytest.approx(best)
    assert select_threshold(np.zeros(5), np.linspace(0, 1, 5)) == 0.5


def test_multiclass_tables_match_pandas(cohort):
    stays, _, _ = cohort
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, len(stays))
    probs = rng.dirichlet(np.ones(4), len(stays))
    groups = fairness_groups(stays, ["gender"], intersections=False)
    table = multiclass_fairness(y, probs, groups)["attributes"]["gender"]
    acc = pd.Series(probs.argmax(1) == y).groupby(groups.gender.to_numpy()).mean()
    for row in table["groups"]:
        assert row["accuracy"] == pytest.approx(acc[row["group"]])


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_vectorised_group_metrics_equal_fairlearn_metricframe(cohort, kind):
    """All groups at once through the batched kernels = fairlearn's MetricFrame calling each
    per-group function group by group, to 1e-12 (NaN where a group lacks a class)."""
    from harness.metrics.fairness import (
        BINARY_GROUP_METRICS,
        MULTICLASS_GROUP_METRICS,
        group_values,
        metric_frame,
    )

    stays, y, p = cohort
    metrics = BINARY_GROUP_METRICS if kind == "binary" else MULTICLASS_GROUP_METRICS
    if kind == "multiclass":
        rng = np.random.default_rng(3)
        y = rng.integers(0, 3, len(stays))
        p = rng.dirichlet(np.ones(3), len(stays))
    decision = (np.asarray(p) >= 0.5).astype(int) if kind == "binary" else np.zeros(len(y), int)
    g = fairness_groups(stays)["race_group*insurance"].to_numpy().astype(str)
    groups = sorted(set(g))
    codes = pd.Index(groups).get_indexer(pd.Index(g))
    fast = group_values(metrics, y, p, decision, codes, len(groups))
    slow = metric_frame(metrics, y, p, decision, g).by_group.astype(float)
    assert any(np.isnan(slow[m]).any() for m in slow.columns) or kind == "multiclass"
    for name in metrics:
        np.testing.assert_allclose(fast[name], slow.loc[groups, name].to_numpy(), atol=1e-12)
