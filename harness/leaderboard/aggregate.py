"""Aggregate every ``result.json`` into a validated leaderboard with ranks, and write it out.

Ranks are per (dataset, cohort fingerprint, task, cohort) on the task's main metric: entries on
different datasets or cohorts are never ranked together. Ranks are competition ranks of the point
value (equal values share a rank); each row lists the entries whose 95% CIs overlap its own, so
statistical ties are reported rather than hidden. Unreadable or invalid results and failed
evaluations are listed apart under ``failed``.

Results are found at ``<results>/<dataset>/<name>/result.json`` (what `harness evaluate` writes)
and, for folders written before results were kept per dataset, ``<results>/<name>/result.json``;
when both hold the same (name, dataset), the per-dataset one wins.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from harness import __version__
from harness.errors import InputError
from harness.evaluate.metrics import HIGHER_IS_BETTER
from harness.io import atomic_write_json, atomic_write_text
from harness.leaderboard.schema import (
    LEADERBOARD_SCHEMA,
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    schema_errors,
    validate,
)

log = logging.getLogger(__name__)


@dataclass
class Leaderboard:
    """The aggregated document plus where it was written."""

    document: dict
    paths: dict[str, Path]

    @property
    def rankings(self) -> list[dict]:
        return self.document["rankings"]

    @property
    def failed(self) -> list[dict]:
        return self.document["failed"]


def result_files(results_dir: Path) -> list[Path]:
    """Per-dataset result files first, then those of the older flat layout."""
    return sorted(results_dir.glob("*/*/result.json")) + sorted(results_dir.glob("*/result.json"))


def load_results(results_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """Valid ``ok`` results and failure records found under ``results_dir`` (both layouts)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(
            "results folder does not exist",
            path=results_dir,
            fix="run `harness evaluate submissions/<name>` first, or pass --results DIR",
        )
    ok, failed = [], []
    seen: set[tuple[str, str]] = set()
    for path in result_files(results_dir):
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            failed.append({"name": path.parent.name, "source": str(path.name), "error": f"{exc}"})
            continue
        errors = schema_errors(doc, RESULT_SCHEMA)
        if errors:
            failed.append(
                {
                    "name": path.parent.name,
                    "source": str(path.name),
                    "error": "invalid result.json: " + "; ".join(errors[:3]),
                }
            )
            continue
        if (doc["name"], doc["dataset"]) in seen:
            log.info("%s: %s on %s already read; skipped", path, doc["name"], doc["dataset"])
            continue
        seen.add((doc["name"], doc["dataset"]))
        if doc["status"] != "ok":
            failed.append(
                {"name": doc["name"], "version": doc["version"], "error": doc.get("error") or ""}
            )
            continue
        ok.append(doc)
    return ok, failed


def _overlap(a: dict, b: dict) -> bool:
    if None in (a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"]):
        return False
    return a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]


def rank_results(results: list[dict]) -> list[dict]:
    """Ranking tables per dataset x fingerprint x task x cohort on each task's main metric."""
    tables: dict[tuple, dict] = {}
    for res in results:
        for task, cohorts in res["tasks"].items():
            for cohort, block in cohorts.items():
                fingerprint = res["cohorts"].get(cohort, {}).get("fingerprint", "unknown")
                metric = block["main_metric"]
                key = (res["dataset"], fingerprint, task, cohort, metric)
                table = tables.setdefault(
                    key,
                    {
                        "dataset": res["dataset"],
                        "fingerprint": fingerprint,
                        "task": task,
                        "cohort": cohort,
                        "metric": metric,
                        "higher_is_better": HIGHER_IS_BETTER.get(metric, True),
                        "rows": [],
                    },
                )
                summary = block["metrics"][metric]
                table["rows"].append(
                    {
                        "name": res["name"],
                        "version": res["version"],
                        "value": summary["value"],
                        "ci_low": summary["ci_low"],
                        "ci_high": summary["ci_high"],
                    }
                )
    out = []
    for key in sorted(tables):
        table = tables[key]
        sign = -1.0 if table["higher_is_better"] else 1.0
        rows = sorted(
            table["rows"],
            key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["name"]),
        )
        for i, row in enumerate(rows):
            previous = rows[i - 1] if i else None
            tied = previous is not None and previous["value"] == row["value"]
            row["rank"] = previous["rank"] if tied else i + 1
            row["ci_overlaps"] = [o["name"] for o in rows if o is not row and _overlap(row, o)]
        table["rows"] = [
            {
                k: r[k]
                for k in ("rank", "name", "version", "value", "ci_low", "ci_high", "ci_overlaps")
            }
            for r in rows
        ]
        out.append(table)
    return out


def build_leaderboard(results: list[dict], failed: list[dict]) -> dict:
    document = {
        "schema_version": SCHEMA_VERSION,
        "harness_version": __version__,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "higher_is_better": dict(sorted(HIGHER_IS_BETTER.items())),
        "entries": sorted(results, key=lambda r: r["name"]),
        "rankings": rank_results(results),
        "failed": failed,
    }
    validate(document, LEADERBOARD_SCHEMA)
    return document


def aggregate(results_dir: str | Path, out_dir: str | Path) -> Leaderboard:
    """Read every result, rank, and write leaderboard.json / .md / .html atomically."""
    from harness.leaderboard.render import render_html, render_markdown

    results, failed = load_results(results_dir)
    document = build_leaderboard(results, failed)
    out_dir = Path(out_dir)
    paths = {
        "json": out_dir / "leaderboard.json",
        "md": out_dir / "leaderboard.md",
        "html": out_dir / "leaderboard.html",
    }
    markdown = render_markdown(document)
    html = render_html(document)
    atomic_write_json(paths["json"], document)
    atomic_write_text(paths["md"], markdown)
    atomic_write_text(paths["html"], html)
    log.info("leaderboard: %d entries, %d failed -> %s", len(results), len(failed), out_dir)
    return Leaderboard(document, paths)
