"""Statistical validity of the scoring: fairness gap inference, p-value resolution and BH families,
validation thresholds, one-class resamples, cross-cohort resamples, ECE bins, robustness CIs.

Simulation tests use fixed seeds (deterministic) and run in seconds.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from harness.evaluate import paths, pooling, units
from harness.evaluate.score import score_predictions
from harness.evaluate.score.cross_cohort import cross_block
from harness.leaderboard import publish, summary
from harness.metrics import bootstrap, comparisons, fairness
from harness.metrics.bootstrap import (
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_N_RESAMPLES,
    bootstrap_indices,
    bootstrap_metric,
    paired_metric_delta,
    percentile_ci,
)
from harness.metrics.fairness import binary_fairness, select_threshold
from harness.metrics.registry import METRICS

# --------------------------------------------------------------------------------------------
# 1. Fairness: gap inference that holds its level, suppression, Unknown


SIZES = (1500, 500, 150, 60, 25)  # five groups, 1,500 down to 25 stays


def _fairness_data(rng, tpr: dict[int, float], base_tpr=0.6, fpr=0.3, prevalence=0.5):
    g = np.repeat([f"g{i}" for i in range(len(SIZES))], SIZES)
    k = np.repeat(np.arange(len(SIZES)), SIZES)
    y = (rng.random(g.size) < prevalence).astype(int)
    rate = np.where(y == 1, np.array([tpr.get(i, base_tpr) for i in k]), fpr)
    decided = rng.random(g.size) < rate
    u = rng.random(g.size)
    p = np.where(decided, 0.5 + 0.5 * u, 0.5 * u)  # threshold 0.5 reproduces `decided`
    return y, p, pd.DataFrame({"race_group": g})


def _compared(y, g) -> list[str]:
    """The groups binary_fairness compares: >= 20 stays, >= 10 positives and negatives."""
    return [
        x for x in np.unique(g)
        if (g == x).sum() >= 20
        and min(((g == x) & (y == 1)).sum(), ((g == x) & (y == 0)).sum()) >= 10
    ]  # fmt: skip


def _gap_p(y, p, groups) -> float:
    """The TPR gap's p-value as binary_fairness computes it (without the slow MetricFrame)."""
    g = groups["race_group"].to_numpy()
    gap_test, _ = fairness.gap_inference(y, p >= 0.5, g, _compared(y, g), n_permutations=1000)
    return gap_test["tpr_difference"]["p_value"]


def test_tpr_gap_permutation_test_holds_its_level_under_a_zero_gap():
    """Five groups of 1,500 down to 25 stays, equal TPR: rejections at alpha 0.05 <= 6 %
    (the review found the old percentile CI of the gap excluding 0 in 200 of 200)."""
    rng = np.random.default_rng(11)
    p_values = np.array([_gap_p(*_fairness_data(rng, {})) for _ in range(400)])
    assert np.mean(p_values < 0.05) <= 0.06
    assert np.mean(p_values < 0.5) > 0.35  # not degenerate (p-values spread over [0, 1])


def test_tpr_gap_permutation_test_detects_a_planted_gap():
    """TPR 0.2 in the 500-stay group, 0.6 elsewhere: rejected in >= 90 % of 200 datasets."""
    rng = np.random.default_rng(12)
    p_values = np.array([_gap_p(*_fairness_data(rng, {1: 0.2})) for _ in range(200)])
    assert np.mean(p_values < 0.05) >= 0.9


def test_gap_report_has_no_biased_gap_ci_and_states_its_inference():
    rng = np.random.default_rng(13)
    y, p, groups = _fairness_data(rng, {})
    report = binary_fairness(y, p, groups, threshold=0.5, n_permutations=500)
    table = report["attributes"]["race_group"]
    assert "gap_ci" not in table
    assert report["gap_inference"]["test"] == "permutation"
    assert report["gap_inference"]["n_permutations"] == 500
    for name in ("tpr_difference", "fpr_difference", "equalized_odds_difference",
                 "demographic_parity_difference"):  # fmt: skip
        rec = table["gap_test"][name]
        assert 0 < rec["p_value"] <= 1
    assert table["gap_test"]["tpr_difference"]["difference"] == pytest.approx(
        table["summary"]["tpr"]["difference"]
    )
    g = groups["race_group"].to_numpy()
    compared = _compared(y, g)
    assert [r["group"] for r in table["groups"] if not r["suppressed"]] == compared
    assert table["gap_test"] == fairness.gap_inference(y, p >= 0.5, g, compared,
                                                       n_permutations=500)[0]  # fmt: skip
    # group-vs-rest rows: the group's rate and the difference to the other groups, with CIs
    kept = [r["group"] for r in table["groups"] if not r["suppressed"]]
    rows = {r["group"]: r for r in table["vs_rest"]["tpr"]}
    assert set(rows) == set(kept)
    d = p >= 0.5
    g = groups["race_group"].to_numpy()
    for name, r in rows.items():
        inside = (g == name) & (y == 1)
        rest = np.isin(g, kept) & (g != name) & (y == 1)
        assert r["value"] == pytest.approx(d[inside].mean())
        assert r["difference"] == pytest.approx(d[inside].mean() - d[rest].mean())
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert r["difference_ci_low"] <= r["difference"] <= r["difference_ci_high"]


