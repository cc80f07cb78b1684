"""Terminal tables at 60 and 80 columns: names print whole, nothing is cut with an ellipsis,
and a table too wide for the terminal is printed row by row with every header and value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from harness.tables import fit

SUBMISSIONS = [
    "late_fusion_xgboost.carebench_profile",
    "cross_attention_transformer_v2",
    "ehr_lstm",
]
WIDTHS = (60, 80)


def render(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    return text


def ranking_table() -> Table:
    table = Table(title="mortality_in_hospital · matched · auroc")
    for col in ("rank", "submission", "inputs", "value", "95% CI", "Δ vs leader [95% CI], p"):
        table.add_column(col)
    for rank, name in enumerate(SUBMISSIONS, 1):
        table.add_row(
            str(rank), name, "ehr, cxr, demographics", "0.812", "[0.790, 0.833]",
            "-0.006 [-0.088, 0.036], p=0.839",
        )  # fmt: skip
    return table


def test_plain_rich_cuts_the_names_this_fixes():
    """The failure being fixed: rich's own layout ellipsizes a long name at 80 columns."""
    text = render(ranking_table(), 80)
    assert "…" in text and SUBMISSIONS[0] not in text


@pytest.mark.parametrize("width", WIDTHS)
def test_names_print_whole_and_nothing_is_cut(width):
    text = render(fit(ranking_table(), "submission"), width)
    assert "…" not in text
    for name in SUBMISSIONS:
        assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", text, re.M), (width, name)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_table_that_fits_keeps_its_columns(width):
    table = Table(title="tasks")
    for col in ("name", "kind", "labels"):
        table.add_column(col)
    rows = [("mortality_in_hospital", "binary", "1"), ("phenotype", "multilabel", "25")]
    for row in rows:
        table.add_row(*row)
    lines = render(fit(table), width).splitlines()
    for row in rows:  # each row on one line, its cells in order
        cells = r"[\s│]+".join(map(re.escape, row))
        assert any(re.search(cells, line) for line in lines), row


def test_a_long_text_cell_wraps_and_keeps_every_word():
    table = Table()
    table.add_column("check")
    table.add_column("finding")
    finding = " ".join(f"word{i}" for i in range(40)) + " " + "x" * 70
    table.add_row("near_duplicate_images", finding)
    text = render(fit(table, "check"), 60)
    assert "near_duplicate_images" in text and "…" not in text
    words = text.split()
    assert all(f"word{i}" in words for i in range(40))
    assert "".join(re.findall(r"x+", text)) == "x" * 70  # broken across lines, not cut


@pytest.mark.parametrize("width", WIDTHS)
def test_a_table_too_wide_prints_row_by_row(width):
    headers = ["submission", *(f"area drop_{i}" for i in range(12))]
    table = Table(title="robustness")
    for h in headers:
        table.add_column(h)
    values = {name: [f"{k / 7:.3f}" for k in range(12)] for name in SUBMISSIONS}
    for name in SUBMISSIONS:
        table.add_row(name, *values[name])
    text = render(fit(table, 0), width)
    assert "…" not in text and "robustness" in text
    lines = text.splitlines()
    for name in SUBMISSIONS:  # a block per row: its name, then header/value lines
        start = next(
            i for i, line in enumerate(lines) if re.search(rf"\b{re.escape(name)}\b", line)
        )
        for h, v in zip(headers[1:], values[name], strict=True):
            assert any(h in line and v in line for line in lines[start : start + len(headers)])


def test_a_wrong_column_name_is_a_clear_error():
    table = ranking_table()
    with pytest.raises(ValueError, match=r"no column 'name' in the table \(columns: \['rank'"):
        fit(table, "name")
    with pytest.raises(ValueError, match="no column 9 in a table of 6 columns"):
        fit(table, 9)


# ------------------------------------------------------------ the commands' own tables


def leaderboard_document() -> dict:
    rows = [
        {
            "rank": rank,
            "name": name,
            "inputs": ["ehr", "cxr"],
            "value": 0.8 - rank / 100,
            "ci_low": 0.7,
            "ci_high": 0.9,
            "comparison": "leader" if rank == 1 else "paired",
            "delta_vs_leader": -rank / 100,
            "delta_ci_low": -0.1,
            "delta_ci_high": 0.05,
            "p_vs_leader": 0.2,
            "tied_with_leader": True,
            "audit": "passed",
        }  # fmt: skip
        for rank, name in enumerate(SUBMISSIONS, 1)
    ]
    ranking = {
        "task": "mortality_in_hospital", "cohort": "matched", "metric": "auroc",
        "higher_is_better": True, "dataset": "synthetic-default", "fingerprint": "0" * 64,
        "protocol": {"label": "honest"}, "rows": rows,
    }  # fmt: skip
    return {"rankings": [ranking], "failed": [], "rejected": []}


@pytest.mark.parametrize("width", WIDTHS)
def test_the_leaderboard_prints_every_submission_whole(width):
    from harness.display import print_leaderboard
    from harness.leaderboard.aggregate import Leaderboard

    board = Leaderboard(leaderboard_document(), {"json": Path("/board/leaderboard.json")})
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_leaderboard(board, console)
    text = console.export_text()
    assert "…" not in text
    for name in SUBMISSIONS:
        assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", text, re.M), (width, name)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_dataset_summary_prints_every_file_whole(width):
    from harness.display import print_summary

    files = {
        "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv.gz": 801,
        "mimic-iv/icu/chartevents.csv.gz": 146771,
        "mimic-iv/hosp/labevents.csv.gz": 50094,
    }
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_summary({"path": "/data", "rows": files, "n_images": 801}, console)
    text = console.export_text()
    assert "…" not in text
    for name, n in files.items():
        assert re.search(rf"{re.escape(name)}\s.*\b{n:,}\b", text), (width, name)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_task_list_prints_every_task_whole(width):
    from harness.cli.listing import tasks_table
    from harness.cohort.spec import tasks_dir

    names = [p.stem for p in Path(tasks_dir()).glob("*.yaml")]
    text = render(fit(tasks_table()), width)
    shown = [n for n in names if re.search(rf"(^|\s){re.escape(n)}(\s|$)", text, re.M)]
    assert "mortality_in_hospital" in shown and "phenotype" in shown
    assert "…" not in text
