"""The warm path and evaluations side by side.

A finished entry is not scored again while nothing scoring reads has changed (the scoring key),
and is scored again as soon as anything has: its settings, a reference's predictions, the
harness code, the result file itself. Several submissions evaluated at once give the results
one process gives, and every entry is scored with the references it would have had in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import config, timing
from harness.evaluate.parallel import default_jobs, evaluate_many, threads_per_job

REPO = Path(__file__).resolve().parents[1]
DATASET = config.DEFAULT_DATASET


@pytest.fixture(scope="module")
def cache(tiny_pipeline_copy):
    return tiny_pipeline_copy


def _settings(**overrides):
    from harness.evaluate.run import EvalSettings

    base = dict(
        tasks=("mortality_in_hospital",), encoder="test_tiny", max_epochs=3, executor="local"
    )
    return EvalSettings.quick(**{**base, **overrides})


def _fresh_results(cache: Path, root: Path) -> Path:
    """A cache sharing ``cache``'s built data, with no results yet."""
    root.mkdir(parents=True)
    for name in ("datasets", "cohorts", "features", ".keys"):
        if (cache / name).exists():
            (root / name).symlink_to(cache / name)
    return root


def _result(cache: Path, name: str) -> dict:
    return json.loads((cache / "results" / DATASET / name / "result.json").read_text())


def _unit_files(cache: Path, name: str) -> list[Path]:
    return sorted((cache / "results" / DATASET / name / "predictions").rglob("*.parquet"))


class ScoringCounter:
    """Wraps ``score_task`` of the evaluation and counts its calls."""

    def __init__(self, monkeypatch):
        import harness.evaluate.run as run

        self.calls = 0
        original = run.score_task

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(run, "score_task", counted)


@pytest.mark.slow
def test_a_finished_entry_is_rescored_only_when_what_scoring_reads_changes(cache, monkeypatch):
    import harness.evaluate.scoring_key as scoring_key
    from harness.evaluate.run import evaluate

    lstm = REPO / "submissions/ehr_lstm"
    first = evaluate(lstm, _settings())
    assert first.units_run == 2
    result_file = cache / "results" / DATASET / "ehr_lstm" / "result.json"
    written = result_file.read_bytes()

    counter = ScoringCounter(monkeypatch)
    again = evaluate(lstm, _settings())
    assert counter.calls == 0, "nothing changed: the result must be reused, not re-scored"
    assert again.units_run == 0 and again.units_reused == again.units_total == 2
    assert again.result == json.loads(written) and result_file.read_bytes() == written
    assert again.headline == first.headline
    # where the units run does not change what is scored
    evaluate(lstm, _settings(executor="isolated"))
    assert counter.calls == 0

    # another setting of the scoring: scored again (and the new key recorded)
    evaluate(lstm, _settings(n_resamples=50))
    assert counter.calls == 1
    evaluate(lstm, _settings(n_resamples=50))
    assert counter.calls == 1

    # the result file edited by hand: scored again, never trusted
    doc = json.loads(result_file.read_text())
    doc["tasks"]["mortality_in_hospital"]["base"]["metrics"]["auroc"]["value"] = 0.999
    result_file.write_text(json.dumps(doc))
    fixed = evaluate(lstm, _settings(n_resamples=50))
    assert counter.calls == 2
    assert fixed.result["tasks"]["mortality_in_hospital"]["base"]["metrics"]["auroc"][
        "value"
    ] != pytest.approx(0.999)

    # other harness code: scored again
    monkeypatch.setattr(scoring_key, "code_digest", lambda: "edited")
    evaluate(lstm, _settings(n_resamples=50))
    assert counter.calls == 3
    monkeypatch.undo()
    counter = ScoringCounter(monkeypatch)

    # a reference appears (the CXR-only probe): the EHR reference is compared with it now
    evaluate(REPO / "submissions/cxr_probe", _settings(n_resamples=50))
    calls = counter.calls
    rescored = evaluate(lstm, _settings(n_resamples=50))
    assert counter.calls == calls + 1
    block = rescored.result["tasks"]["mortality_in_hospital"]["base"]
    assert "cxr_probe" in block["paired_deltas"]

    # a unit file of a reference changes (re-trained): the entry is scored again
    evaluate(lstm, _settings(n_resamples=50))
    calls = counter.calls
    probe_units = sorted(
        (cache / "results" / DATASET / "cxr_probe" / "predictions").rglob("*.parquet")
    )
    frame = pd.read_parquet(probe_units[0])
    import pyarrow.parquet as pq

    meta = pq.read_schema(probe_units[0]).metadata
    frame["prob_0"] = np.clip(frame["prob_0"] + 1e-3, 0, 1)
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(meta)
    pq.write_table(table, probe_units[0])
    evaluate(lstm, _settings(n_resamples=50))
    assert counter.calls == calls + 1

    # a unit file of the entry itself is missing: trained again, then scored
    own_units = sorted(
        (cache / "results" / DATASET / "ehr_lstm" / "predictions").rglob("*.parquet")
    )
    own_units[0].unlink()
    redone = evaluate(lstm, _settings(n_resamples=50))
    assert redone.units_run == 1 and counter.calls == calls + 2


