"""Every submission folder validates; broken ones fail with messages naming file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from harness.cli.main import main
from harness.errors import SpecError, UsageError
from harness.models.scaffold import new_submission
from harness.models.submission import load_submission
from harness.validate import validate_submission

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SUBMISSION_DIRS = sorted(p for p in (ROOT / "submissions").iterdir() if p.is_dir())
BAD = ROOT / "tests" / "fixtures" / "bad_submissions"


def test_reference_zoo_is_present():
    names = {p.name for p in SUBMISSION_DIRS}
    expected = {"ehr_lstm", "ehr_transformer", "cxr_probe", "late_fusion", "medfuse", "drfuse"}
    assert expected | {"tabular_gbm"} <= names


@pytest.mark.parametrize("folder", SUBMISSION_DIRS, ids=lambda p: p.name)
def test_every_submission_validates(folder):
    report = validate_submission(folder, n=80)
    assert report.ok, "\n".join(f"{c.name}: {c.message}" for c in report.failures)
    assert (folder / "README.md").read_text().strip(), "each submission documents its method"
    assert load_submission(folder).name == folder.name


@pytest.mark.parametrize(
    "case, check, fragments",
    [
        ("bad_yaml", "schema", ["bad_yaml/submission.yaml", "invalid YAML at line 6", "Fix:"]),
        ("unknown_key", "schema", ["submission.yaml", "unknown key `learning_rate`", "valid keys"]),
        ("nan_output", "binary: forward", ["nan_output/model.py", "non-finite logits"]),
        ("wrong_shape", "binary: forward", ["shape (8, 2)", "expected (8,)", "spec.n_outputs"]),
        (
            "forward_raises",
            "binary: forward",
            ["forward_raises/model.py:17 in forward", "RuntimeError", "mat1 and mat2"],
        ),
    ],
)
def test_broken_submissions_get_clear_messages(case, check, fragments):
    report = validate_submission(BAD / case, n=60)
    assert not report.ok
    first = report.failures[0]
    assert first.name == check
    for fragment in fragments:
        assert fragment in first.message
    assert "Traceback" not in first.message and len(first.message.splitlines()) <= 3


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text("class Model:\n    pass\n")
    (folder / "submission.yaml").write_text(text)
    return folder


BASE = "name: x\nversion: 1\nkind: torch\nentry: model:Model\ninputs: [ehr]\n"


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("train: {lr: -1}\n", "`train.lr` is -1"),
        ("train: {epochs: 3}\n", "unknown key `train.epochs`"),
        ("train: {optimizer: sgd}\n", "`train.optimizer` is 'sgd'"),
        ("tasks: mortality\n", "`tasks` is 'mortality'"),
    ],
)
def test_schema_errors_name_the_field(tmp_path, extra, fragment):
    folder = _write(tmp_path / "x", BASE + extra)
    with pytest.raises(SpecError) as info:
        load_submission(folder)
    assert fragment in str(info.value) and str(folder / "submission.yaml") in str(info.value)


def test_schema_errors_on_inputs_kind_and_entry(tmp_path):
    cases = {
        BASE.replace("[ehr]", "[ehr, xray]"): "unknown input 'xray'",
        BASE.replace("torch", "estimator"): "cannot be used by an estimator",
        BASE.replace("model:Model", "model.Model"): "`entry` is 'model.Model'",
        BASE.replace("[ehr]", "[cxr_pixels]"): "no `backbone`",
        BASE.replace("kind: torch\n", ""): "required field `kind`",
    }
    for i, (text, fragment) in enumerate(cases.items()):
        with pytest.raises(SpecError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
            load_submission(_write(tmp_path / f"c{i}", text))


def test_missing_entry_class_is_reported(tmp_path):
    folder = _write(tmp_path / "x", BASE.replace("model:Model", "model:Other"))
    report = validate_submission(folder)
    assert [c.name for c in report.checks] == ["schema", "import"]
    assert "entry class 'Other'" in report.failures[0].message
    assert "Classes found: ['Model']" in report.failures[0].message


def test_new_submission_scaffold_validates(tmp_path):
    folder = new_submission("my_fusion", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.py", "submission.yaml"]
    assert load_submission(folder).name == "my_fusion"
    assert validate_submission(folder, n=60).ok
    with pytest.raises(UsageError, match="already exists"):
        new_submission("my_fusion", tmp_path)
    with pytest.raises(UsageError, match="must start with a letter"):
        new_submission("9lives", tmp_path)


@pytest.mark.slow
def test_cli_validate_and_new_submission(tmp_path, capsys):
    assert main(["new-submission", "cli_model", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "cli_model" / "model.py").is_file()
    bad = tmp_path / "wrong_shape"
    shutil.copytree(BAD / "wrong_shape", bad)
    assert main(["validate", str(bad), "--n", "60"]) != 0
    out = capsys.readouterr()
    assert "expected (8,)" in out.out + out.err