def test_newcombe_difference_interval_hand_case_and_coverage():
    # Newcombe (1998), method 10, example (a): 56/70 vs 48/80 -> [0.0524, 0.3339]
    low, high = fairness.newcombe_interval(56, 70, 48, 80)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=5e-4)
    # Wilson interval, Newcombe's example: 81/263 -> [0.2553, 0.3662]
    assert fairness.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-4)
    rng = np.random.default_rng(14)
    k1, k2 = rng.binomial(30, 0.7, 2000), rng.binomial(400, 0.7, 2000)
    cover = [lo <= 0 <= hi for lo, hi in map(fairness.newcombe_interval, k1, [30] * 2000, k2,
                                             [400] * 2000)]  # fmt: skip
    assert 0.93 <= np.mean(cover) <= 0.99


def test_unknown_is_never_the_worst_group():
    rng = np.random.default_rng(15)
    n = 1200
    g = rng.choice(["A", "B", "Unknown"], n)
    other = rng.choice(["X", "Unknown"], n)
    y = rng.integers(0, 2, n)
    # Unknown positives are missed most often: lowest TPR, and the highest FPR
    rate = np.where(y == 1, np.where(g == "Unknown", 0.2, 0.7), np.where(g == "Unknown", 0.6, 0.2))
    p = np.where(rng.random(n) < rate, 0.9, 0.1)
    groups = pd.DataFrame({"race_group": g, "insurance": other})
    groups["race_group*insurance"] = groups.race_group + "|" + groups.insurance
    report = binary_fairness(y, p, groups, threshold=0.5, n_permutations=200)
    for attr, table in report["attributes"].items():
        rows = {r["group"]: r for r in table["groups"] if not r["suppressed"]}
        assert any("Unknown" in name.split("|") for name in rows)  # reported per group
        for entry in table["summary"].values():
            worst = entry.get("worst_group")
            assert worst is None or "Unknown" not in worst.split("|"), attr
        known = [r for name, r in rows.items() if "Unknown" not in name.split("|")]
        if len(known) >= 2:
            assert table["summary"]["tpr"]["group_min"] == min(r["tpr"] for r in known)
        vs_rest = table.get("vs_rest", {}).get("tpr", [])
        assert all("Unknown" not in r["group"].split("|") for r in vs_rest)


def test_groups_with_too_few_positives_or_negatives_are_suppressed_where_computed():
    rng = np.random.default_rng(16)
    g = np.repeat(["big", "other", "few_pos", "few_neg"], [400, 300, 60, 60])
    y = rng.integers(0, 2, g.size)
    y[g == "few_pos"] = 0
    y[np.flatnonzero(g == "few_pos")[:7]] = 1  # 7 positives, 53 negatives
    y[g == "few_neg"] = 1
    y[np.flatnonzero(g == "few_neg")[:9]] = 0  # 9 negatives
    p = np.clip(0.3 * y + 0.7 * rng.random(g.size), 0, 1)
    report = binary_fairness(y, p, pd.DataFrame({"race_group": g}), threshold=0.5)
    table = report["attributes"]["race_group"]
    rows = {r["group"]: r for r in table["groups"]}
    assert rows["few_pos"] == {"group": "few_pos", "suppressed": True}
    assert rows["few_neg"] == {"group": "few_neg", "suppressed": True}
    assert not rows["big"]["suppressed"] and not rows["other"]["suppressed"]
    assert table["n_suppressed_groups"] == 2
    assert report["min_class_count"] == fairness.MIN_CLASS_COUNT
    assert fairness.MIN_CLASS_COUNT == publish.MIN_GROUP_CLASS_COUNT
    # publication has nothing left to suppress: the computed report passes through unchanged
    published = copy.deepcopy(report)
    publish._fairness_report(published, "fairness", g.size, publish.MIN_GROUP_SIZE)
    assert published == report


