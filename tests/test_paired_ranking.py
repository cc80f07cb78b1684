"""Ranking by paired tests against the leader on the shared bootstrap resamples.

Every entry is scored on the same stays and subjects, so :func:`bootstrap_indices` gives them the
same resamples and their per-resample headline values (``main_resamples``) are paired. Expected
p-values and CIs are recomputed here by hand with numpy / scipy from the stored resamples.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy.stats import norm

from harness.evaluate.run import EvalSettings, protocol_record
from harness.evaluate.score import score_predictions
from harness.leaderboard.aggregate import aggregate
from harness.leaderboard.publish import publishable_result
from harness.metrics.bootstrap import bootstrap_indices
from harness.results.document import build_result, provenance, write_result
from harness.results.schema import LEADERBOARD_SCHEMA, schema_errors

N = 800
B = 200
DATASET = "synthetic-default"
TASK, COHORT = "mortality_icu", "base"


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    rng = np.random.default_rng(11)
    subj = rng.integers(0, 500, N)
    y = rng.integers(0, 2, N)
    noise = rng.random(N)
    base = np.clip(0.25 * y + 0.75 * noise, 0, 1)
    preds = {
        "leader": base,
        # strongly correlated with the leader, a small consistent loss on every stay
        "close": np.clip(base - 0.01 * y + 0.01 * (1 - y), 0, 1),
        # nearly identical to the leader: tiny unstructured jitter
        "twin": np.clip(base + 0.002 * (rng.random(N) - 0.5), 0, 1),
        "weak": np.clip(0.05 * y + 0.95 * rng.random(N), 0, 1),
    }
    r = bootstrap_indices(subj, B)
    out = {}
    for name, p in preds.items():
        block = score_predictions("binary", y, [p], subj, resamples=r)
        out[name] = build_result(
            name, "1.0", DATASET,
            cohorts={COHORT: {"fingerprint": "f00d" * 3, "n_stays": N}},
            tasks={TASK: {COHORT: block}},
            provenance_record=provenance(
                seeds=[0], folds=[1],
                protocol=protocol_record(EvalSettings(folds=(1,), seeds=(0,)), [TASK]),
            ),
        )  # fmt: skip
    return out


def _block(result: dict) -> dict:
    return result["tasks"][TASK][COHORT]


def _publish(tmp_path, files: dict[str, dict]) -> tuple[dict, dict[str, str]]:
    results = tmp_path / "results"
    for name, doc in files.items():
        write_result(doc, results / DATASET / name / "result.json")
    board = aggregate(results, tmp_path / "board")
    return board.document, {k: p.read_text("utf-8") for k, p in board.paths.items()}


def _rows(doc: dict) -> dict[str, dict]:
    (table,) = [t for t in doc["rankings"] if t["task"] == TASK]
    return {row["name"]: row for row in table["rows"]}


def _by_hand(entry: dict, leader: dict) -> tuple[float, float, float, float]:
    a, b = _block(entry), _block(leader)
    main = a["main_metric"]
    d = np.array(a["main_resamples"], float) - np.array(b["main_resamples"], float)
    delta = a["metrics"][main]["value"] - b["metrics"][main]["value"]
    p = 2 * norm.sf(abs(delta) / np.std(d, ddof=1))
    low, high = np.quantile(d, [0.025, 0.975])
    return delta, float(low), float(high), float(p)


def test_resamples_are_stored_for_the_headline_metric(results):
    block = _block(results["leader"])
    values = block["main_resamples"]
    assert len(values) == block["bootstrap"]["n_resamples"] == B
    assert all(v is None or v == round(v, 6) for v in values)
    summary = block["metrics"][block["main_metric"]]
    low, high = np.quantile(np.array(values, float), [0.025, 0.975])
    assert low == pytest.approx(summary["ci_low"], abs=1e-6)
    assert high == pytest.approx(summary["ci_high"], abs=1e-6)


def test_paired_p_of_a_near_identical_entry_matches_numpy(tmp_path, results):
    doc, _ = _publish(tmp_path, results)
    assert schema_errors(doc, LEADERBOARD_SCHEMA) == []
    rows = _rows(doc)
    assert rows["leader"]["rank"] == 1 and rows["leader"]["comparison"] == "leader"
    twin = rows["twin"]
    delta, low, high, p = _by_hand(results["twin"], results["leader"])
    assert twin["comparison"] == "paired"
    assert twin["delta_vs_leader"] == pytest.approx(delta, abs=1e-12)
    assert twin["delta_ci_low"] == pytest.approx(low, abs=1e-12)
    assert twin["delta_ci_high"] == pytest.approx(high, abs=1e-12)
    assert twin["p_vs_leader"] == pytest.approx(p, rel=1e-9)
    assert p >= 0.05 and twin["tied_with_leader"] is True
    weak = rows["weak"]
    assert weak["comparison"] == "paired" and weak["tied_with_leader"] is False
    assert weak["p_vs_leader"] < 1e-6 and weak["delta_ci_high"] < 0


def test_overlapping_cis_but_the_paired_test_separates(tmp_path, results):
    doc, texts = _publish(tmp_path, {k: results[k] for k in ("leader", "close")})
    rows = _rows(doc)
    leader, close = rows["leader"], rows["close"]
    # the old rule would call this a statistical tie: the two 95% CIs overlap widely
    assert close["ci_low"] <= leader["ci_high"] and leader["ci_low"] <= close["ci_high"]
    assert close["ci_high"] > leader["value"]
    delta, low, high, p = _by_hand(results["close"], results["leader"])
    assert close["comparison"] == "paired" and close["p_vs_leader"] == pytest.approx(p, rel=1e-9)
    assert close["p_vs_leader"] < 0.05 and close["tied_with_leader"] is False
    assert close["delta_ci_high"] < 0 and -0.02 < close["delta_vs_leader"] < 0
    assert "Δ vs leader [95% CI], p" in texts["md"] and "Δ vs leader [95% CI], p" in texts["html"]


def test_results_without_resamples_fall_back_to_ci_overlap(tmp_path, results):
    legacy = copy.deepcopy(results["close"])
    del _block(legacy)["main_resamples"]
    doc, texts = _publish(tmp_path, {"leader": results["leader"], "close": legacy})
    close = _rows(doc)["close"]
    assert close["comparison"] == "ci_overlap" and close["tied_with_leader"] is True
    assert close["p_vs_leader"] is None and close["delta_ci_low"] is None
    assert "no resamples: CI overlap" in texts["md"]


def test_resamples_never_reach_the_published_files(tmp_path, results):
    doc, texts = _publish(tmp_path, results)
    for text in texts.values():
        assert "main_resamples" not in text
    for entry in doc["entries"]:
        assert "main_resamples" not in _block(entry)
    # a long run of the stored values does not appear either
    run = json.dumps(_block(results["leader"])["main_resamples"][:5])[1:-1]
    assert all(run not in text for text in texts.values())
    assert "main_resamples" not in _block(publishable_result(results["leader"]))
    kept = publishable_result(results["leader"], keep_private=True)
    assert len(_block(kept)["main_resamples"]) == B


def test_hand_edited_resamples_are_rejected(tmp_path, results):
    short = copy.deepcopy(results["twin"])
    short["name"] = "short"
    _block(short)["main_resamples"].pop()
    above = copy.deepcopy(results["twin"])
    above["name"] = "above"
    _block(above)["main_resamples"][3] = 1.5
    moved = copy.deepcopy(results["twin"])
    moved["name"] = "moved"  # in range, but not what the recorded CI came from
    _block(moved)["main_resamples"] = [0.99] * B
    files = {"leader": results["leader"], "short": short, "above": above, "moved": moved}
    doc, _ = _publish(tmp_path, files)
    rejected = sorted((r["entry"], r["category"]) for r in doc["rejected"])
    assert rejected == [("above", "out_of_range"), ("moved", "outside_ci"), ("short", "schema")]
    assert set(_rows(doc)) == {"leader"}
