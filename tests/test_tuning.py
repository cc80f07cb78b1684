"""`harness tune`: search spaces checked like the rest of the schema, an equal budget the
submission cannot widen, the objective scored by the harness on validation only (test labels
never read), and `evaluate --tuned` entries kept apart from default ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna  # noqa: F401 - installed by `make setup` (the `tune` extra): fail loudly if absent
import pytest
import yaml

from harness.cli.main import main
from harness.errors import InputError, SpecError
from harness.models.search import GENERAL_TORCH_SPACE, apply_config
from harness.models.submission import load_submission, parse_submission

REPO = Path(__file__).resolve().parents[1]
LATE = REPO / "submissions" / "late_fusion"
TASK, COHORT = "mortality_in_hospital", "base"


def _spec(**extra):
    data = yaml.safe_load((LATE / "submission.yaml").read_text())
    data.update(extra)
    return data


# --------------------------------------------------------------------------------------------
# The `search:` section


def test_search_section_parses_into_typed_dimensions(tmp_path):
    search = {
        "params.d_model": {"type": "categorical", "choices": [16, 32, 64]},
        "params.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "params.layers": {"type": "int", "low": 1, "high": 3},
        "params.cxr_hidden": {"type": "int", "low": 16, "high": 64, "step": 16},
        "train.grad_clip": {"type": "log_float", "low": 0.1, "high": 10.0},
    }
    sub = parse_submission(_spec(search=search), tmp_path / "submission.yaml")
    assert [d.name for d in sub.search] == list(search)
    assert [d.as_dict() for d in sub.search] == list(search.values())
    ints = sub.search[3]
    assert ints.contains(48) and not ints.contains(40) and not ints.contains(80)
    assert sub.search[0].contains(32) and not sub.search[0].contains(32.0)


@pytest.mark.parametrize(
    "search, field, fix",
    [
        ({"params.dropout": {"type": "uniform", "low": 0, "high": 1}}, "search.params.dropout",
         "float"),
        ({"params.dropout": {"type": "float", "low": 0.5, "high": 0.5}}, "low=0.5", "low < high"),
        ({"params.dropout": {"type": "log_float", "low": 0.0, "high": 0.5}}, "log range",
         "above 0"),
        ({"params.layers": {"type": "int", "low": 1, "high": 2.5}}, "int range", "whole"),
        ({"params.layers": {"type": "int", "low": 1, "high": 4, "step": 2}}, "step", "dividing"),
        ({"params.d_model": {"type": "categorical", "choices": [32, 32]}}, "repeats", "once"),
        ({"params.d_model": {"type": "categorical", "choices": [[32]]}}, "non-scalar", "numbers"),
        ({"params.width": {"type": "int", "low": 1, "high": 4}}, "params:` does not set",
         "default value"),
        ({"model.depth": {"type": "int", "low": 1, "high": 4}}, "model.depth", "params.NAME"),
        ({"params.dropout": {"type": "float", "low": 0, "high": 1, "log": True}}, "unknown key",
         "takes"),
        # the budget and the general ranges are the harness's, equal for every model
        ({"train.max_epochs": {"type": "int", "low": 10, "high": 500}}, "equal budget",
         "searchable"),
        ({"train.patience": {"type": "int", "low": 1, "high": 50}}, "equal budget", "searchable"),
        ({"train.lr": {"type": "log_float", "low": 1e-6, "high": 1.0}}, "redefines",
         "same"),
        ({"train.cxr_dropout": {"type": "float", "low": 0, "high": 0.9}}, "cannot be searched",
         "searchable"),
    ],
)  # fmt: skip
def test_bad_search_sections_are_clear_errors(tmp_path, search, field, fix):
    with pytest.raises(SpecError) as err:
        parse_submission(_spec(search=search), tmp_path / "submission.yaml")
    text = str(err.value)
    assert "submission.yaml" in text and field in text and fix in text


def test_apply_config_sets_params_and_checked_training_settings():
    sub = load_submission(LATE)
    tuned = apply_config(sub, {"params.d_model": 64, "train.lr": 0.003, "train.batch_size": 32})
    assert tuned.params["d_model"] == 64 and tuned.params["heads"] == sub.params["heads"]
    assert (tuned.train.lr, tuned.train.batch_size) == (0.003, 32)
    assert tuned.train.max_epochs == sub.train.max_epochs and sub.params["d_model"] == 32
    with pytest.raises(SpecError, match="train.batch_size"):
        apply_config(sub, {"train.batch_size": -4})
    with pytest.raises(SpecError, match="train.max_epochs"):  # never through a configuration
        apply_config(sub, {"train.max_epochs": 1000})


# --------------------------------------------------------------------------------------------
# The search: validation only, scored by the harness


@pytest.fixture(scope="module")
def cache(tiny_pipeline_copy):
    return tiny_pipeline_copy


def _tune(**kw):
    from harness.evaluate.tune import Budget, tune

    kw.setdefault("budget", Budget(trials=3, max_epochs=2))
    return tune(LATE, task=TASK, cohort=COHORT, encoder="test_tiny", executor="local", **kw)


def _values(outcome, fold=1):
    return [(t["config"], t.get("value")) for t in outcome.studies[fold]["trials"]]


def test_tuning_never_builds_or_reads_the_test_split(cache, monkeypatch):
    """Test labels poisoned (flipped) and every tensor built recorded: the search is identical
    and no test stay ever reaches a tensor."""
    import harness.models.data as data_mod

    clean = _tune(force=True)
    fs = data_mod.load_feature_set(COHORT, TASK, encoder="test_tiny")
    test_ids = set(fs.stay_id[fs.split(1)[2]].tolist())
    original_load, original_make = data_mod.load_feature_set, data_mod.make_tensors
    built: list[int] = []

    def poisoned_load(*args, **kwargs):
        loaded = original_load(*args, **kwargs)
        y = loaded.y.copy()
        test = loaded.split(1)[2]
        y[test] = 1 - y[test]
        return loaded.replace(y=y)

    def spying_make(fs_, idx, *args, **kwargs):
        built.extend(fs_.stay_id[idx].tolist())
        return original_make(fs_, idx, *args, **kwargs)

    monkeypatch.setattr(data_mod, "load_feature_set", poisoned_load)
    monkeypatch.setattr(data_mod, "make_tensors", spying_make)
    poisoned = _tune(force=True)
    assert built and not test_ids & set(built)
    assert _values(poisoned) == _values(clean)
    assert len(clean.studies[1]["trials"]) == 3


def test_the_objective_is_scored_from_predictions_not_the_models_claim(cache):
    """A model that reports a perfect validation score but predicts a constant gains nothing."""
    from harness.cohort import load_cohort
    from harness.cohort.spec import load_task
    from harness.evaluate.plan import feature_set_for
    from harness.evaluate.tune import Budget, search_fold
    from harness.executors import TrainSummary

    class Liar:
        def train(self, job):
            return TrainSummary(val_score=1.0, best_epoch=1, train_seconds=0.0)

        def predict(self, tensors):
            return np.full(len(tensors), 0.5)

    cohort = load_cohort(COHORT)
    fs, _ = feature_set_for(cohort, load_task(TASK), "test_tiny", {COHORT: cohort}, None)
    study = search_fold(Liar(), load_submission(LATE), fs, 1, Budget(trials=2, max_epochs=1))
    assert study.value == 0.5 and {t["value"] for t in study.trials} == {0.5}


def test_first_trial_is_the_default_and_the_file_records_the_budget(cache):
    from harness.evaluate.tune import tuning_path

    outcome = _tune()
    doc = yaml.safe_load(tuning_path("synthetic-default", "late_fusion", TASK, COHORT).read_text())
    first = doc["folds"][1]["trials"][0]
    sub = load_submission(LATE)
    own = {"train.lr": sub.train.lr, "train.weight_decay": sub.train.weight_decay,
           "train.batch_size": sub.train.batch_size}  # fmt: skip
    own |= {d.name: sub.params[d.name.split(".", 1)[1]] for d in sub.search}
    assert first["default"] and first["config"] == own
    assert doc["budget"] == {"trials": 3, "max_epochs": 2, "sampler": "TPE", "seed": 0,
                             "pruner": None}  # fmt: skip
    general = {d.name for d in GENERAL_TORCH_SPACE}
    assert doc["split"] == "validation" and set(doc["space"]) == set(own)
    assert general < set(own) and len(own) > len(general)  # the model's own ranges too
    best = max(t["value"] for t in doc["folds"][1]["trials"] if t["state"] == "complete")
    assert doc["folds"][1]["value"] == best >= doc["folds"][1]["default_value"]
    # a second call with the same inputs reuses the fold, a larger budget searches again
    again = _tune()
    assert again.reused_folds == [1] and again.tuned_folds == []
    assert outcome.studies[1]["config"] == again.studies[1]["config"]


def test_a_configuration_crosses_the_sandbox_and_changes_the_model(cache):
    """The same configuration trained in the sandbox and in this process gives byte-identical
    predictions, different from the submission's own settings."""
    from harness.evaluate.tune import tuning_tensors
    from harness.executors import Limits, TrainJob, get_executor
    from harness.executors.wire import without_labels
    from harness.models.data import load_feature_set

    fs = load_feature_set(COHORT, TASK, encoder="test_tiny")
    sub = load_submission(LATE)
    train, val = tuning_tensors(fs, 1, sub.inputs)
    cfg = {"params.d_model": 16, "params.heads": 2, "train.lr": 0.004, "train.batch_size": 32}

    def predictions(executor, config):
        with get_executor(executor).session(sub, Limits()) as runner:
            runner.train(TrainJob(task=fs.task, fold=1, seed=0, variables=list(fs.variables),
                                  train=train, val=val, max_epochs=2, config=config))  # fmt: skip
            return runner.predict(without_labels(val))

    sandboxed = predictions("isolated", cfg)
    np.testing.assert_array_equal(sandboxed, predictions("local", cfg))
    assert not np.array_equal(sandboxed, predictions("local", None))


