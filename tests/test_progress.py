"""Progress bars: every long stage reports honest counts (synth, cohort build, training epochs,
scoring, evaluations side by side), the sandboxed worker's epochs reach the harness's bar only
when well formed, bars are drawn only on a terminal, and nothing a bar does changes a result."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import queue
import shutil
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from harness import config, progress
from harness.cli.main import main
from harness.progress import Event

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """A sink that keeps every event; bars are found by the description they opened with."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def titles(self) -> dict[str, str]:
        return {e.id: e.description for e in self.events if e.kind == "open"}

    def closed(self, title: str) -> list[Event]:
        """The last state of every bar opened as ``title``."""
        titles = self.titles()
        return [e for e in self.events if e.kind == "close" and titles[e.id] == title]

    def updates(self, bar_id: str) -> list[Event]:
        return [e for e in self.events if e.id == bar_id and e.kind == "update"]


def _terminal(width: int = 120) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=width, color_system=None), buf


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------
# The module


def test_a_bar_without_a_sink_only_counts():
    assert not progress.active()
    with progress.bar("stage", 3) as b:
        b.advance()
        b.skip(2)
        assert not b.drawn
    assert (b.completed, b.skipped) == (3, 2)


def test_nested_bars_know_their_parent_depth_and_whether_they_stay():
    rec = Recorder()
    with progress.reporting(rec):
        assert progress.active()
        with progress.bar("outer", 2, unit="unit") as outer:
            with progress.bar("inner", 5, unit="epoch") as inner:
                inner.advance(5)
            outer.skip()
            outer.doing("second")
            outer.advance()
            with progress.bar("kept", 1, keep=True) as kept:
                kept.advance()
    (o,), (i,), (k,) = rec.closed("outer"), rec.closed("inner"), rec.closed("kept")
    assert (o.depth, o.parent, o.keep) == (0, None, True)
    assert (i.depth, i.parent, i.keep) == (1, outer.id, False)
    assert (k.depth, k.parent, k.keep) == (1, outer.id, True)
    assert (o.completed, o.total, o.skipped, o.unit) == (2, 2, 1, "unit")
    assert o.description == "outer: second" and (i.completed, i.total) == (5, 5)
    assert [e.kind for e in rec.events if e.id == inner.id] == ["open", "update", "close"]


def test_a_failing_display_never_stops_the_work(caplog):
    def broken(event: Event) -> None:
        raise RuntimeError("terminal gone")

    with progress.reporting(broken), progress.bar("stage", 3) as b:
        for _ in range(3):
            b.advance()
    assert b.completed == 3 and not b.drawn
    assert "terminal gone" in caplog.text


def test_the_rate_leaves_reused_work_out():
    assert progress.rate_of(5, 3, 2.0) == 1.0  # 2 units worked in 2 s, 3 reused
    assert progress.rate_of(3, 3, 2.0) is None  # nothing worked yet: no rate, no ETA
    assert progress.rate_of(1, 0, None) is None


def test_bars_are_drawn_only_on_a_terminal(monkeypatch):
    plain = Console(file=io.StringIO(), width=100)
    with progress.display(plain) as drawn:
        assert not drawn and not progress.active()
    quiet, _ = _terminal()
    quiet.quiet = True
    with progress.display(quiet) as drawn:
        assert not drawn
    monkeypatch.setenv("HARNESS_PROGRESS", "0")
    term, buf = _terminal()
    with progress.display(term) as drawn:
        assert not drawn
    monkeypatch.delenv("HARNESS_PROGRESS")
    with progress.display(term) as drawn:
        assert drawn
        with progress.display() as inner:  # a display inside a display draws in the outer one
            assert inner
        with progress.bar("units", 4, unit="unit") as b:
            b.skip()
            b.advance(2)
            with progress.bar("epochs", 10, unit="epoch") as e:
                e.advance(10)
                progress._SINK.get().live.refresh()  # a frame while the nested bar is open
    text = buf.getvalue()
    last = text[text.rindex("units") :]  # the final frame: the kept bar, the nested one gone
    assert "3/4" in last and "unit/s" in last and "ETA" in last and "0:00:00" in last
    assert "epochs" not in last
    assert "  epochs" in text and "10/10" in text  # drawn, indented, while it was open


def test_names_are_never_read_as_markup():
    term, buf = _terminal()
    with progress.display(term), progress.bar("[bold red]x[/] sub", 1) as b:
        b.advance()
    assert "[bold red]x[/] sub" in buf.getvalue()


