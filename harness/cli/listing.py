"""`harness list {tasks,encoders,scenarios,metrics,sources}`: what is registered, one table each.

Each listing reads the registry the rest of the harness uses (no copy of the names here), so a
new task file, encoder family, scenario, metric or data source shows up without touching this
module.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table

from harness.tables import fit


class Listing(StrEnum):
    tasks = "tasks"
    encoders = "encoders"
    scenarios = "scenarios"
    metrics = "metrics"
    sources = "sources"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for i, column in enumerate(columns):
        table.add_column(column, no_wrap=i == 0, overflow="fold")
    return table


def tasks_table() -> Table:
    from harness.cohort.spec import list_tasks, load_task, tasks_dir

    table = _table(f"tasks ({tasks_dir()})", "name", "kind", "main metric", "labels", "label rule")
    for name in list_tasks():
        task = load_task(name)
        rule = getattr(task, "rule", None)
        rule_name = getattr(rule, "kind", None) or "-"
        table.add_row(name, task.kind, task.main_metric, str(len(task.label_columns)), rule_name)
    return table


def encoders_table() -> Table:
    from harness.encode.registry import ENCODERS

    table = _table("encoder families (--encoder NAME)", "family", "example", "what it is")
    for name in ENCODERS:
        family = ENCODERS.get(name)
        table.add_row(name, family.example, family.description)
    return table


def scenarios_table() -> Table:
    from harness.evaluate.scenarios import SCENARIOS

    table = _table("test-time scenarios", "name", "family", "rates", "what it does")
    for name in SCENARIOS:
        s = SCENARIOS.get(name)
        first = s.description.split(". ")[0].rstrip(".") + "."
        table.add_row(name, s.family, ", ".join(f"{r:g}" for r in s.rates), first)
    return table


def metrics_table() -> Table:
    from harness.metrics.registry import MAIN_METRIC, METRICS

    table = _table("metrics (task main_metric, selection, scoring)", "name", "task kind",
                   "better", "headline default")  # fmt: skip
    for name in METRICS:
        m = METRICS.get(name)
        table.add_row(
            name, m.kind, "higher" if m.higher_is_better else "lower",
            "yes" if MAIN_METRIC.get(m.kind) == name else "",
        )  # fmt: skip
    return table


def sources_table() -> Table:
    from harness.cohort.sources import SOURCES

    table = _table("data sources (harness cohort build --source NAME)", "name", "what it reads")
    for name in SOURCES:
        table.add_row(name, getattr(SOURCES.get(name), "description", ""))
    return table


TABLES: dict[Listing, Callable[[], Table]] = {
    Listing.tasks: tasks_table,
    Listing.encoders: encoders_table,
    Listing.scenarios: scenarios_table,
    Listing.metrics: metrics_table,
    Listing.sources: sources_table,
}


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_(
        what: Listing = typer.Argument(..., help="What to list."),
    ) -> None:
        """List the registered tasks, encoders, scenarios, metrics or data sources."""
        Console().print(fit(TABLES[what]()))