# --------------------------------------------------------------------------------------------
# evaluate --tuned


def _evaluate(*extra):
    return main(["evaluate", str(LATE), "--quick", "-t", TASK, "-c", COHORT, "--encoder",
                 "test_tiny", "--max-epochs", "2", "--trusted", *extra])  # fmt: skip


def test_tuned_evaluation_is_a_separate_entry_with_its_configuration(cache, capsys):
    from harness.evaluate.tune import tuning_path

    _tune()
    assert _evaluate() == 0 and _evaluate("--tuned") == 0
    results = cache / "results" / "synthetic-default"
    default = json.loads((results / "late_fusion" / "result.json").read_text())
    tuned = json.loads((results / "late_fusion.tuned" / "result.json").read_text())
    assert default["provenance"]["protocol"]["tuning"] == "default"
    assert "tuning" not in default["provenance"]
    label = tuned["provenance"]["protocol"]["tuning"]
    assert label.startswith("tuned: 3 TPE trials x <= 2 epochs")
    chosen = yaml.safe_load(tuning_path("synthetic-default", "late_fusion", TASK, COHORT)
                            .read_text())["folds"][1]["config"]  # fmt: skip
    assert tuned["provenance"]["tuning"]["configs"] == {f"{TASK}/{COHORT}/fold1": chosen}
    assert tuned["provenance"]["run_key"] != default["provenance"]["run_key"]
    assert main(["leaderboard"]) == 0
    board = json.loads((cache / "leaderboard" / "leaderboard.json").read_text())
    tables = [t for t in board["rankings"] if t["task"] == TASK and t["cohort"] == COHORT]
    entries = [{row["name"] for row in t["rows"]} for t in tables]
    # never ranked together: one table holds the tuned entry, another the default one
    assert any("late_fusion.tuned" in e and "late_fusion" not in e for e in entries)
    assert any("late_fusion" in e and "late_fusion.tuned" not in e for e in entries)


