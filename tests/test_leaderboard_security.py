"""Attacks on the published leaderboard, each stopped by a check (hand-written expectations).

A stranger's submission may try to rank first or to carry patient data out through the
leaderboard: through its exception messages, or through a result.json changed after the harness
wrote it. Forged contents are written with ``write_result`` (so they carry a valid signature and
reach the content checks, as if the signing key had leaked) unless the attack is the edit itself.
Every test also checks that the intact entry is still ranked.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat

import numpy as np
import pytest

from harness.cli.main import main
from harness.cohort.spec import load_task
from harness.errors import InputError
from harness.evaluate.run import EvalSettings, protocol_record
from harness.evaluate.score import score_predictions
from harness.leaderboard.aggregate import aggregate
from harness.leaderboard.publish import (
    FAILURE_MESSAGES,
    PublicationError,
    assert_publishable,
    find_paths,
)
from harness.metrics.bootstrap import bootstrap_indices
from harness.metrics.fairness import fairness_groups
from harness.results.document import build_result, failed_result, provenance, write_result
from harness.results.schema import LEADERBOARD_SCHEMA, schema_errors
from harness.sanitize import sanitize_message, strip_paths
from harness.signing import sign, signing_key, signing_key_path

N = 400
DATASET = "synthetic-default"
LABELS = load_task("phenotype").label_columns[:4]
#: 165 (stay_id, subject_id, died) triples in MIMIC-IV's id ranges.
TRIPLES = [(30_000_000 + 7 * i, 10_000_000 + 3 * i, i % 2) for i in range(165)]
STAY_IDS = [str(t[0]) for t in TRIPLES]


@pytest.fixture(scope="module")
def honest() -> dict:
    """One intact result: binary mortality with fairness and robustness, phenotype per label."""
    import pandas as pd

    rng = np.random.default_rng(5)
    subj = rng.integers(0, 300, N)
    stays = pd.DataFrame(
        {
            "gender": rng.choice(["F", "M"], N),
            "race_group": rng.choice(["WHITE", "BLACK", "OTHER"], N),
        }
    )
    y = rng.integers(0, 2, N)
    probs = [np.clip(0.5 * y + 0.5 * rng.random(N), 0, 1)]
    r = bootstrap_indices(subj, n_resamples=60)
    no_ehr = [np.clip(0.1 * y + 0.9 * rng.random(N), 0, 1)]
    ref = [np.clip(0.3 * y + 0.7 * rng.random(N), 0, 1)]
    binary = score_predictions(
        "binary", y, probs, subj, groups=fairness_groups(stays, ["gender", "race_group"]),
        scenario_probs={
            "cxr_missing_mcar": {0.0: probs, 0.5: probs, 1.0: probs},
            "ehr_missing": {0.0: probs, 1.0: no_ehr},
        },
        reference_scenarios={"ehr_lstm": {"cxr_missing_mcar": {0.0: ref, 0.5: ref, 1.0: ref}}},
        resamples=r,
    )  # fmt: skip
    binary["metrics"]["brier"]["value"] = 0.317  # the number the hand-edit attack changes
    binary["references"] = {"ehr_only": "ehr_lstm", "cxr_only": None, "best_unimodal": "ehr_lstm"}
    Y = (rng.random((N, 4)) < 0.3).astype(int)
    multi = score_predictions(
        "multilabel", Y, [np.clip(0.3 * Y + 0.7 * rng.random((N, 4)), 0, 1)], subj,
        label_names=LABELS, resamples=r,
    )  # fmt: skip
    return build_result(
        "honest", "1.0", DATASET,
        cohorts={"base": {"fingerprint": "f00d" * 3, "n_stays": N}},
        tasks={"mortality_icu": {"base": binary}, "phenotype": {"base": multi}},
        provenance_record=provenance(
            seeds=[0], folds=[1],
            protocol=protocol_record(
                EvalSettings(folds=(1,), seeds=(0,)), ["mortality_icu", "phenotype"]
            ),
        ),
    )  # fmt: skip


def forged(honest: dict, name: str = "forged") -> dict:
    doc = copy.deepcopy(honest)
    doc["name"] = name
    return doc


def publish(tmp_path, files: dict[str, dict | bytes], **kwargs) -> tuple[dict, dict[str, str]]:
    """Write each result (dicts signed by write_result, bytes as they are), then aggregate."""
    results = tmp_path / "results"
    for name, content in files.items():
        path = results / DATASET / name / "result.json"
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            write_result(content, path)
    board = aggregate(results, tmp_path / "board", **kwargs)
    texts = {kind: path.read_text("utf-8") for kind, path in board.paths.items()}
    return board.document, texts


def strict_json(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"bare {constant} in the output")

    return json.loads(text, parse_constant=refuse)


def ranked(doc: dict) -> set[str]:
    return {row["name"] for table in doc["rankings"] for row in table["rows"]}


def rejected(doc: dict) -> list[tuple[str, str]]:
    return [(r["entry"], r["category"]) for r in doc["rejected"]]


def assert_clean(texts: dict[str, str], *secrets: str) -> None:
    """Valid leaderboard JSON, and none of ``secrets`` nor any path in any published file."""
    doc = strict_json(texts["json"])
    assert schema_errors(doc, LEADERBOARD_SCHEMA) == []
    for text in texts.values():
        assert find_paths(text) == []
        for secret in secrets:
            assert secret not in text


def signed_bytes(doc: dict) -> bytes:
    """A document signed with this cache's key, bypassing write_result's schema check."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    body["signature"] = sign(body, signing_key())
    return json.dumps(body, indent=2).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Exception messages