def test_publication_drops_legacy_gap_cis_and_checks_vs_rest_groups():
    rng = np.random.default_rng(17)
    y, p, groups = _fairness_data(rng, {})
    report = binary_fairness(y, p, groups, threshold=0.5, n_permutations=200)
    legacy = copy.deepcopy(report)
    table = legacy["attributes"]["race_group"]
    table["gap_ci"] = {"tpr_difference": {"ci_low": 0.05, "ci_high": 0.3}}
    publish._fairness_report(legacy, "fairness", len(y), publish.MIN_GROUP_SIZE)
    assert "gap_ci" not in table and table["gap_test"]  # the biased CI is never published
    forged = copy.deepcopy(report)
    forged["attributes"]["race_group"]["vs_rest"]["tpr"][0]["group"] = "stay 31415926"
    with pytest.raises(publish.Rejected) as err:
        publish._fairness_report(forged, "fairness", len(y), publish.MIN_GROUP_SIZE)
    assert err.value.category == "patient_level"


# --------------------------------------------------------------------------------------------
# 2. p-value resolution, BH families


def test_paired_delta_p_value_resolves_below_the_resample_floor():
    rng = np.random.default_rng(21)
    n = 600
    y = rng.integers(0, 2, n)
    weak, strong = 0.2 * y + rng.random(n), 1.0 * y + rng.random(n)
    r = bootstrap_indices(np.arange(n), 1000)
    better = paired_metric_delta("auroc", y, strong, weak, r)
    assert better.p_value < 1e-4  # 1,000 resamples cannot go below 2 / 1001 by counting
    same = paired_metric_delta("auroc", y, weak, weak, r)
    assert same.p_value == 1.0


def test_paired_delta_p_value_holds_its_level_under_equal_models():
    rng = np.random.default_rng(22)
    n = 300
    r = bootstrap_indices(np.arange(n), 500)
    rejections = []
    for _ in range(200):
        y = rng.integers(0, 2, n)
        a, b = 0.4 * y + rng.random(n), 0.4 * y + rng.random(n)
        rejections.append(paired_metric_delta("auroc", y, a, b, r).p_value < 0.05)
    assert np.mean(rejections) <= 0.08


def test_bh_over_thirty_labels_can_reach_q_below_alpha():
    """One truly better label among 30: a counted p floors at 2/1001 and q at 0.06 > 0.05."""
    rng = np.random.default_rng(23)
    n, n_labels = 600, 30
    y = (rng.random((n, n_labels)) < 0.3).astype(int)
    ref = np.clip(0.2 * y + 0.8 * rng.random((n, n_labels)), 0, 1)
    sub = ref.copy()
    sub[:, 0] = np.clip(0.9 * y[:, 0] + 0.1 * rng.random(n), 0, 1)
    names = [f"l{j}" for j in range(n_labels)]
    rows = comparisons.fusion_gain(names, y, [sub], [ref], bootstrap_indices(np.arange(n), 1000))
    assert rows["l0"]["significant"] and rows["l0"]["q_value"] < 0.05
    assert not any(rows[x]["significant"] for x in names[1:])


def test_benjamini_yekutieli_matches_scipy():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, np.nan])
    q = comparisons.benjamini_yekutieli(p)
    assert np.isnan(q[-1])
    assert q[:-1] == pytest.approx(false_discovery_control(p[:-1], method="by"))
    assert comparisons.adjust_p_values(p, "bh")[:-1] == pytest.approx(
        false_discovery_control(p[:-1], method="bh")
    )


def _ml_data(seed=24, n=400, n_labels=3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.3).astype(int)
    ref = np.clip(0.2 * y + 0.8 * rng.random((n, n_labels)), 0, 1)
    sub = np.clip(0.5 * y + 0.5 * rng.random((n, n_labels)), 0, 1)
    return rng, y, ref, sub


def test_fusion_gain_states_its_bh_family_and_p_value_method():
    _, y, ref, sub = _ml_data()
    block = score_predictions(
        "multilabel", y, [sub], np.arange(len(y)), label_names=["a", "b", "c"],
        reference_probs={"ehr": [ref]}, n_resamples=200,
    )  # fmt: skip
    gain = block["fusion_gain"]
    assert gain["bh_family"] == comparisons.BH_FAMILY
    assert "entry" in comparisons.BH_FAMILY and "reference" in comparisons.BH_FAMILY
    assert gain["bh_m"] == 3
    assert block["bootstrap"]["p_value_method"] == bootstrap.P_VALUE_METHOD