def test_another_threads_bars_are_relayed_nested_and_throttled():
    rec = Recorder()
    with progress.reporting(rec), progress.bar("evaluations", 1) as outer:
        with progress.receiving(queue.Queue()) as q:
            assert q is not None

            def child() -> None:
                with (
                    progress.reporting(progress.QueueSink(q, interval=60.0)),
                    progress.bar("units", 50, unit="unit") as b,
                ):
                    for i in range(50):
                        if i == 25:
                            b.doing("half way")
                        b.advance()

            t = threading.Thread(target=child)
            t.start()
            t.join()
    (units,) = rec.closed("units")
    assert (units.depth, units.parent, units.keep) == (1, outer.id, False)
    assert units.completed == 50
    # throttled: of the updates that only count, only the one that completes the bar got
    # through; the one saying what is done now always does
    sent = [(e.completed, e.description) for e in rec.updates(units.id)]
    assert sent == [(25, "units: half way"), (50, "units: half way")]
    with progress.receiving(queue.Queue()) as q:  # nothing draws here: nothing is asked
        assert q is None


def _bars_in_a_child(bars) -> None:
    with progress.reporting(progress.QueueSink(bars)), progress.bar("child", 4) as b:
        b.advance(4)


def test_bars_of_a_spawned_process_reach_the_parent():
    rec = Recorder()
    ctx = mp.get_context("spawn")
    with (
        progress.reporting(rec),
        progress.bar("evaluations", 1),
        ctx.Manager() as manager,
        progress.receiving(manager.Queue()) as bars,
    ):
        child = ctx.Process(target=_bars_in_a_child, args=(bars,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
    (bar,) = rec.closed("child")
    assert bar.depth == 1 and bar.completed == bar.total == 4


# --------------------------------------------------------------------------------------------
# Stages


def test_synth_counts_tables_stays_and_images_and_writes_the_same_bytes(tmp_path):
    from harness.data.synthetic import TABLES, generate

    rec = Recorder()
    term, buf = _terminal()
    sink = progress.RichSink(term)

    def both(event: Event) -> None:
        rec(event)
        sink(event)

    with progress.reporting(both):
        drawn = generate(tmp_path / "a", n_patients=25, seed=5, image_size=64)
    sink.close()
    plain = generate(tmp_path / "b", n_patients=25, seed=5, image_size=64)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # progress changed no byte
    (tables,) = rec.closed("synth 25 patients")
    assert tables.total == tables.completed == len(TABLES)
    (stays,) = rec.closed(f"events of {drawn['n_stays']} stays")
    assert stays.total == stays.completed == drawn["n_stays"] == plain["n_stays"]
    (images,) = rec.closed("images")
    assert images.total == images.completed == drawn["n_images"] > 0
    assert images.keep and stays.keep  # nested, but left on screen
    assert f"{len(TABLES)}/{len(TABLES)}" in buf.getvalue()


def test_the_synth_command_draws_its_bars_on_a_terminal(tmp_path, monkeypatch, capsys):
    term, buf = _terminal()
    monkeypatch.setattr(progress, "progress_console", lambda: term)
    out = tmp_path / "ds"
    assert main(["synth", "--out", str(out), "--n-patients", "20", "--image-size", "64"]) == 0
    text = buf.getvalue()
    assert "synth 20 patients" in text and "12/12" in text and "table/s" in text
    assert "synth 20 patients" not in capsys.readouterr().out  # stdout keeps the results only


@pytest.fixture(scope="module")
def cache(tiny_pipeline_copy):
    return tiny_pipeline_copy


@pytest.mark.slow
def test_cohort_build_counts_its_steps_and_rewrites_the_same_files(cache):
    from harness.cohort.build import BUILD_STEPS, COHORTS, build_cohorts

    def checksums() -> dict[str, dict[str, str]]:
        root = config.cohorts_dir() / config.DEFAULT_DATASET
        return {
            p.parent.name: json.loads(p.read_text())["files"]
            for p in sorted(root.glob("*/manifest.json"))
        }

    before = checksums()
    rec = Recorder()
    with progress.reporting(rec):
        build_cohorts(overwrite=True)
    (steps,) = rec.closed("cohort build")
    assert steps.total == steps.completed == len(BUILD_STEPS) + len(COHORTS)
    doing = [e.description for e in rec.updates(steps.id)]
    assert [f"cohort build: {s}" for s in BUILD_STEPS] == list(dict.fromkeys(doing))[:7]
    assert checksums() == before  # the same stays, series and splits, byte for byte


ARGS = ["--quick", "-t", "mortality_in_hospital", "-c", "base", "--encoder", "test_tiny",
        "--max-epochs", "3", "--no-cross-cohort", "--scenario", "cxr_missing_mcar",
        "--n-resamples", "50", "--trusted"]  # fmt: skip


@pytest.mark.slow
def test_evaluate_reports_units_epochs_and_scoring_and_changes_no_result(cache, monkeypatch):
    from harness.evaluate.score.predictions import scoring_parts
    from harness.evaluate.units import read_unit
    from harness.metrics.registry import metrics_for

    entry = cache / "results" / config.DEFAULT_DATASET / "ehr_lstm"

    def outputs() -> tuple[list, dict]:
        units = []
        for path in sorted(entry.rglob("fold*_seed*.parquet")):
            frame, meta = read_unit(path)
            meta.pop("train_seconds")  # the one timing a unit records
            units.append((path.name, frame, meta))
        return units, json.loads((entry / "result.json").read_text())["tasks"]

    rec = Recorder()
    term, buf = _terminal()

    class Drawn(progress.RichSink):
        def __call__(self, event: Event) -> None:
            rec(event)
            super().__call__(event)

    with monkeypatch.context() as mp_:
        mp_.setattr(progress, "progress_console", lambda: term)
        mp_.setattr(progress, "RichSink", Drawn)
        assert main(["evaluate", "submissions/ehr_lstm", *ARGS]) == 0
    with_bars = outputs()
    shutil.rmtree(entry)
    assert main(["evaluate", "submissions/ehr_lstm", *ARGS]) == 0  # not a terminal: no bars
    without = outputs()
    assert len(with_bars[0]) == len(without[0]) == 1
    for (name_a, frame_a, meta_a), (name_b, frame_b, meta_b) in zip(
        with_bars[0], without[0], strict=True
    ):
        assert name_a == name_b and meta_a == meta_b
        assert frame_a.equals(frame_b)
    assert with_bars[1] == without[1]

    (units,) = rec.closed("ehr_lstm")
    assert units.total == units.completed == 1 and units.skipped == 0 and units.keep
    (epochs,) = rec.closed("epochs")
    meta = with_bars[0][0][2]
    patience = 5  # submissions/ehr_lstm: early stopping after 5 epochs without improvement
    assert epochs.completed == epochs.total == min(3, meta["best_epoch"] + patience + 1)
    assert epochs.parent == units.id and not epochs.keep
    (scoring,) = rec.closed("scoring")
    assert (
        scoring.total
        == scoring.completed
        == scoring_parts("binary", metrics_for("binary"), None, {"cxr_missing_mcar": {}}, True)
    )
    described = {e.description for e in rec.updates(scoring.id)}
    assert any("(50 resamples)" in d for d in described)
    (predictions,) = rec.closed("predictions")
    assert predictions.total == predictions.completed > 0
    assert "ehr_lstm" in buf.getvalue() and "1/1" in buf.getvalue()


@pytest.mark.slow
def test_evaluations_side_by_side_send_their_bars_to_the_parent(cache):
    """What `harness demo` draws: each evaluation runs in a process of its own, and its bars
    (units, epochs, scoring) are drawn under the parent's bar of evaluations."""
    from harness.evaluate.parallel import evaluate_many
    from harness.evaluate.run import EvalSettings

    settings = EvalSettings.quick(
        tasks=("mortality_in_hospital",), cohorts=("base",), encoder="test_tiny", max_epochs=2,
        scenarios=("cxr_missing_mcar",), cross_cohort=False, n_resamples=20, executor="local",
    )  # fmt: skip
    names = ("ehr_lstm", "cxr_probe")
    rec = Recorder()
    with progress.reporting(rec):
        outcomes = evaluate_many(
            [REPO / "submissions" / n for n in names], settings, references=names, jobs=2
        )
    assert outcomes and not any(o.error for o in outcomes)
    (evaluations,) = rec.closed("evaluations")
    # both evaluated, then both references re-scored against each other
    assert evaluations.completed == evaluations.total == 4
    for name in names:
        units = rec.closed(name)
        assert units and all(u.parent == evaluations.id and u.depth == 1 for u in units)
        assert not any(u.keep for u in units)
    epochs = rec.closed("epochs")
    assert len(epochs) == 2 and all(e.depth == 2 and e.completed >= 1 for e in epochs)


def test_the_scoring_bar_counts_every_part():
    from harness.evaluate.score.predictions import score_predictions, scoring_parts
    from harness.metrics.registry import metrics_for

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 3))
    runs = [rng.random((60, 3))]
    refs = {"a": [rng.random((60, 3))], "b": [rng.random((60, 3))]}
    rec = Recorder()
    with progress.reporting(rec):
        score_predictions(
            "multilabel", y, runs, np.arange(60), reference_probs=refs, n_resamples=20
        )
    (bar,) = rec.closed("scoring")
    # each metric, the per-label table, the deltas against each reference, the fusion gain
    expected = len(metrics_for("multilabel")) + 1 + 2 + 1
    assert bar.total == bar.completed == expected
    assert scoring_parts("multilabel", metrics_for("multilabel"), refs, None, False) == expected