def test_sanitize_message_by_hand():
    raw = (
        "failed at /home/alice/work/sub/model.py:12 reading C:\\Users\\bob\\data and 1234567"
        "\x00\x1b[31m, see https://example.org/x/y or ~/notes/a.txt; kept 1234 and 18-40"
    )
    assert sanitize_message(raw) == (
        "failed at model.py:12 reading <path> and <n>[31m, see <url> or a.txt; kept 1234 and 18-40"
    )
    assert sanitize_message(sanitize_message(raw)) == sanitize_message(raw)
    assert sanitize_message("x" * 1000) == "x" * 297 + "..."
    assert strip_paths("TPR/FPR and n/a and a / b") == "TPR/FPR and n/a and a / b"


def test_exception_with_patient_triples_and_path_publishes_neither(tmp_path, honest):
    leak = ", ".join(f"({s},{p},{d})" for s, p, d in TRIPLES)
    error = f"ValueError: rows {leak} in /home/alice/mimic-iv/icu/icustays.csv.gz"
    record = failed_result("leaky", "0.1", DATASET, error, category="crashed")
    assert record["category"] == "crashed"
    assert record["error"].startswith("ValueError: rows (<n>,<n>,0), (<n>,<n>,1), (<n>,<n>,0)")
    assert len(record["error"]) == 300 and record["error"].endswith("...")
    # the same record edited back by hand to the raw message, unsigned: published only with the
    # maintainer's override, and sanitized again on the way out
    raw = dict(record, error=error + " " + leak, schema_version="1.0")
    raw.pop("category")
    doc, texts = publish(
        tmp_path,
        {"honest": honest, "leaky": json.dumps(raw).encode()},
        accept_unsigned=True,
    )
    (failed,) = doc["failed"]
    assert failed["name"] == "leaky" and failed["category"] == "error"
    # only a fixed sentence per category is published: free text could carry data as letters
    assert failed["message"] == FAILURE_MESSAGES["error"]
    assert not re.search(r"\d{5,}", failed["message"]) and len(failed["message"]) <= 300
    assert_clean(texts, "/home", "alice", "icustays", *STAY_IDS)
    assert ranked(doc) == {"honest"}


def test_letter_encoded_data_in_an_error_is_not_published(tmp_path, honest):
    """Labels spelled as letters pass every digit and path filter: the text is not published."""
    bits = "".join("abcdefghijklmnop"[b] for b in range(16)) * 4
    record = failed_result("spelled", "1", DATASET, f"RuntimeError: LEAK {bits}", category="error")
    doc, texts = publish(tmp_path, {"honest": honest, "spelled": record})
    assert doc["failed"][0]["message"] == FAILURE_MESSAGES["error"]
    assert_clean(texts, bits, "LEAK")


def test_unknown_failure_category_is_published_as_error():
    assert failed_result("x", "1", DATASET, "boom", category="pwned")["category"] == "error"
    assert failed_result("x", "1", DATASET, "boom", category="timeout")["category"] == "timeout"


# --------------------------------------------------------------------------------------------
# Patient-level content