def test_summary_fusion_gain_offers_table_wide_bh_and_by():
    rng = np.random.default_rng(25)
    labels = [f"l{j}" for j in range(10)]
    entries, all_p = [], []
    for name in ("a", "b", "c"):
        p = rng.uniform(0, 0.02, len(labels)) ** 2
        all_p.extend(p)
        rows = {
            lab: {"delta": 0.01, "ci_low": 0.0, "ci_high": 0.02, "p_value": float(v),
                  "q_value": None, "significant": bool(v < 1e-4)}
            for lab, v in zip(labels, p, strict=True)
        }  # fmt: skip
        gain = {"reference": "ehr", "metric": "auroc", "alpha": 0.05, "labels": rows}
        entries.append({
            "name": name, "dataset": "d", "provenance": {"inputs": ["ehr", "cxr"]},
            "tasks": {"phenotype": {"base": {"fusion_gain": gain}}},
        })  # fmt: skip
    (table,) = summary.fusion_gain_tables({"entries": entries})
    cols = table["columns"]
    assert "table-wide BH" in cols and "table-wide BY" in cols
    bh = false_discovery_control(np.array(all_p), method="bh") < 0.05
    by = false_discovery_control(np.array(all_p), method="by") < 0.05
    for i, row in enumerate(table["rows"]):
        chunk = slice(10 * i, 10 * (i + 1))
        assert row[cols.index("table-wide BH")].startswith(f"{bh[chunk].sum()} of 10")
        assert row[cols.index("table-wide BY")].startswith(f"{by[chunk].sum()} of 10")
    assert "table" in table["note"] and "Yekutieli" in table["note"]


# --------------------------------------------------------------------------------------------
# 3. Thresholds on the seed-mean validation predictions


class _Task:
    def __init__(self, kind):
        self.kind, self.name, self.main_metric = kind, "t", None


class _FS:
    """The parts of a FeatureSet that pool_units and cross_block read."""

    def __init__(self, kind, n, n_folds, rng, n_labels=3):
        self.task = _Task(kind)
        self.stay_id = np.arange(1000, 1000 + n)
        self.subject_id = self.stay_id // 2
        shape = (n,) if kind == "binary" else (n, n_labels)
        self.y = (rng.random(shape) < 0.35).astype(int)
        self.fold_of = np.arange(n) % n_folds + 1

    def __len__(self):
        return len(self.stay_id)

    def split(self, k):
        test = np.flatnonzero(self.fold_of == k)
        val = np.flatnonzero(self.fold_of == (k % self.fold_of.max()) + 1)
        train = np.flatnonzero(~np.isin(np.arange(len(self)), np.r_[test, val]))
        return train, val, test