# --------------------------------------------------------------------------------------------
# Epochs across the sandbox boundary


def _job(max_epochs: int):
    from harness.executors import TrainJob
    from harness.models.data import FeatureSet, prepare_split

    fs = FeatureSet.synthetic(n=160, seed=1, kind="binary")
    split = prepare_split(fs, 1)
    job = TrainJob(
        task=fs.task, fold=1, seed=0, variables=list(fs.variables), train=split.train,
        val=split.val, max_epochs=max_epochs,
    )  # fmt: skip
    return job, split


def test_local_training_counts_the_epochs_it_ran():
    from harness.executors import Limits, get_executor
    from harness.models.submission import load_submission

    sub = load_submission(REPO / "submissions" / "ehr_lstm")
    job, _ = _job(4)
    rec = Recorder()
    with get_executor("local").session(sub, Limits()) as runner, progress.reporting(rec):
        runner.train(job)
        ran = len(runner.trained.history)
    (epochs,) = rec.closed("epochs")
    assert epochs.completed == epochs.total == ran
    assert [e.completed for e in rec.updates(epochs.id)][:ran] == list(range(1, ran + 1))


def test_an_estimator_fit_counts_as_one():
    from harness.executors import Limits, get_executor
    from harness.models.submission import load_submission

    sub = load_submission(REPO / "submissions" / "tabular_gbm")
    job, _ = _job(4)
    rec = Recorder()
    with get_executor("local").session(sub, Limits()) as runner, progress.reporting(rec):
        runner.train(job)
    (fit,) = rec.closed("fit")
    assert fit.completed == fit.total == 1