def test_per_stay_fairness_groups_are_not_published(tmp_path, honest):
    per_stay = forged(honest)
    table = per_stay["tasks"]["mortality_icu"]["base"]["fairness"]["attributes"]["gender"]
    table["groups"] = [
        {"group": str(s), "suppressed": False, "n": 1, "tpr": float(d), "prevalence": float(d)}
        for s, _, d in TRIPLES
    ]
    unnamed = forged(honest, "unnamed")
    table = unnamed["tasks"]["mortality_icu"]["base"]["fairness"]["attributes"]["gender"]
    table["groups"] = [
        {"group": f"g{i % 7}x{i // 7}", "suppressed": False, "n": 1, "tpr": float(d)}
        for i, (_, _, d) in enumerate(TRIPLES)
    ]
    doc, texts = publish(tmp_path, {"honest": honest, "forged": per_stay, "unnamed": unnamed})
    assert rejected(doc) == [("forged", "patient_level"), ("unnamed", "patient_level")]
    assert ranked(doc) == {"honest"}
    assert_clean(texts, *STAY_IDS, "g0x0")


def test_groups_with_too_few_positives_are_suppressed(tmp_path, honest):
    few = forged(honest, "few")
    table = few["tasks"]["mortality_icu"]["base"]["fairness"]["attributes"]["gender"]
    female = next(r for r in table["groups"] if r["group"] == "F")
    female["prevalence"] = 4 / female["n"]  # 4 positives: its TPR describes 4 patients
    male = copy.deepcopy(next(r for r in table["groups"] if r["group"] == "M"))
    doc, texts = publish(tmp_path, {"honest": honest, "few": few})
    assert doc["rejected"] == []
    entry = next(e for e in doc["entries"] if e["name"] == "few")
    table = entry["tasks"]["mortality_icu"]["base"]["fairness"]["attributes"]["gender"]
    assert table["groups"] == [{"group": "F", "suppressed": True}, male]
    assert table["n_suppressed_groups"] == 1 and table["summary"] == {}
    assert "gap_ci" not in table and "equalized_odds_difference" not in table
    assert ranked(doc) == {"honest", "few"}
    assert_clean(texts)


def test_per_label_keys_named_after_stay_ids_are_rejected(tmp_path, honest):
    bad = forged(honest)
    per_label = bad["tasks"]["phenotype"]["base"]["per_label"]
    per_label[STAY_IDS[0]] = per_label.pop(LABELS[0])
    doc, texts = publish(tmp_path, {"honest": honest, "forged": bad})
    assert rejected(doc) == [("forged", "unknown_key")]
    assert "<n>" in doc["rejected"][0]["reason"]
    assert ranked(doc) == {"honest"}
    assert_clean(texts, STAY_IDS[0])