def test_tuned_without_a_search_or_with_stale_files_is_a_clear_error(cache, capsys):
    from harness.evaluate.tune import tuning_path

    path = tuning_path("synthetic-default", "late_fusion", TASK, "matched")
    assert not path.exists()
    assert main(["evaluate", str(LATE), "--quick", "-t", TASK, "-c", "matched", "--encoder",
                 "test_tiny", "--trusted", "--tuned"]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "no tuned configuration" in err and f"harness tune {LATE} -t {TASK} -c matched" in err
    # a file tuned for other submission files is never used
    _tune()
    good = tuning_path("synthetic-default", "late_fusion", TASK, COHORT)
    saved = good.read_bytes()
    doc = yaml.safe_load(saved)
    doc["submission_digest"] = "0" * 64
    good.write_text(yaml.safe_dump(doc))
    try:
        with pytest.raises(InputError, match="tuned for other inputs"):
            from harness.evaluate.run import EvalSettings, evaluate

            evaluate(
                LATE,
                EvalSettings.quick(
                    tasks=(TASK,),
                    cohorts=(COHORT,),
                    encoder="test_tiny",
                    executor="local",
                    tuned=True,
                ),
            )
    finally:
        good.write_bytes(saved)


def test_results_written_before_tuning_read_as_default():
    """Results written before tuning existed read as `default`."""
    from harness.results import Result

    doc = {"provenance": {"protocol": {"profile": "honest", "folds": [1], "seeds": [0]}}}
    assert Result.of(doc).protocol()["tuning"] == "default"


def test_an_estimator_without_a_search_section_has_nothing_to_tune(tmp_path):
    """An estimator with no `search:` has nothing to tune (no general space for estimators)."""
    folder = tmp_path / "gbm"
    shutil.copytree(REPO / "submissions" / "tabular_gbm", folder)
    data = yaml.safe_load((folder / "submission.yaml").read_text())
    data.pop("search", None)
    (folder / "submission.yaml").write_text(yaml.safe_dump(data))
    from harness.evaluate.tune import tune

    with pytest.raises(InputError, match="nothing to search"):
        tune(folder, task=TASK, cohort=COHORT, encoder="test_tiny", executor="local")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", sorted(p.parent.name for p in (REPO / "submissions").glob("*/submission.yaml"))
)
def test_every_reference_submission_can_be_tuned(cache, name):
    """Each reference's search space builds working models: the default and two sampled
    configurations train and are scored (a range a constructor rejects fails here)."""
    from harness.evaluate.tune import Budget, tune

    outcome = tune(
        REPO / "submissions" / name,
        task=TASK,
        cohort=COHORT,
        encoder="test_tiny",
        executor="local",
        budget=Budget(trials=3, max_epochs=1),
        force=True,
    )
    trials = outcome.studies[1]["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3 and trials[0]["default"]