def test_jobs_and_threads_split_the_cores():
    assert default_jobs(18, cpus=2) == 2
    assert default_jobs(1, cpus=16) == 1
    assert default_jobs(18, cpus=64) == 8
    assert threads_per_job(2, cpus=2) == 1
    assert threads_per_job(8, cpus=16) == 2
    assert threads_per_job(3, cpus=2) == 1


def _clean_test_predictions(cache: Path, name: str) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in _unit_files(cache, name)]
    return pd.concat(frames).sort_values(["part", "scenario", "rate", "stay_id"], kind="stable")


@pytest.mark.slow
def test_evaluations_side_by_side_match_one_process(cache, monkeypatch, tmp_path):
    """Two at a time, one thread each: the same predictions as one process with one thread,
    and the fusion entry, scored after the references finished, is compared with both."""
    import torch

    folders = [REPO / f"submissions/{n}" for n in ("late_fusion", "ehr_lstm", "cxr_probe")]
    settings = _settings(n_resamples=100)
    parallel_cache = _fresh_results(cache, tmp_path / "parallel")
    monkeypatch.setenv("HARNESS_CACHE", str(parallel_cache))
    seen = []
    outcomes = evaluate_many(
        folders, settings, references=("ehr_lstm", "cxr_probe"), jobs=2, threads=1,
        on_done=seen.append, measure=True,
    )  # fmt: skip
    assert all(o.error is None for o in outcomes) and seen == outcomes
    # measured: each process's stages, and its optimizer steps as spans of the shared clock
    for o in outcomes[:3]:
        steps = o.stage_seconds["train.steps"]
        assert o.step_spans and all(a <= b for a, b in o.step_spans)
        assert sum(b - a for a, b in o.step_spans) == pytest.approx(steps, rel=0.05, abs=0.05)
        # one process's epochs never overlap: their union is their sum
        assert timing.union_seconds(o.step_spans) == pytest.approx(steps, rel=0.05, abs=0.05)
    spans = [s for o in outcomes for s in o.step_spans]
    busy = timing.union_seconds(spans)
    assert max(timing.union_seconds(o.step_spans) for o in outcomes[:3]) <= busy + 1e-9
    assert busy <= sum(b - a for a, b in spans) + 1e-9
    assert "waiting" in outcomes[2].stage_seconds  # late_fusion waited for the references
    assert outcomes[3].stage_seconds and not outcomes[3].step_spans  # the re-scoring, measured
    first = [o.folder for o in outcomes][:3]
    assert first == ["ehr_lstm", "cxr_probe", "late_fusion"]  # each waited for those before
    # at the end the first reference is scored again, now compared with the second
    assert [(o.folder, o.units_run) for o in outcomes[3:]] == [("ehr_lstm", 0)]
    fused = _result(parallel_cache, "late_fusion")
    block = fused["tasks"]["mortality_in_hospital"]["base"]
    assert {"ehr_lstm", "cxr_probe"} <= set(block["paired_deltas"])

    # the same evaluations in this process, one thread, into another fresh results folder
    sequential_cache = _fresh_results(cache, tmp_path / "sequential")
    monkeypatch.setenv("HARNESS_CACHE", str(sequential_cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate_many(folders, settings, references=("ehr_lstm", "cxr_probe"), jobs=1)
    finally:
        torch.set_num_threads(threads)
    for name in ("late_fusion", "ehr_lstm", "cxr_probe"):
        pd.testing.assert_frame_equal(
            _clean_test_predictions(parallel_cache, name).reset_index(drop=True),
            _clean_test_predictions(sequential_cache, name).reset_index(drop=True),
        )
        assert _result(sequential_cache, name)["tasks"] == _result(parallel_cache, name)["tasks"]

    # warm: everything is answered from the records, without starting a process
    import concurrent.futures

    def no_pool(*args, **kwargs):
        raise AssertionError("a warm run must not start evaluation processes")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    warm = evaluate_many(folders, settings, references=("ehr_lstm", "cxr_probe"), jobs=2)
    assert sorted(o.folder for o in warm) == sorted(f.name for f in folders)
    assert all(not o.scored and o.units_run == 0 and o.units_reused == 2 for o in warm)
    latest = {o.folder: o.headline for o in outcomes}  # the re-scored reference's last
    assert {o.folder: o.headline for o in warm} == latest


@pytest.mark.slow
def test_a_failing_evaluation_does_not_stop_the_others(cache, tmp_path):
    import shutil

    bad = tmp_path / "nan_output"
    shutil.copytree(REPO / "tests/fixtures/bad_submissions/nan_output", bad)
    outcomes = evaluate_many(
        [bad, REPO / "submissions/ehr_lstm"], _settings(), references=("ehr_lstm",), jobs=2
    )
    by_folder = {o.folder: o for o in outcomes}
    assert by_folder["ehr_lstm"].error is None
    assert by_folder["nan_output"].error and "nan" in by_folder["nan_output"].error.lower()


def test_encode_with_nothing_to_encode_never_imports_torch(tiny_pipeline):
    """The warm `harness encode`: the stores are read and verified, no encoder is built."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from harness.cli.main import main\n"
        "rc = main(['encode', '-c', 'base', '--encoder', 'test_tiny'])\n"
        "print('TORCH', 'torch' in sys.modules, rc)\n"
    )
    env = {**os.environ, "HARNESS_CACHE": str(tiny_pipeline)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "nothing to encode" in out.stdout
    assert out.stdout.split("TORCH")[-1].split() == ["False", "0"], out.stdout


@pytest.mark.slow
def test_an_unchanged_leaderboard_is_not_rebuilt(cache, monkeypatch):
    import harness.leaderboard.aggregate as aggregate_module
    from harness.evaluate.run import evaluate
    from harness.leaderboard.aggregate import aggregate

    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    evaluate(REPO / "submissions/ehr_lstm", _settings())
    results, out = cache / "results", cache / "leaderboard"
    first = aggregate(results, out)
    written = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in first.paths.items()}

    built = []
    original = aggregate_module.load_results
    monkeypatch.setattr(
        aggregate_module, "load_results", lambda *a, **k: built.append(1) or original(*a, **k)
    )
    again = aggregate(results, out)
    assert built == [] and again.document == first.document
    assert {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in again.paths.items()} == written

    # a result changes (here: evaluated with other settings): rebuilt
    evaluate(REPO / "submissions/ehr_lstm", _settings(n_resamples=60))
    aggregate(results, out)
    assert built == [1]
    # a leaderboard file edited or removed: rebuilt
    first.paths["md"].write_text("edited")
    aggregate(results, out)
    assert built == [1, 1] and first.paths["md"].read_text() != "edited"
    first.paths["html"].unlink()
    aggregate(results, out)
    assert built == [1, 1, 1] and first.paths["html"].is_file()


def test_no_sandbox_is_prestarted_after_the_last_session():
    from harness.evaluate.execute import LazyRunner

    class Fake:
        def __init__(self):
            self.opened = self.prestarted = 0

        def open(self, sub, limits):
            self.opened += 1
            return FakeRunner()

        def prestart(self, sub, limits):
            self.prestarted += 1
            return FakeRunner()

    class FakeRunner:
        def predict(self, tensors):
            return np.zeros(1)

        def close(self):
            pass

    for sessions, expected in ((2, 1), (3, 2), (1, 0), (None, 2)):
        executor = Fake()
        runner = LazyRunner(executor, None, None, sessions=sessions)
        for _ in range(2 if sessions is None else sessions):
            runner.predict(None)
            runner.close()
        runner.shutdown()
        assert (executor.opened, executor.prestarted) == (1, expected), sessions


@pytest.mark.slow
def test_a_dying_evaluation_process_takes_no_other_evaluation_with_it(cache, tmp_path):
    """A trusted submission that ends its own process (os._exit) breaks the process pool: the
    evaluations that ran beside it are retried on their own and finish; it is reported."""
    import shutil

    killer = tmp_path / "killer"
    shutil.copytree(REPO / "submissions/ehr_lstm", killer)
    yaml = (killer / "submission.yaml").read_text().replace("name: ehr_lstm", "name: killer")
    (killer / "submission.yaml").write_text(yaml)
    model = (killer / "model.py").read_text()
    (killer / "model.py").write_text(model + "\nimport os\nos._exit(3)\n")
    outcomes = evaluate_many(
        [REPO / "submissions/ehr_lstm", killer], _settings(n_resamples=40),
        references=(), jobs=2, threads=1,
    )  # fmt: skip
    by_folder = {o.folder: o for o in outcomes}
    assert set(by_folder) == {"ehr_lstm", "killer"}
    assert by_folder["ehr_lstm"].error is None
    assert "process died" in (by_folder["killer"].error or "")
