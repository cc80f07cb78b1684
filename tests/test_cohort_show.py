"""`harness cohort show` and `harness cohort diff` as printed: each cohort's own funnel, plain
values (no Python reprs), build columns named after their cohorts, and every number checked
against the built stays tables read with pandas."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

import harness.cli.cohort as cohort_cli
from harness.cli.main import main
from harness.cohort.build import build_cohorts
from harness.cohort.show import diff_builds, diff_table, prevalence_table, summarize
from harness.data import synthetic

DATASET = "showdiff"
FLAGS = ["mortality_icu", "mortality_in_hospital", "hypertension_with_complications"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Its own small build (base and matched) in a cache of its own."""
    root = tmp_path_factory.mktemp("showdiff")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(root / "cache"))
        synthetic.generate(root / "ds", n_patients=150, seed=5, image_size=64)
        paths = build_cohorts(
            root / "ds" / "mimic-iv", root / "ds" / "mimic-cxr-jpg", dataset=DATASET, threads=1
        )
        yield paths


@pytest.fixture
def stays(built) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(path / "stays.parquet") for name, path in built.items()}


@pytest.fixture
def fingerprints(built) -> dict[str, str]:
    return {
        name: json.loads((path / "manifest.json").read_text())["fingerprint"]
        for name, path in built.items()
    }


def run(args: list[str], width: int, monkeypatch) -> tuple[int, str]:
    """The command's exit code and what it printed at ``width`` columns."""
    out = io.StringIO()
    monkeypatch.setattr(cohort_cli, "console", Console(file=out, width=width))
    code = main(args)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    return code, text


def cells(text: str, first: str) -> list[str]:
    """The cells of the table line whose first cell is ``first`` (rules and spaces dropped)."""
    for line in text.splitlines():
        parts = [p.strip() for p in re.split(r"[│┃]", line) if p.strip()]
        if parts and parts[0] == first:
            return parts
    raise AssertionError(f"no row {first!r} in\n{text}")


def block(text: str, title: str) -> str:
    """The text from the line holding ``title`` to the end of that table."""
    start = text.index(title)
    end = text.find("└", start)
    return text[start : text.find("\n", end)]


# ------------------------------------------------------------------------------------- show


def test_show_prints_each_cohorts_own_funnel(built, stays, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(built["base"].parents[2]))
    code, text = run(["cohort", "show", "--dataset", DATASET], 80, monkeypatch)
    assert code == 0
    assert "-0" not in text and "None" not in text
    base = block(text, f"{DATASET} / base: exclusion funnel")
    matched = block(text, f"{DATASET} / matched: exclusion funnel")
    n_base, n_matched = len(stays["base"]), len(stays["matched"])
    # each funnel ends at its own cohort's size; matched removes the base stays without CXR
    assert int(cells(base, "alive_at_prediction")[1]) == n_base
    assert "linked_cxr" not in base
    without_cxr = int((~stays["base"]["has_cxr"].astype(bool)).sum())
    assert cells(matched, "linked_cxr")[1:] == [
        str(n_matched),
        str(stays["matched"]["subject_id"].nunique()),
        str(without_cxr),
    ]
    # every "removed" cell is the drop from the row above, printed without a sign
    for funnel in (base, matched):
        rows = [cells(funnel, s) for s in re.findall(r"^│ (\w+) ", funnel, re.M)]
        assert rows[0][3:] == []  # the first step removes nothing, and says so by a blank
        for above, row in zip(rows, rows[1:], strict=False):
            assert row[3] == str(int(above[1]) - int(row[1]))


@pytest.mark.parametrize("width", [60, 80])
def test_show_prevalences_are_whole_names_and_match_pandas(built, stays, width):
    summaries = [summarize_build(built[name]) for name in ("base", "matched")]
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(prevalence_table(summaries))
    text = console.export_text()
    assert "…" not in text
    labels = [c for c in summaries[0]["label_prevalence"] if c != "los_class"]
    for label in labels:
        expected = [f"{stays[n][label].mean():.3f}" for n in ("base", "matched")]
        assert cells(text, label)[1:] == expected, label
    for cls, n in stays["base"]["los_class"].value_counts().items():
        m = int((stays["matched"]["los_class"] == cls).sum())
        assert cells(text, f"los_class={int(cls)} (count)")[1:] == [str(n), str(m)]


def summarize_build(path: Path) -> dict:
    from harness.cohort.load import load_cohort

    return summarize(load_cohort(path=path))