def _write_units(fs, base, folds, seeds, rng):
    import pyarrow as pa
    import pyarrow.parquet as pq

    val_probs = {}
    for k in folds:
        _, val, test = fs.split(k)
        for seed in seeds:
            noise = rng.random(fs.y[val].shape)
            p_val = np.clip((0.25 + 0.1 * seed) * fs.y[val] + 0.7 * noise, 0, 1)
            p_test = np.clip(0.3 * fs.y[test] + 0.7 * rng.random(fs.y[test].shape), 0, 1)
            val_probs.setdefault(k, []).append(p_val)
            table = pd.concat([
                units.prediction_frame(fs.stay_id[val], "val", "clean", 0.0, p_val),
                units.prediction_frame(fs.stay_id[test], "test", "clean", 0.0, p_test),
            ], ignore_index=True)  # fmt: skip
            meta = {"thresholds": units.select_thresholds(fs.task.kind, fs.y[val], p_val),
                    "train_seconds": 1.0}  # fmt: skip
            arrow = pa.Table.from_pandas(table, preserve_index=False)
            arrow = arrow.replace_schema_metadata({b"harness_unit": json.dumps(meta).encode()})
            path = paths.unit_path(base, k, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(arrow, path)
    return val_probs


@pytest.mark.parametrize("kind", ["binary", "multilabel"])
def test_threshold_is_chosen_on_the_seed_mean_validation_predictions(tmp_path, kind):
    rng = np.random.default_rng(31)
    fs = _FS(kind, 300, 3, rng)
    folds, seeds = (1, 2, 3), (0, 1, 2)
    val_probs = _write_units(fs, tmp_path, folds, seeds, rng)
    pooled = pooling.pool_units(fs, tmp_path, folds, seeds)
    differs = False
    for k in folds:
        _, val, test = fs.split(k)
        mean_p = np.mean(val_probs[k], axis=0)
        expected = units.select_thresholds(kind, fs.y[val], mean_p)
        per_seed = np.mean(
            [units.select_thresholds(kind, fs.y[val], p) for p in val_probs[k]], axis=0
        )
        differs |= not np.allclose(expected, per_seed)
        got = pooled.thresholds[np.isin(pooled.rows, test)]
        want = np.broadcast_to(np.asarray(expected if kind != "binary" else expected[0]),
                               got.shape)  # fmt: skip
        assert got == pytest.approx(want)
    assert differs  # the data separate the two rules
    if kind == "binary":
        assert select_threshold(fs.y[fs.split(1)[1]], np.mean(val_probs[1], 0)) == pytest.approx(
            pooled.thresholds[np.isin(pooled.rows, fs.split(1)[2])][0]
        )


# --------------------------------------------------------------------------------------------
# 4. One-class resamples are reported and mark a label unstable


def test_one_class_resamples_are_reported_per_label():
    rng = np.random.default_rng(41)
    n = 2000
    subjects = np.arange(n)
    y = (rng.random((n, 2)) < 0.3).astype(int)
    y[:, 1] = 0
    y[[5, 900], 1] = 1  # 2 positives in 2,000 subjects
    p = np.clip(0.3 * y + 0.7 * rng.random((n, 2)), 0, 1)
    block = score_predictions(
        "multilabel", y, [p], subjects, label_names=["common", "rare"], n_resamples=1000
    )
    r = bootstrap_indices(subjects, 1000)
    pos = r.counts[:, y[:, 1] == 1].sum(axis=1)
    expected = float(np.mean(pos == 0))
    assert expected > 0.1  # ~ (1 - 1/n)^(2n) = e^-2 = 0.135
    rare = block["per_label"]["rare"]["auroc"]
    assert rare["undefined_fraction"] == pytest.approx(expected)
    assert rare["unstable"] is True
    common = block["per_label"]["common"]["auroc"]
    assert common["undefined_fraction"] == 0.0 and common["unstable"] is False
    assert block["metrics"]["auroc_macro"]["unstable"] is False


# --------------------------------------------------------------------------------------------
# 5. Cross-cohort resamples, ECE bins, robustness CIs


def test_cross_cohort_ci_uses_the_documented_resamples():
    rng = np.random.default_rng(51)
    fs = _FS("binary", 400, 2, rng)
    ids = np.sort(fs.stay_id[rng.permutation(400)[:300]])
    pos = pd.Index(fs.stay_id).get_indexer(ids)
    runs = [np.clip(0.3 * fs.y[pos] + 0.7 * rng.random(300), 0, 1) for _ in range(2)]
    rec = cross_block(fs, ids, runs, "binary", resample_seed=0)
    r = bootstrap_indices(fs.subject_id[pos], DEFAULT_N_RESAMPLES, DEFAULT_BOOTSTRAP_SEED)
    boot = np.mean([bootstrap_metric("auroc", fs.y[pos], p, r) for p in runs], axis=0)
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx(percentile_ci(boot))
    assert rec["n_resamples"] == DEFAULT_N_RESAMPLES


@pytest.mark.parametrize("edge", [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_ece_puts_a_tenth_in_the_bin_it_starts(edge):
    # y 0 at p = edge and y 1 at p = edge + 0.05: one bin -> |0.5 - (edge + 0.025)|
    y = np.array([0, 1])
    p = np.array([edge, edge + 0.05])
    assert METRICS.get("ece")(y, p) == pytest.approx(abs(0.5 - (edge + 0.025)))


def test_robustness_area_has_a_bootstrap_ci_on_the_shared_resamples():
    rng = np.random.default_rng(52)
    n = 500
    y = rng.integers(0, 2, n)
    subjects = rng.integers(0, 350, n)
    runs = [np.clip(0.5 * y + 0.5 * rng.random(n), 0, 1) for _ in range(2)]
    degraded = {r: [np.clip(p * (1 - r) + r * rng.random(n), 0, 1) for p in runs]
                for r in (0.5, 1.0)}  # fmt: skip
    block = score_predictions(
        "binary", y, runs, subjects, n_resamples=300,
        scenario_probs={"cxr_missing_mcar": {0.0: runs, **degraded}},
    )  # fmt: skip
    curve = block["robustness"]["cxr_missing_mcar"]
    r = bootstrap_indices(subjects, 300)
    boot = {0.0: runs, **degraded}
    v = np.stack([np.mean([bootstrap_metric("auroc", y, p, r) for p in boot[x]], 0)
                  for x in (0.0, 0.5, 1.0)], axis=1)  # fmt: skip
    areas = np.trapezoid(v, [0.0, 0.5, 1.0], axis=1) / v[:, 0]
    assert (curve["ci_low"], curve["ci_high"]) == pytest.approx(percentile_ci(areas))
    assert curve["ci_low"] <= curve["auc_normalised"] <= curve["ci_high"]
