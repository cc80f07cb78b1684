"""Result building, JSON Schemas (valid and invalid documents), ranking, rendering and the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from harness.cli.main import main
from harness.cohort.spec import load_task
from harness.errors import InputError
from harness.evaluate.run import EvalSettings, protocol_record
from harness.evaluate.score import robustness_curve, score_predictions
from harness.leaderboard.aggregate import aggregate
from harness.metrics.bootstrap import bootstrap_indices
from harness.metrics.comparisons import benjamini_hochberg
from harness.metrics.fairness import fairness_groups
from harness.results.document import build_result, failed_result, provenance, write_result
from harness.results.schema import LEADERBOARD_SCHEMA, schema_errors

N = 600
#: Four of the phenotype task's label ids (the leaderboard publishes only a task's own labels).
BOTH_A, BOTH_B, EHR_A, EHR_B = load_task("phenotype").label_columns[:4]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    subj = rng.integers(0, 400, N)
    stays = pd.DataFrame(
        {
            "age": rng.integers(18, 95, N),
            "gender": rng.choice(["F", "M"], N),
            "race_group": rng.choice(["WHITE", "BLACK", "OTHER"], N),
            "insurance": rng.choice(["Medicare", "Other"], N),
            "admission_type": rng.choice(["EMERGENCY", "ELECTIVE"], N),
            "dicom_id": np.where(rng.random(N) < 0.6, "x", None),
        }
    )
    y = rng.integers(0, 2, N)
    # multilabel with planted truth: labels BOTH_* need CXR; EHR_* are EHR-only
    labels = [BOTH_A, BOTH_B, EHR_A, EHR_B]
    Y = (rng.random((N, 4)) < 0.3).astype(int)
    noise = rng.random((N, 4))
    ehr_only = np.clip(0.15 * Y + 0.85 * noise, 0, 1)
    fusion = ehr_only.copy()
    fusion[:, :2] = np.clip(0.35 * Y[:, :2] + 0.65 * noise[:, :2], 0, 1)
    return dict(subj=subj, fold=subj % 5 + 1, stays=stays, y=y, labels=labels, Y=Y,
                ehr_only=ehr_only, fusion=fusion, rng=rng)  # fmt: skip


def _result(data, name, strength, resamples):
    y, rng = data["y"], np.random.default_rng(len(name))
    probs = [np.clip(strength * y + (1 - strength) * rng.random(N), 0, 1) for _ in range(2)]
    binary = score_predictions(
        "binary", y, probs, data["subj"], fold=data["fold"],
        groups=fairness_groups(data["stays"], ["gender", "race_group"]),
        scenario_probs={
            "cxr_missing_mcar": {0.0: probs, 0.5: [p * 0.5 + 0.25 for p in probs], 1.0: probs}
        },
        resamples=resamples,
    )  # fmt: skip
    ml = score_predictions(
        "multilabel", data["Y"], [data["fusion"]], data["subj"], label_names=data["labels"],
        reference_probs={"ehr_only": [data["ehr_only"]]}, resamples=resamples,
    )  # fmt: skip
    return build_result(
        name, "1.0", "synthetic-default",
        cohorts={"base": {"fingerprint": "f00d" * 3, "n_stays": N}},
        tasks={"mortality_icu": {"base": binary}, "phenotype": {"base": ml}},
        provenance_record=provenance(
            seeds=[0, 1], folds=[1, 2, 3, 4, 5], wall_time_s=1.5,
            protocol=protocol_record(
                EvalSettings(folds=(1, 2, 3, 4, 5), seeds=(0, 1)), ["mortality_icu", "phenotype"]
            ),
        ),
    )  # fmt: skip


@pytest.fixture(scope="module")
def results(data):
    r = bootstrap_indices(data["subj"], n_resamples=200)
    return {"strong": _result(data, "strong", 0.5, r), "weak": _result(data, "weak", 0.2, r)}


def test_bh_matches_scipy_and_handles_nan():
    p = np.random.default_rng(0).random(25) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p), atol=1e-12)
    q = benjamini_hochberg([0.01, np.nan, 0.04])
    assert np.isnan(q[1]) and q[0] == pytest.approx(0.02) and q[2] == pytest.approx(0.04)


def test_fusion_gain_planted_truth(results):
    gain = results["strong"]["tasks"]["phenotype"]["base"]["fusion_gain"]["labels"]
    assert gain[BOTH_A]["significant"] and gain[BOTH_B]["significant"]
    assert not gain[EHR_A]["significant"] and not gain[EHR_B]["significant"]
    assert gain[EHR_A]["delta"] == 0 and gain[EHR_A]["p_value"] == 1.0


def test_summary_fields_match_plain_computations(data, results):
    from sklearn.metrics import roc_auc_score

    block = results["strong"]["tasks"]["phenotype"]["base"]
    auroc = block["per_label"][BOTH_A]["auroc"]
    assert auroc["value"] == pytest.approx(roc_auc_score(data["Y"][:, 0], data["fusion"][:, 0]))
    assert auroc["ci_low"] < auroc["value"] < auroc["ci_high"]
    binary = results["strong"]["tasks"]["mortality_icu"]["base"]
    assert binary["n_units"] == 10 and binary["metrics"]["auroc"]["n_units"] == 10
    assert binary["bootstrap"]["n_resamples"] == 200 and binary["bootstrap"]["unit"] == "subject"
    curve = binary["robustness"]["cxr_missing_mcar"]
    assert curve["rates"] == [0.0, 0.5, 1.0] and curve["auc_normalised"] == pytest.approx(1.0)


def test_robustness_curve_area():
    c = robustness_curve([1.0, 0.0, 0.5], [0.5, 1.0, 0.75], "auroc")
    assert c["rates"] == [0.0, 0.5, 1.0] and c["auc_normalised"] == pytest.approx(0.75)


def test_schema_accepts_valid_and_rejects_patient_data(results):
    good = results["strong"]
    assert schema_errors(good) == []
    with_ids = copy.deepcopy(good)
    with_ids["tasks"]["mortality_icu"]["base"]["stay_id"] = [1, 2, 3]
    assert any("stay_id" in e for e in schema_errors(with_ids))
    per_patient = copy.deepcopy(good)
    curves = per_patient["tasks"]["mortality_icu"]["base"]["robustness"]
    curves["cxr_missing_mcar"]["values"] = [0.5] * N
    assert schema_errors(per_patient)
    leaked = copy.deepcopy(good)
    fair = leaked["tasks"]["mortality_icu"]["base"]["fairness"]["attributes"]["gender"]["groups"]
    fair.append({"group": "tiny", "suppressed": True, "n": 3, "tpr": 0.0})
    assert schema_errors(leaked)
    ids_as_metric = copy.deepcopy(good)
    ids_as_metric["tasks"]["mortality_icu"]["base"]["metrics"]["subject_id"] = {}
    assert schema_errors(ids_as_metric)
    with pytest.raises(InputError, match="(?s)result.schema.json.*Fix: regenerate"):
        write_result(with_ids, "/nonexistent/never-written.json")


def test_aggregate_ranks_renders_and_lists_failures(tmp_path, results):
    res_dir = tmp_path / "results"
    for name, res in results.items():
        write_result(res, res_dir / name / "result.json")
    write_result(failed_result("crashy", "0.1", "synthetic-default", "NaN in outputs"),
                 res_dir / "crashy" / "result.json")  # fmt: skip
    (res_dir / "broken").mkdir()
    (res_dir / "broken" / "result.json").write_text("{not json")
    other = copy.deepcopy(results["weak"])
    other["name"], other["cohorts"]["base"]["fingerprint"] = "elsewhere", "beef" * 3
    write_result(other, res_dir / "elsewhere" / "result.json")

    board = aggregate(res_dir, tmp_path / "board")
    doc = json.loads(board.paths["json"].read_text())
    assert schema_errors(doc, LEADERBOARD_SCHEMA) == []
    mort = [t for t in doc["rankings"] if t["task"] == "mortality_icu"]
    assert len(mort) == 2  # different cohort fingerprints are never ranked together
    main = next(t for t in mort if t["fingerprint"] == "f00d" * 3)
    assert [r["name"] for r in main["rows"]] == ["strong", "weak"]
    assert [r["rank"] for r in main["rows"]] == [1, 2]
    pheno = next(
        t for t in doc["rankings"] if t["task"] == "phenotype" and t["fingerprint"] == "f00d" * 3
    )
    assert [r["rank"] for r in pheno["rows"]] == [1, 1]  # identical predictions tie
    leader, second = pheno["rows"]
    assert leader["comparison"] == "leader" and leader["tied_with_leader"] is None
    assert second["comparison"] == "paired" and second["tied_with_leader"] is True
    assert second["delta_vs_leader"] == 0 and second["p_vs_leader"] == 1.0
    assert [(f["name"], f["category"]) for f in doc["failed"]] == [("crashy", "error")]
    assert [(r["entry"], r["category"]) for r in doc["rejected"]] == [("broken", "invalid_json")]
    text = json.dumps(doc)
    assert "stay_id" not in text and "subject_id" not in text
    html = board.paths["html"].read_text()
    offline = html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', ""
    )
    assert "<svg" in html and "<script src" not in html and " src=" not in html
    assert "http://" not in offline and "https://" not in offline
    md = board.paths["md"].read_text()
    assert "| 1 | strong |" in md and "crashy" in md


def test_cli_prints_table(tmp_path, results, capsys):
    res_dir = tmp_path / "r"
    write_result(results["strong"], res_dir / "strong" / "result.json")
    code = main(["leaderboard", "--results", str(res_dir), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 0 and "strong" in out and "mortality_icu" in out
    assert (tmp_path / "o" / "leaderboard.html").exists()
    assert "Lowest-TPR group" not in out
    code = main(
        ["leaderboard", "--results", str(res_dir), "--out", str(tmp_path / "o"), "--summary"]
    )
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0 and "Lowest-TPR group" in out and "Robustness to missing CXR" in out
    code = main(
        ["leaderboard", "--results", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    )
    assert code != 0
    assert "folder does not exist" in " ".join(capsys.readouterr().err.split())


def test_summary_tables_fusion_gain_fairness_robustness(tmp_path, data, results):
    """The leaderboard's summary tables restate the result blocks (checked against plain pandas)."""
    from harness.leaderboard.summary import summary_tables

    res_dir = tmp_path / "results"
    for name, res in results.items():
        write_result(res, res_dir / name / "result.json")
    # the same numbers from an entry declared EHR-only: its gain over another model is no fusion
    # gain, so the fusion tables leave it out (entries without recorded inputs are kept)
    unimodal = json.loads(json.dumps(results["strong"]))
    unimodal["name"] = "ehr_model"
    unimodal["provenance"]["inputs"] = ["demographics", "ehr"]
    write_result(unimodal, res_dir / "ehr_model" / "result.json")
    board = aggregate(res_dir, tmp_path / "board")
    tables = {(t["kind"], t["title"]): t for t in summary_tables(board.document)}
    gain = next(t for (kind, _), t in tables.items() if kind == "fusion_gain")
    assert [r[0] for r in gain["rows"]] == ["strong", "weak"]
    assert "ehr_model" in [
        r[0] for r in next(t for (k, _), t in tables.items() if k == "fairness")["rows"]
    ]
    strong = next(r for r in gain["rows"] if r[0] == "strong")
    assert strong[2] == "2 of 4"
    assert BOTH_A in strong[3] and BOTH_B in strong[3]
    assert EHR_A not in strong[3] and EHR_B not in strong[3]

    fair = next(t for (kind, _), t in tables.items() if kind == "fairness")
    assert fair["columns"] == ["submission", "race_group", "gender"]
    block = results["strong"]["tasks"]["mortality_icu"]["base"]["fairness"]["attributes"]
    for column, attribute in zip(fair["columns"][1:], ("race_group", "gender"), strict=True):
        groups = pd.DataFrame(block[attribute]["groups"])
        groups = groups[~groups["suppressed"]]
        worst = groups.loc[groups["tpr"].idxmin()]
        cell = next(r for r in fair["rows"] if r[0] == "strong")[fair["columns"].index(column)]
        assert cell.startswith(f"{worst['group']} ({worst['tpr']:.2f}; gap ")
        gap = groups["tpr"].max() - groups["tpr"].min()
        assert f"gap {gap:.2f}" in cell

    rob = next(t for (kind, _), t in tables.items() if kind == "robustness")
    curve = results["strong"]["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]
    row = next(r for r in rob["rows"] if r[0] == "strong")
    lo, hi = curve["values_ci_low"], curve["values_ci_high"]
    assert row[2:4] == [
        f"{curve['values'][0]:.3f} [{lo[0]:.3f}, {hi[0]:.3f}]",
        f"{curve['values'][-1]:.3f} [{lo[-1]:.3f}, {hi[-1]:.3f}]",
    ]
    columns = rob["columns"]
    mcar = columns.index("area cxr_missing_mcar")
    assert row[mcar] == f"{curve['auc_normalised']:.3f}"
    assert row[columns.index("area cxr_missing_acuity")] == "n/a"  # acuity not run
    assert "area ehr_missing" not in columns  # the reliance table's scenario
    above = curve["area_above_chance"]
    assert above == pytest.approx(np.mean(curve["values"]) - 0.5)  # a flat curve here
    assert row[columns.index("area above chance [95% CI]")].startswith(f"{above:.3f} [")
    md = board.paths["md"].read_text()
    assert "## Fusion gain per label over the EHR-only reference · phenotype · base" in md
    assert "## Lowest-TPR group per attribute · mortality_icu · base" in md
    html = board.paths["html"].read_text()
    assert "Lowest-TPR group per attribute" in html


def test_fusion_gain_over_the_best_single_modality_per_label(data):
    """Each label is compared with whichever unimodal reference is better on it (point AUROC)."""
    from sklearn.metrics import roc_auc_score

    from harness.metrics.comparisons import fusion_gain

    rng = np.random.default_rng(11)
    Y = data["Y"]
    cxr_only = rng.random(Y.shape)
    cxr_only[:, :2] = np.clip(0.2 * Y[:, :2] + 0.8 * rng.random((N, 2)), 0, 1)
    r = bootstrap_indices(data["subj"], n_resamples=200)
    block = score_predictions(
        "multilabel", Y, [data["fusion"]], data["subj"], label_names=data["labels"],
        reference_probs={"ehr_only": [data["ehr_only"]], "cxr_only": [cxr_only]},
        fusion_reference="ehr_only", unimodal_references=["ehr_only", "cxr_only"], resamples=r,
    )  # fmt: skip
    gain = block["fusion_gain_unimodal"]["labels"]
    for j, label in enumerate(data["labels"]):
        aucs = {
            "ehr_only": roc_auc_score(Y[:, j], data["ehr_only"][:, j]),
            "cxr_only": roc_auc_score(Y[:, j], cxr_only[:, j]),
        }
        assert gain[label]["reference"] == max(aucs, key=aucs.get)
        fused = roc_auc_score(Y[:, j], data["fusion"][:, j])
        assert gain[label]["delta"] == pytest.approx(fused - max(aucs.values()))
    assert [gain[label]["reference"] for label in data["labels"]] == [
        "cxr_only", "cxr_only", "ehr_only", "ehr_only"
    ]  # fmt: skip
    assert gain[BOTH_A]["significant"] and gain[BOTH_B]["significant"]
    assert not gain[EHR_A]["significant"] and not gain[EHR_B]["significant"]
    # with one reference given by name the result equals the single-reference gain
    single = fusion_gain(data["labels"], Y, [data["fusion"]], [cxr_only], r)
    named = fusion_gain(data["labels"], Y, [data["fusion"]], {"cxr_only": [cxr_only]}, r)
    for label in data["labels"]:
        assert named[label].pop("reference") == "cxr_only"
        assert named[label] == single[label]


def test_ranking_rows_show_what_each_entry_reads(tmp_path, results):
    """An entry that reads demographics is visible as such beside one that does not."""
    res_dir = tmp_path / "results"
    declared = {"strong": ["demographics", "cxr", "ehr_summary"], "weak": None}
    for name, res in results.items():
        res = copy.deepcopy(res)
        if declared.get(name):
            res["provenance"]["inputs"] = declared[name]
        write_result(res, res_dir / name / "result.json")
    board = aggregate(res_dir, tmp_path / "board")
    doc = json.loads(board.paths["json"].read_text())
    assert schema_errors(doc, LEADERBOARD_SCHEMA) == []
    rows = {r["name"]: r for t in doc["rankings"] for r in t["rows"]}
    assert rows["strong"]["inputs"] == ["ehr_summary", "cxr", "demographics"]  # canonical order
    assert rows["weak"]["inputs"] is None
    markdown = board.paths["md"].read_text()
    assert "| strong | 1.0 | ehr_summary, cxr, demographics |" in markdown
    assert "| weak | 1.0 | ? |" in markdown
    assert "<td>ehr_summary, cxr, demographics</td>" in board.paths["html"].read_text()


def test_aggregate_counts_its_steps_on_a_bar(tmp_path, results):
    """The leaderboard's stages (reading, ranking, Markdown, the site's charts) move one bar;
    a second call with unchanged results reuses the files and opens none."""
    from harness import progress

    res_dir = tmp_path / "r"
    for name in ("strong", "weak"):
        write_result(results[name], res_dir / name / "result.json")
    events: list[progress.Event] = []
    with progress.reporting(events.append):
        aggregate(res_dir, tmp_path / "o")
    closed = [e for e in events if e.kind == "close"]
    assert [(e.description.split(":")[0], e.completed, e.total) for e in closed] == [
        ("leaderboard", 4, 4)
    ]
    doing = [e.description for e in events if e.kind == "update"]
    assert any("charts" in d for d in doing) and any("vetting" in d for d in doing)
    events.clear()
    with progress.reporting(events.append):
        aggregate(res_dir, tmp_path / "o")
    assert events == []