@pytest.mark.slow
def test_the_sandboxed_workers_epochs_reach_the_harness_bar():
    from harness.executors import Limits, get_executor
    from harness.models.submission import load_submission

    sub = load_submission(REPO / "submissions" / "ehr_lstm")
    job, _ = _job(4)
    counts = []
    for executor in ("local", "isolated"):
        rec = Recorder()
        with get_executor(executor).session(sub, Limits()) as runner, progress.reporting(rec):
            runner.train(job)
        (epochs,) = rec.closed("epochs")
        # the worker's notes moved the bar one epoch at a time
        counts.append([e.completed for e in rec.updates(epochs.id)])
    assert counts[0] == counts[1] and counts[0][0] == 1


def test_progress_notes_are_checked_before_they_count():
    from harness.executors.isolated import progress_count

    assert progress_count({"progress": 3}, {}, 2, 10) == 3
    bad = [
        ({"progress": True}, {}, "not an integer"),
        ({"progress": 1.0}, {}, "not an integer"),
        ({"progress": "2"}, {}, "not an integer"),
        ({"progress": [3]}, {}, "not an integer"),
        ({"progress": 2}, {}, "2 epochs done after 2"),  # not above the last count
        ({"progress": 11}, {}, "of at most 10"),
        ({"progress": -1}, {}, "of at most 10"),
        ({"progress": 3, "ok": True, "val_score": 1.0}, {}, "nothing else"),
        ({"progress": 3}, {"p": np.zeros(2)}, "nothing else"),
    ]
    for header, arrays, reason in bad:
        with pytest.raises(ValueError, match=reason):
            progress_count(header, arrays, 2, 10)


