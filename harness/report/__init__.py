"""`harness report`: the benchmark's four answers for one dataset, from its leaderboard.

The report reads the published leaderboard document (vetted aggregates only: no stay ids, no
per-resample values), splits it by protocol (entries evaluated under different protocols are
never compared), and generates each answer from the numbers (:mod:`harness.leaderboard.answers`).
It is written as ``report.md`` and ``report.html`` beside the leaderboard, atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.leaderboard.aggregate import Leaderboard
    from harness.leaderboard.answers import Report


@dataclass(frozen=True)
class Written:
    """What :func:`write_report` wrote: the reports (one per protocol) and the files."""

    reports: list[Report]
    paths: dict[str, Path]


def _dataset(doc: dict, dataset: str | None) -> str:
    from harness import config

    present = sorted({str(e.get("dataset")) for e in doc["entries"]})
    if dataset is not None:
        if dataset not in present:
            raise UsageError(
                f"no evaluated entry of dataset {dataset!r} on the leaderboard; datasets with "
                f"entries: {', '.join(present) or 'none'}",
            )
        return dataset
    if not present:
        raise UsageError(
            "the leaderboard has no evaluated entry: run `harness evaluate` (or `harness demo`) "
            "first"
        )
    if len(present) == 1:
        return present[0]
    if config.DEFAULT_DATASET in present:
        return config.DEFAULT_DATASET
    raise UsageError(
        f"the leaderboard holds several datasets ({', '.join(present)}): choose one with --dataset"
    )


def _size(label_and_doc: tuple[str, dict]) -> tuple[int, str]:
    """Protocols with the most folds x seeds first (the most data behind each answer)."""
    from harness.leaderboard.aggregate import protocol_of
    from harness.results import Result

    label, doc = label_and_doc
    sizes = [
        len(p.get("folds") or ()) * len(p.get("seeds") or ())
        for p in (protocol_of(Result.of(e)) for e in doc["entries"])
    ]
    return (-max(sizes, default=0), label)


def write_report(
    dataset: str | None = None, out: Path | None = None, board: Leaderboard | None = None
) -> Written:
    """Build the leaderboard (or take ``board``), then write the report of ``dataset`` (the
    only one, else the default dataset) to ``out`` (default: the leaderboard folder)."""
    from harness import config
    from harness.io import atomic_write_text
    from harness.leaderboard.aggregate import aggregate
    from harness.leaderboard.answers import build_report
    from harness.leaderboard.publish import assert_publishable
    from harness.leaderboard.render import _protocol_groups
    from harness.report.render import render_html, render_markdown

    if board is None:
        board = aggregate(config.results_dir(), config.leaderboard_dir())
    doc = board.document
    name = _dataset(doc, dataset)
    mine = {**doc, "entries": [e for e in doc["entries"] if e.get("dataset") == name]}
    groups = sorted(_protocol_groups(mine), key=_size)
    reports = [build_report(sub, name) for _, sub in groups]
    texts = {"md": render_markdown(reports), "html": render_html(reports)}
    out = Path(out) if out is not None else config.leaderboard_dir()
    paths = {kind: out / f"report.{kind}" for kind in texts}
    for kind, text in texts.items():
        assert_publishable(text, paths[kind].name)
    for kind, text in texts.items():
        atomic_write_text(paths[kind], text)
    return Written(reports, paths)
