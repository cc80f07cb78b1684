"""Executors: the sandboxed worker gives byte-identical predictions to in-process training."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from harness import timing
from harness.errors import SpecError, UsageError
from harness.evaluate.run import EvalSettings, Unit, read_unit, run_unit
from harness.executors import Limits, UnitFailure, get_executor
from harness.executors.wire import MAGIC, WireError, read_message, write_message
from harness.models.data import FeatureSet
from harness.models.submission import load_submission

REPO = Path(__file__).resolve().parents[1]


def _predictions(
    executor: str, name: str, fs: FeatureSet, tmp_path: Path
) -> tuple[list[np.ndarray], timing.Clock]:
    sub = load_submission(REPO / "submissions" / name)
    settings = EvalSettings(max_epochs=2)
    out = []
    with get_executor(executor).session(sub, Limits()) as runner, timing.measure() as measured:
        for seed in (0, 1):
            path = tmp_path / f"{executor}_{name}_{seed}.parquet"
            run_unit(runner, fs, Unit(fs.task.name, "base", 1, seed), settings,
                     ["cxr_missing_mcar", "ehr_truncate_24h"], {}, path)  # fmt: skip
            frame, meta = read_unit(path)
            out.append(frame.filter(like="prob_").to_numpy())
            out.append(np.asarray(meta["thresholds"]))
    return out, measured


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,kind",
    [("late_fusion", "multilabel"), ("tabular_gbm", "binary"), ("ehr_lstm", "multiclass")],
)
def test_isolated_predictions_are_byte_identical_to_in_process(name, kind, tmp_path):
    fs = FeatureSet.synthetic(n=240, seed=5, kind=kind, p_cxr=0.7)
    local, _ = _predictions("local", name, fs, tmp_path)
    isolated, clock = _predictions("isolated", name, fs, tmp_path)
    for a, b in zip(local, isolated, strict=True):
        assert a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    # the worker's step spans crossed the boundary: one per epoch (one fit for an estimator)
    # per unit, on the harness's clock, adding up to the step time the worker reported
    spans = clock.spans["train.steps"]
    assert len(spans) == (2 if name == "tabular_gbm" else 4)
    steps = clock.seconds["train.steps"]
    assert sum(b - a for a, b in spans) == pytest.approx(steps, rel=0.01, abs=0.01)


def test_the_sandbox_refuses_to_start_without_bubblewrap(monkeypatch):
    from harness.executors import isolated

    monkeypatch.setenv("HARNESS_BWRAP", "/nonexistent/bwrap")
    isolated._probe.cache_clear()
    try:
        with pytest.raises(UsageError, match="apt-get install bubblewrap.*--trusted"):
            isolated.require_sandbox()
    finally:
        monkeypatch.delenv("HARNESS_BWRAP")
        isolated._probe.cache_clear()


def test_answers_cannot_carry_pickles():
    payload = pickle.dumps(np.array([object()], dtype=object))
    with pytest.raises(ValueError):  # the sender refuses object arrays too
        write_message(io.BytesIO(), {"ok": True}, {"p": np.array([{"x": 1}], dtype=object)})
    # a hand-made message whose array is an object array (.npy with a pickle inside)
    npy = io.BytesIO()
    np.save(npy, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    head = b'{"ok": true, "arrays": [{"name": "p", "nbytes": %d}]}' % len(npy.getvalue())
    msg = MAGIC + struct.pack(">Q", len(head)) + head + npy.getvalue()
    with pytest.raises(WireError, match="not a plain .npy"):
        read_message(io.BytesIO(msg))
    assert payload  # the pickle itself is never loaded
    nan_head = b'{"ok": true, "val_score": NaN, "arrays": []}'
    with pytest.raises(WireError):
        read_message(io.BytesIO(MAGIC + struct.pack(">Q", len(nan_head)) + nan_head))
    huge = MAGIC + struct.pack(">Q", 1 << 40)
    with pytest.raises(WireError, match="exceeds"):
        read_message(io.BytesIO(huge))


def test_unit_failures_keep_their_category():
    assert UnitFailure("timeout", "x").category == "timeout"
    assert UnitFailure("no such word", "x").category == "error"


def test_limits_are_capped_by_the_harness(monkeypatch):
    monkeypatch.setenv("HARNESS_MAX_UNIT_SECONDS", "60")
    monkeypatch.setenv("HARNESS_MAX_MEMORY_MB", "2048")
    limits = Limits.for_submission({"unit_seconds": 10**6, "memory_mb": 10**6})
    assert limits == Limits(unit_seconds=60.0, memory_mb=2048)
    assert Limits.for_submission({"unit_seconds": 5}).unit_seconds == 5.0


@pytest.mark.parametrize(
    "line,message",
    [
        ("limits: {unit_seconds: -1}", "limits.unit_seconds"),
        ("limits: {memory_mb: 1.5}", "limits.memory_mb"),
        ("limits: {cpus: 4}", "unknown key `limits.cpus`"),
        ("limits: 10", "must be a mapping"),
    ],
)
def test_bad_limits_are_spec_errors(tmp_path, line, message):
    (tmp_path / "model.py").write_text("")
    (tmp_path / "submission.yaml").write_text(
        f"name: x\nversion: 1\nkind: torch\nentry: model:M\ninputs: [ehr]\n{line}\n"
    )
    with pytest.raises(SpecError, match=message):
        load_submission(tmp_path)


def test_non_ascii_names_are_refused_up_front(tmp_path):
    (tmp_path / "model.py").write_text("")
    (tmp_path / "submission.yaml").write_text(
        "name: modèle\nversion: 1\nkind: torch\nentry: model:M\ninputs: [ehr]\n"
    )
    with pytest.raises(SpecError, match="ASCII"):
        load_submission(tmp_path)


def test_unknown_executor_names_the_valid_ones():
    with pytest.raises(KeyError, match="isolated.*local|local.*isolated"):
        get_executor("isolatd")


def test_one_worker_serves_a_fold_of_several_cohorts_only_when_folds_follow_subjects():
    from harness.evaluate.plan import folds_shared_by_subject

    base = FeatureSet.synthetic(n=200, seed=1, kind="binary")
    matched = base.subset(np.flatnonzero(base.has_cxr))
    assert folds_shared_by_subject([base, matched])
    moved = matched.replace(fold=np.where(matched.fold == 1, 2, matched.fold))
    assert not folds_shared_by_subject([base, moved])  # a subject in two test folds
    given = matched.replace(given_splits=np.zeros((len(matched), 5), dtype=np.int8))
    assert not folds_shared_by_subject([base, given])