# ------------------------------------------------------------------------------------- diff


def test_diff_names_its_columns_and_prints_plain_values(built, stays, fingerprints, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(built["base"].parents[2]))
    args = ["cohort", "diff", f"{DATASET}/base", f"{DATASET}/matched"]
    code, text = run(args, 80, monkeypatch)
    assert code == 1  # they differ
    assert "None" not in text and "{" not in text and "'" not in text and "…" not in text
    header = "\n".join(line for line in text.splitlines() if line.startswith("┃"))
    assert re.search(rf"{DATASET}/base\s*┃\s*{DATASET}/matched", header)
    assert re.search(rf"{fingerprints['base'][:12]}\s*┃\s*{fingerprints['matched'][:12]}", header)
    assert not re.search(r"┃\s*[AB]\s*┃", header)
    base, matched = stays["base"], stays["matched"]
    assert cells(text, "stays")[1:] == [str(len(base)), str(len(matched))]
    only_base = len(set(base["stay_id"]) - set(matched["stay_id"]))
    assert cells(text, "stays only in this build")[1:] == [str(only_base), "0"]
    assert cells(text, "linked_cxr")[1:] == ["—", str(len(matched))]  # a step base lacks
    for label in FLAGS:
        expected = [f"{base[label].mean():.4f}", f"{matched[label].mean():.4f}"]
        assert cells(text, label)[1:] == expected, label
    for cls in sorted(set(base["los_class"].dropna().astype(int))):
        a, b = int((base["los_class"] == cls).sum()), int((matched["los_class"] == cls).sum())
        if a != b:
            assert cells(text, f"los_class={cls} (count)")[1:] == [str(a), str(b)]
    assert re.search(r"fingerprint parts that differ: .*\bstays\b", text)


@pytest.mark.parametrize("width", [60, 80])
def test_diff_keeps_label_names_whole(built, width):
    diff = diff_builds(built["base"], built["matched"])
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(diff_table(diff))
    text = console.export_text()
    assert "…" not in text
    for row in diff["label_prevalence"]:
        if not isinstance(row["a"], dict):
            assert re.search(rf"(^|[\s│]){row['label']}[\s│]", text, re.M), (width, row["label"])


def test_diff_of_a_build_with_itself(built, fingerprints, monkeypatch):
    code, text = run(["cohort", "diff", str(built["base"]), str(built["base"])], 80, monkeypatch)
    assert code == 0
    assert "identical builds" in text and "prevalence" not in text
    assert text.count(f"{DATASET}/base") == 2 and text.count(fingerprints["base"][:12]) == 2


def test_diff_json_names_the_builds(built, fingerprints, capsys):
    assert main(["cohort", "diff", str(built["base"]), str(built["matched"]), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["name"] == {"a": f"{DATASET}/base", "b": f"{DATASET}/matched"}
    assert result["fingerprint"] == {"a": fingerprints["base"], "b": fingerprints["matched"]}


def test_diff_of_a_folder_that_is_no_build_says_so(built, tmp_path, capsys):
    assert main(["cohort", "diff", str(tmp_path), str(built["base"])]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a cohort build (it holds no manifest.json)" in " ".join(err.split())


def test_class_counts_missing_from_one_build_print_a_dash():
    diff = {
        "a": "x", "b": "y", "name": {"a": "d/base", "b": "d/other"}, "identical": False,
        "fingerprint": {"a": "1" * 64, "b": "2" * 64}, "parts_differing": ["labels"],
        "definitions_differing": [], "funnel": [], "n_stays": {"a": 10, "b": 10},
        "stays_only_in_a": 0, "stays_only_in_b": 0, "variables_differing": False,
        "label_prevalence": [
            {"label": "los_class", "a": {"0": 6, "1": 4}, "b": None},
            {"label": "sepsis", "a": None, "b": 0.25},
        ],
        "dropped_values": {"heart_rate": {"a": 3, "b": None}},
    }  # fmt: skip
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(diff_table(diff))
    text = console.export_text()
    assert cells(text, "los_class=0 (count)")[1:] == ["6", "—"]
    assert cells(text, "los_class=1 (count)")[1:] == ["4", "—"]
    assert cells(text, "sepsis")[1:] == ["—", "0.2500"]
    assert cells(text, "heart_rate")[1:] == ["3", "—"]
    assert "None" not in text and "{" not in text
