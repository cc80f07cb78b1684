"""A unit asks its model only the rows it has not answered, and sees only its declared inputs.

Reference: every scenario and rate predicted one set at a time, as the harness did before
(the model asked for all test rows of each degraded copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.evaluate.requests import (
    MAX_REQUEST_ROWS,
    VariantChains,
    concat_rows,
    predict_all,
    rows_differ,
    take_rows,
)
from harness.evaluate.run import EvalSettings, Unit, read_unit, run_unit
from harness.evaluate.scenarios import SCENARIOS
from harness.executors.local import LocalRunner
from harness.models.data import FeatureSet, make_tensors, prepare_split, restrict_inputs
from harness.models.submission import load_submission

REPO = Path(__file__).resolve().parents[1]
NAMES = ["cxr_missing_mcar", "cxr_missing_acuity", "ehr_truncate_24h"]


class Recording(LocalRunner):
    """The in-process runner, recording what each prediction request held."""

    def __init__(self, sub):
        super().__init__(sub)
        self.requests: list = []

    def predict(self, tensors):
        self.requests.append(tensors)
        return super().predict(tensors)


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return FeatureSet.synthetic(n=300, seed=3, kind="multilabel", p_cxr=0.6)


def _run(name: str, fs: FeatureSet, tmp_path: Path, inputs=None):
    sub = load_submission(REPO / "submissions" / name)
    runner = Recording(sub)
    path = tmp_path / f"{name}.parquet"
    unit = Unit(fs.task.name, "base", 1, 0)
    run_unit(runner, fs, unit, EvalSettings(max_epochs=2), NAMES, {}, path, inputs=inputs)
    frame, _ = read_unit(path)
    return runner, frame, unit


@pytest.mark.parametrize("name", ["late_fusion", "tabular_gbm"])
def test_deduplicated_requests_give_every_scenario_the_predictions_of_asking_it_whole(
    name, fs, tmp_path
):
    sub = load_submission(REPO / "submissions" / name)
    runner, frame, unit = _run(name, fs, tmp_path, inputs=sub.inputs)
    _, _, test_idx = fs.split(unit.fold)
    stats = prepare_split(fs, unit.fold).stats
    asked = sum(len(t) for t in runner.requests)
    naive_rows = 0
    for scenario_name in NAMES:
        scenario = SCENARIOS.get(scenario_name)
        for rate in scenario.rates[1:]:
            degraded = scenario.degrade(fs, test_idx, rate, unit.fold)
            whole = restrict_inputs(make_tensors(degraded, test_idx, stats), sub.inputs)
            expected = runner.trained.predict_proba(whole)
            naive_rows += len(whole)
            got = frame[(frame["scenario"] == scenario_name) & (frame["rate"] == rate)]
            got = got.set_index("stay_id").loc[fs.stay_id[test_idx]].filter(like="prob_")
            np.testing.assert_allclose(got.to_numpy(), expected.reshape(len(got), -1), atol=1e-6)
    val_and_test = len(prepare_split(fs, unit.fold).val) + len(test_idx)
    # each stay at most once per scenario beyond the clean rows, in one request
    assert asked <= val_and_test + len(NAMES) * len(test_idx) < naive_rows + val_and_test
    assert len(runner.requests) == 1  # validation, test, every scenario: one request


def test_an_ehr_only_model_sees_no_image_and_is_never_asked_about_a_missing_one(fs, tmp_path):
    runner, frame, unit = _run("ehr_lstm", fs, tmp_path, inputs=["ehr"])
    rows = concat_rows(runner.requests)
    assert torch.count_nonzero(rows.cxr) == 0 and torch.count_nonzero(rows.has_cxr) == 0
    assert torch.count_nonzero(rows.cxr_time_hours) == 0
    assert torch.count_nonzero(rows.ehr) > 0
    _, val_idx, test_idx = fs.split(unit.fold)
    truncated = SCENARIOS.get("ehr_truncate_24h").degrade(fs, test_idx, 1.0, unit.fold)
    n_truncated = int(
        rows_differ(
            make_tensors(truncated, test_idx, prepare_split(fs, unit.fold).stats),
            make_tensors(fs, test_idx, prepare_split(fs, unit.fold).stats),
        ).sum()
    )
    # validation + clean test + the truncated stays; no CXR scenario row at all
    assert len(rows) == len(val_idx) + len(test_idx) + n_truncated
    clean = frame[(frame["part"] == "test") & (frame["scenario"] == "clean")]
    for name in ("cxr_missing_mcar", "cxr_missing_acuity"):
        at_one = frame[(frame["scenario"] == name) & (frame["rate"] == 1.0)]
        np.testing.assert_array_equal(
            at_one.sort_values("stay_id").filter(like="prob_").to_numpy(),
            clean.sort_values("stay_id").filter(like="prob_").to_numpy(),
        )


def test_undeclared_inputs_are_zeroed_in_training_too(fs, tmp_path):
    seen = []

    class Spy(LocalRunner):
        def train(self, job):
            seen.append(job)
            return super().train(job)

    sub = load_submission(REPO / "submissions" / "cxr_probe")
    run_unit(
        Spy(sub), fs, Unit(fs.task.name, "base", 1, 0), EvalSettings(max_epochs=1), [], {},
        tmp_path / "u.parquet", inputs=sub.inputs,
    )  # fmt: skip
    (job,) = seen
    for part in (job.train, job.val):
        assert torch.count_nonzero(part.ehr) == 0 and torch.count_nonzero(part.ehr_mask) == 0
        assert torch.count_nonzero(part.cxr) > 0


def test_chains_reuse_equal_rows_and_ask_the_rest():
    fs = FeatureSet.synthetic(n=60, seed=1, kind="binary", p_cxr=1.0)
    idx = np.arange(len(fs))
    stats = prepare_split(fs, 1).stats
    clean = make_tensors(fs, idx, stats)
    chains = VariantChains(clean)
    chains.start_chain()
    drop_first = fs.replace(has_cxr=np.where(idx < 10, False, fs.has_cxr))
    drop_more = fs.replace(has_cxr=np.where(idx < 25, False, fs.has_cxr))
    chains.add(make_tensors(drop_first, idx, stats))
    chains.add(make_tensors(drop_more, idx, stats))
    assert [len(t) for t in chains.requests()] == [10, 15]
    p_clean = np.linspace(0, 1, len(fs))
    answers = chains.answers(p_clean, [np.full(10, -1.0), np.full(15, -2.0)])
    np.testing.assert_array_equal(answers[0], np.r_[np.full(10, -1.0), p_clean[10:]])
    np.testing.assert_array_equal(answers[1], np.r_[np.full(10, -1.0), np.full(15, -2.0),
                                                    p_clean[25:]])  # fmt: skip


def test_large_sets_go_in_bounded_requests(monkeypatch):
    import harness.evaluate.requests as requests

    fs = FeatureSet.synthetic(n=50, seed=2, kind="binary")
    t = make_tensors(fs, np.arange(50), prepare_split(fs, 1).stats)
    monkeypatch.setattr(requests, "MAX_REQUEST_ROWS", 16)
    sizes = []

    def predict(x):
        sizes.append(len(x))
        return x.ehr_summary[:, 0].numpy().astype(np.float64)

    parts = [
        take_rows(t, np.arange(0, 20)),
        take_rows(t, np.arange(0)),
        take_rows(t, np.arange(20, 50)),
    ]
    out = predict_all(predict, parts)
    assert sizes == [16, 16, 16, 2] and MAX_REQUEST_ROWS > 16
    assert [len(o) for o in out] == [20, 0, 30]
    np.testing.assert_array_equal(np.concatenate(out), t.ehr_summary[:, 0].numpy())