def test_robustness_rates_set_to_stay_ids_are_rejected(tmp_path, honest):
    rates = forged(honest)
    curve = rates["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]
    curve["rates"] = [float(s) for s in STAY_IDS[:3]]
    scenario = forged(honest, "scenario")
    curves = scenario["tasks"]["mortality_icu"]["base"]["robustness"]
    curves[f"stay_{STAY_IDS[1]}"] = curves.pop("cxr_missing_mcar")
    doc, texts = publish(tmp_path, {"honest": honest, "forged": rates, "scenario": scenario})
    assert rejected(doc) == [("forged", "unknown_key"), ("scenario", "unknown_key")]
    assert ranked(doc) == {"honest"}
    assert_clean(texts, *STAY_IDS[:3])


def test_paths_in_provenance_are_cut_to_file_names(tmp_path, honest):
    doc_in = forged(honest, "pathy")
    doc_in["provenance"]["encoder_keys"] = ["/home/alice/encoders/weights.pt"]
    doc_in["provenance"]["hardware"]["processor"] = "C:\\Users\\bob\\cpu"
    doc, texts = publish(tmp_path, {"honest": honest, "pathy": doc_in})
    entry = next(e for e in doc["entries"] if e["name"] == "pathy")
    assert entry["provenance"]["encoder_keys"] == ["weights.pt"]
    assert entry["provenance"]["hardware"]["processor"] == "<path>"
    assert "signature" not in entry
    assert_clean(texts, "alice", "bob")


def test_final_check_refuses_paths_and_the_home_folder():
    for text in ('{"x": "/srv/data/stays.csv"}', "see /home", "C:\\Users\\x", "~/x"):
        with pytest.raises(PublicationError, match="absolute path"):
            assert_publishable(text)
    with pytest.raises(PublicationError):
        assert_publishable(f"under {os.path.expanduser('~')} somewhere")
    assert_publishable('<svg xmlns="http://www.w3.org/2000/svg"></svg></td> n/a 1/2 TPR/FPR')


# --------------------------------------------------------------------------------------------
# Broken and forged files


def test_nan_is_rejected_and_the_output_is_strict_json(tmp_path, honest):
    text = json.dumps(forged(honest), indent=2)
    nan = text.replace('"value": 0.317', '"value": NaN', 1).encode()
    inf = text.replace('"value": 0.317', '"value": 1e999', 1).encode()
    assert nan != text.encode() and inf != text.encode()
    doc, texts = publish(tmp_path, {"honest": honest, "nan": nan, "inf": inf})
    assert rejected(doc) == [("inf", "non_finite"), ("nan", "non_finite")]
    assert ranked(doc) == {"honest"}
    strict_json(texts["json"])  # no bare NaN or Infinity anywhere
    bad = forged(honest)
    bad["tasks"]["mortality_icu"]["base"]["metrics"]["brier"]["value"] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        write_result(bad, tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_unreadable_files_are_rejected_and_the_others_published(tmp_path, honest):
    valid = json.dumps(forged(honest), indent=2).encode()
    schema_bad = forged(honest)
    schema_bad["tasks"]["mortality_icu"]["base"]["stay_id"] = [int(s) for s in STAY_IDS]
    files = {
        "honest": honest,
        "latin1": b'{"name": "caf\xe9"}',
        "truncated": valid[: len(valid) // 2],
        "notjson": b"hello, world",
        "schema": signed_bytes(schema_bad),
    }
    doc, texts = publish(tmp_path, files)
    assert rejected(doc) == [
        ("latin1", "encoding"),
        ("notjson", "invalid_json"),
        ("schema", "schema"),
        ("truncated", "invalid_json"),
    ]
    assert ranked(doc) == {"honest"}
    assert_clean(texts, *STAY_IDS)


def test_a_value_changed_by_hand_is_rejected_by_its_signature(tmp_path, honest):
    doc, _ = publish(tmp_path / "first", {"honest": honest, "edited": forged(honest, "edited")})
    assert ranked(doc) == {"honest", "edited"}
    path = tmp_path / "first" / "results" / DATASET / "edited" / "result.json"
    text = path.read_text()
    assert text.count('"value": 0.317') == 1
    path.write_text(text.replace('"value": 0.317', '"value": 0.01'))
    board = aggregate(tmp_path / "first" / "results", tmp_path / "board")
    assert rejected(board.document) == [("edited", "signature")]
    assert "edited after" in board.rejected[0]["reason"]
    assert ranked(board.document) == {"honest"}


def test_unsigned_results_need_the_maintainers_override(tmp_path, honest, capsys):
    old = dict(forged(honest, "old"), schema_version="1.0")  # written before signing existed
    unsigned = json.dumps(old).encode()
    other_key = forged(honest, "alien")
    other_key["signature"] = sign(other_key, bytes(32))
    # an unsigned file claiming a schema that was always signed: never an old result
    recent = json.dumps(forged(honest, "recent")).encode()
    files = {"honest": honest, "old": unsigned, "alien": json.dumps(other_key).encode()}
    doc, _ = publish(tmp_path, {**files, "recent": recent})
    assert rejected(doc) == [
        ("alien", "signature"), ("old", "signature"), ("recent", "signature")
    ]  # fmt: skip
    reason = doc["rejected"][1]["reason"]
    assert "harness evaluate" in reason and "--accept-unsigned" in reason
    results, out = tmp_path / "results", tmp_path / "cli"
    assert main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0
    assert "rejected old (signature)" in " ".join(capsys.readouterr().out.split())
    args = ["leaderboard", "--results", str(results), "--out", str(out), "--accept-unsigned"]
    assert main(args) == 0
    board = strict_json((out / "leaderboard.json").read_text())
    assert ranked(board) == {"honest", "old"}
    assert rejected(board) == [("alien", "signature"), ("recent", "signature")]


def test_a_value_outside_its_own_ci_or_range_is_rejected(tmp_path, honest):
    outside = forged(honest, "outside")
    auroc = outside["tasks"]["mortality_icu"]["base"]["metrics"]["auroc"]
    auroc.update(value=0.99, ci_low=0.6, ci_high=0.7)
    above_one = forged(honest, "above")
    above_one["tasks"]["phenotype"]["base"]["per_label"][LABELS[1]]["auprc"]["value"] = 1.5
    doc, texts = publish(tmp_path, {"honest": honest, "outside": outside, "above": above_one})
    assert rejected(doc) == [("above", "out_of_range"), ("outside", "outside_ci")]
    assert ranked(doc) == {"honest"}
    assert_clean(texts)


def test_signing_key_is_private_and_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    key = signing_key()
    path = signing_key_path()
    assert path == tmp_path / "cache" / ".keys" / "result-signing.key"
    assert len(key) == 32 and path.read_bytes() == key and signing_key() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["result-signing.key"]


def test_the_final_path_check_scans_only_slashed_stretches_and_finds_the_same():
    """Reference: every pattern over the whole text (what the check did before it skipped the
    stretches without a slash or a backslash)."""
    import random
    from pathlib import Path

    from harness.leaderboard.publish import _WEB_URL, find_paths
    from harness.sanitize import FINAL_PATH_PATTERNS

    def whole_text(text: str) -> list[str]:
        scan = _WEB_URL.sub("", text)
        hits = [m.group(0) for p in FINAL_PATH_PATTERNS for m in p.finditer(scan)]
        home = str(Path.home())
        return hits + ([home] if len(home) > 1 and home in text else [])

    rng = random.Random(7)
    alphabet = "ab/\\:~.-_ \"'C\n\tfile:/homeusrtmphttps://x.y/z`<>"
    found = 0
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 48)))
        expected = whole_text(text)
        assert sorted(find_paths(text)) == sorted(expected), repr(text)
        found += bool(expected)
    assert found > 500  # the generated texts do hold paths