def test_the_harness_side_of_a_note(monkeypatch):
    """A well-formed note moves the bar and the answer is still awaited; any other ends the
    worker with ``invalid_output`` (checked without starting a sandbox)."""
    from harness.executors import UnitFailure
    from harness.executors.isolated import IsolatedRunner

    runner = IsolatedRunner.__new__(IsolatedRunner)
    runner.dead = None
    runner.epochs, runner.epochs_done, runner.epochs_budget = None, 0, 3
    monkeypatch.setattr(runner, "_kill", lambda: None)
    assert not runner._noted(({"ok": True}, {}))  # an answer, not a note
    with pytest.raises(UnitFailure, match="while not training") as err:
        runner._noted(({"progress": 1}, {}))
    assert err.value.category == "invalid_output"
    rec = Recorder()
    with progress.reporting(rec), progress.bar("epochs", 3) as b:
        runner.dead, runner.epochs = None, b
        assert runner._noted(({"progress": 1}, {}))
        assert runner._noted(({"progress": 3}, {}))
        with pytest.raises(UnitFailure, match="malformed progress note: 3 epochs done after 3"):
            runner._noted(({"progress": 3}, {}))
    assert [e.completed for e in rec.updates(b.id)] == [1, 3]


HOSTILE = """
import os, struct
from torch import nn

NOTE = {note!r}
WHEN = {when!r}


class Model(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.head = nn.Linear(spec.ehr_summary_dim, 1)
        self.epochs, self.max_epochs = 0, None

    def on_epoch_end(self, ctx):
        self.epochs, self.max_epochs = self.epochs + 1, ctx.max_epochs

    def forward(self, batch):
        predicting = not self.training and self.epochs == self.max_epochs
        if (WHEN == "training" and self.training) or (WHEN == "predicting" and predicting):
            head = NOTE.encode()
            for fd in os.listdir("/proc/self/fd"):  # the answer channel is one of these
                try:
                    os.write(int(fd), b"HXW1" + struct.pack(">Q", len(head)) + head)
                except OSError:
                    pass
        return self.head(batch.ehr_summary)[:, 0]
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "note,when,reason",
    [
        ('{"progress": true, "arrays": []}', "training", "malformed progress note"),
        ('{"progress": 99, "arrays": []}', "training", "malformed progress note"),
        (
            '{"progress": 1, "ok": true, "val_score": 1.0, "best_epoch": 0, "arrays": []}',
            "training",
            "malformed progress note",
        ),
        ('{"progress": 1, "arrays": [{"name": "p", "nbytes": 64}]}', "training", "malformed"),
        ('{"progress": 1, "arrays": []}', "predicting", "progress note while not training"),
    ],
    ids=["boolean", "over-budget", "spoofed-answer", "with-array", "outside-training"],
)
def test_a_hostile_progress_note_ends_the_unit_cleanly(note, when, reason, tmp_path):
    from harness.executors import Limits, UnitFailure, get_executor
    from harness.executors.wire import without_labels
    from harness.models.submission import load_submission

    folder = tmp_path / "noter"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(HOSTILE).format(note=note, when=when))
    (folder / "submission.yaml").write_text(
        "name: noter\nversion: 1\nkind: torch\nentry: model:Model\ninputs: [ehr_summary]\n"
        "train: {max_epochs: 2, patience: 10}\n"
    )
    sub = load_submission(folder)
    job, split = _job(2)
    rec = Recorder()
    with get_executor("isolated").session(sub, Limits()) as runner, progress.reporting(rec):
        with pytest.raises(UnitFailure, match=reason) as err:
            runner.train(job)
            runner.predict(without_labels(split.test))
        assert err.value.category == "invalid_output"
        with pytest.raises(UnitFailure):  # the worker is gone: every later request says so
            runner.predict(without_labels(split.test))
    # the bar never took a count the harness did not check
    (epochs,) = rec.closed("epochs")
    assert all(isinstance(e.completed, int | float) and e.completed <= 2 for e in rec.events)
    assert epochs.completed <= 2


@pytest.mark.slow
@pytest.mark.parametrize("sandboxed", [False, True])
def test_validate_counts_every_check_as_it_passes(sandboxed):
    """In process, the checks move the bar; sandboxed, the worker's progress lines do."""
    from harness.validate import validate_isolated, validate_submission

    rec = Recorder()
    run = validate_isolated if sandboxed else validate_submission
    with progress.reporting(rec):
        report = run(REPO / "submissions" / "late_fusion", n=60, max_epochs=1)
    assert report.ok, report.failures
    title = "validate (sandboxed)" if sandboxed else "validate"
    (bar,) = rec.closed(title)
    assert bar.completed == len(report.checks) > 3
