"""Task, cohort, variable and phenotype definitions in tasks/, and the fold assignment."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from harness.cohort.folds import assign_folds, fold_of_subject, split_masks
from harness.cohort.spec import (
    feature_names,
    list_tasks,
    load_cohort_spec,
    load_phenotypes,
    load_task,
    load_variables,
)
from harness.config import REPO_ROOT
from harness.errors import SpecError, UnknownNameError


@pytest.mark.parametrize("name", list_tasks())
def test_every_task_loads(name):
    task = load_task(name)
    assert task.name == name and task.version >= 1 and len(task.description) > 100
    assert len(task.label_names) == len(task.label_columns) or task.kind == "multiclass"


def test_task_contracts():
    assert {"los", "mortality_icu", "mortality_in_hospital", "phenotype"} <= set(list_tasks())
    pheno = load_task("phenotype")
    ref = yaml.safe_load((REPO_ROOT / "tasks/phenotypes.yaml").read_text())["phenotypes"]
    assert pheno.kind == "multilabel" and pheno.n_outputs == 25
    assert pheno.label_names == sorted(pheno.label_names) == [p["name"] for p in ref]
    los = load_task("los")
    assert (
        los.label_columns == ["los_class"] and los.n_classes == 7 and los.class_names[-1] == "14+d"
    )
    assert load_task("mortality_icu").label_columns == ["mortality_icu"]


def test_phenotype_codes_match_the_reference_counts():
    # per-version counts of the reference toolkit (icd9 = leading digit or V/E; see tasks file)
    phenos = {p.id: p for p in load_phenotypes()}
    assert len(phenos) == 25
    assert phenos["essential_hypertension"].icd9 == ("4011", "4019")
    assert phenos["essential_hypertension"].icd10 == ("I10", "I169")
    assert "N179" in phenos["acute_renal_failure"].icd10


def test_unknown_task_and_unknown_key(tmp_path, monkeypatch):
    with pytest.raises(UnknownNameError, match="Did you mean 'mortality_icu'"):
        load_task("mortality_icuu")
    for f in (REPO_ROOT / "tasks").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    bad = yaml.safe_load((tmp_path / "los.yaml").read_text()) | {"metric": "auroc"}
    (tmp_path / "los.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.setenv("HARNESS_TASKS", str(tmp_path))
    with pytest.raises(SpecError, match=r"los.yaml: unknown key 'metric'"):
        load_task("los")
    cohort = yaml.safe_load((tmp_path / "cohort.yaml").read_text())
    cohort["cxr"]["lookback"] = 6
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump(cohort))
    with pytest.raises(SpecError, match=r"cohort.yaml: unknown key 'lookback' in cxr"):
        load_cohort_spec()


def test_variables_feature_list():
    names = feature_names(load_variables())
    assert len(names) == len(set(names))
    assert names[:2] == ["heart_rate", "sbp"] and "urine_output" in names
    assert [n for n in names if n.startswith("rhythm_")][-1] == "rhythm_other"


def test_folds_stable_and_split_masks():
    subjects = np.array([10, 11, 10, 12, 99999999])
    folds = assign_folds(subjects)
    assert folds[0] == folds[2] == fold_of_subject(10)
    assert set(assign_folds(np.arange(1000))) == {1, 2, 3, 4, 5}
    # adding subjects does not move existing ones
    assert (assign_folds(np.concatenate([subjects, [5, 6]]))[:5] == folds).all()
    f = np.array([1, 2, 3, 4, 5, 5, 1])
    train, val, test = split_masks(f, 5)
    assert test.tolist() == [0, 0, 0, 0, 1, 1, 0] and val.tolist() == [1, 0, 0, 0, 0, 0, 1]
    assert (train | val | test).all() and train.tolist() == [0, 1, 1, 1, 0, 0, 0]