def test_forged_reliance_and_reference_comparisons_are_rejected(tmp_path, honest):
    """The reliance table and the per-rate comparisons are numbers a forger could use to carry
    stay ids or to claim robustness: each is held to its range, its length and its grid."""
    block = honest["tasks"]["mortality_icu"]["base"]
    assert block["reliance"]["dominant"] == "ehr"  # the fixture's entry ignores the image
    assert "ehr_lstm" in block["robustness"]["cxr_missing_mcar"]["versus"]
    attacks = {}
    doc = forged(honest, "index")
    doc["tasks"]["mortality_icu"]["base"]["reliance"]["imbalance_index"]["value"] = 1.7
    attacks["index"] = doc
    doc = forged(honest, "stayid")
    doc["tasks"]["mortality_icu"]["base"]["reliance"]["without_ehr"]["value"] = float(STAY_IDS[0])
    attacks["stayid"] = doc
    doc = forged(honest, "short")
    versus = doc["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]["versus"]
    versus["ehr_lstm"]["delta"] = versus["ehr_lstm"]["delta"][:2]
    attacks["short"] = doc
    doc = forged(honest, "offgrid")
    doc["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]["helps_up_to"] = 0.3
    attacks["offgrid"] = doc
    doc = forged(honest, "claims")  # claims robustness the comparisons do not show
    curve = doc["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]
    curve["helps_up_to"] = 1.0 if curve["helps_up_to"] != 1.0 else None
    attacks["claims"] = doc
    doc = forged(honest, "chance")
    curve = doc["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]
    curve["chance"] = float(STAY_IDS[2])
    attacks["chance"] = doc
    doc = forged(honest, "versus")
    versus = doc["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]["versus"]
    versus[STAY_IDS[1]] = versus.pop("ehr_lstm")
    attacks["versus"] = doc
    doc = forged(honest, "dominant")
    doc["tasks"]["mortality_icu"]["base"]["reliance"]["dominant"] = "balanced"
    attacks["dominant"] = doc
    doc = forged(honest, "ci")
    curve = doc["tasks"]["mortality_icu"]["base"]["robustness"]["cxr_missing_mcar"]
    curve["values_ci_high"] = [float(s) for s in STAY_IDS[:3]]
    attacks["ci"] = doc
    board, texts = publish(tmp_path, {"honest": honest, **attacks})
    assert rejected(board) == [
        ("chance", "schema"), ("ci", "out_of_range"), ("claims", "schema"),
        ("dominant", "schema"), ("index", "out_of_range"), ("offgrid", "schema"),
        ("short", "schema"), ("stayid", "out_of_range"), ("versus", "unknown_key"),
    ]  # fmt: skip
    assert ranked(board) == {"honest"}
    assert_clean(texts, *STAY_IDS[:3])
