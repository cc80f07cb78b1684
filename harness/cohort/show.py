"""Summaries of built cohorts and comparisons of two builds, as dicts and as rich renderables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.cohort.load import Cohort, load_cohort, resolve_cohort_dir
from harness.errors import InputError


def summarize(cohort: Cohort) -> dict[str, Any]:
    """What `harness cohort show` prints: funnel, prevalences, CXR availability, fingerprint."""
    m = cohort.manifest
    return {
        "dataset": cohort.dataset,
        "cohort": cohort.name,
        "path": str(cohort.path),
        "fingerprint": cohort.fingerprint,
        "n_stays": m["n_stays"],
        "n_subjects": m["n_subjects"],
        "funnel": m["funnel"],
        "label_prevalence": m["label_prevalence"],
        "cxr_availability": m["cxr_availability"],
        "n_variables": len(m["variables"]),
        "source_version": m["source"].get("version_guess"),
        "created_at": m.get("created_at"),
    }


#: What a table shows for a value one build (or cohort) does not have.
MISSING = "—"


def funnel_table(summary: dict[str, Any]) -> Any:
    """Rich table of the exclusion funnel (stays and subjects remaining after each rule, and
    how many stays each rule removed)."""
    from rich.table import Table

    from harness.tables import fit

    table = Table(title=f"{summary['dataset']} / {summary['cohort']}: exclusion funnel")
    table.add_column("step")
    table.add_column("stays", justify="right")
    table.add_column("subjects", justify="right")
    table.add_column("removed", justify="right")
    previous = None
    for row in summary["funnel"]:
        removed = "" if previous is None else str(previous - row["n_stays"])
        table.add_row(row["step"], str(row["n_stays"]), str(row["n_subjects"]), removed)
        previous = row["n_stays"]
    return fit(table, "step")


def prevalence_table(summaries: list[dict[str, Any]]) -> Any:
    """Rich table of label prevalences, one column per cohort."""
    from rich.table import Table

    from harness.tables import fit

    table = Table(title="label prevalence")
    table.add_column("label")
    for s in summaries:
        table.add_column(f"{s['cohort']} (n={s['n_stays']})", justify="right")
    first = summaries[0]["label_prevalence"]
    # a flag label has its share of 1s; a class label a {class: count} mapping
    for label in [k for k, v in first.items() if not isinstance(v, dict)]:
        cells = [s["label_prevalence"].get(label) for s in summaries]
        table.add_row(label, *(_share(c, 3) for c in cells))
    for label in [k for k, v in first.items() if isinstance(v, dict)]:
        counts = [s["label_prevalence"].get(label) for s in summaries]
        for cls in _classes(*counts):
            table.add_row(f"{label}={cls} (count)", *(_count(c, cls) for c in counts))
    return fit(table, "label")


def overview_table(summaries: list[dict[str, Any]]) -> Any:
    """Rich table of sizes, CXR availability and fingerprints, one row per cohort."""
    from rich.table import Table

    from harness.tables import fit

    table = Table(title="cohorts")
    for col in ("cohort", "stays", "subjects", "with CXR", "views", "fingerprint"):
        table.add_column(col)
    for s in summaries:
        cxr = s["cxr_availability"]
        frac = cxr["fraction_with_cxr"]
        views = ", ".join(f"{k}:{v}" for k, v in cxr["views"].items()) or MISSING
        table.add_row(
            s["cohort"],
            str(s["n_stays"]),
            str(s["n_subjects"]),
            f"{cxr['n_with_cxr']} ({frac:.1%})" if frac is not None else "0",
            views,
            s["fingerprint"][:12],
        )
    return fit(table, "cohort", "fingerprint")


def _share(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _classes(*counts: dict[str, int] | None) -> list[str]:
    """The classes of class-count mappings (missing ones skipped), in numeric order."""
    found = {k for c in counts if c for k in c}
    return sorted(found, key=lambda k: (0, int(k), "") if k.lstrip("-").isdigit() else (1, 0, k))


def _count(counts: dict[str, int] | None, cls: str) -> str:
    """A class's count: 0 when the label has no row of that class, missing without the label."""
    return MISSING if counts is None else str(counts.get(cls, 0))


def _load_ref(ref: str | Path) -> Cohort:
    """A build given as a directory, `dataset/cohort` or `cohort` (default dataset)."""
    path = Path(ref)
    if (path / "manifest.json").is_file():
        return load_cohort(path=path)
    text = str(ref)
    dataset, _, cohort = text.rpartition("/")
    try:
        return load_cohort(cohort or "base", dataset or None)
    except InputError:
        if not path.is_dir():
            raise
        raise InputError(
            "not a cohort build (it holds no manifest.json)",
            path=path,
            fix="pass a build directory (cohorts/<dataset>/<cohort>-<fingerprint>), "
            "`dataset/cohort` or `cohort`",
        ) from None


def diff_builds(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Where two builds differ: fingerprint parts, funnel steps, sizes, prevalences, stays."""
    ca, cb = _load_ref(a), _load_ref(b)
    ma, mb = ca.manifest, cb.manifest
    parts_a, parts_b = ma["fingerprint_parts"], mb["fingerprint_parts"]
    funnel_a = {r["step"]: r["n_stays"] for r in ma["funnel"]}
    funnel_b = {r["step"]: r["n_stays"] for r in mb["funnel"]}
    funnel = [
        {"step": s, "a": funnel_a.get(s), "b": funnel_b.get(s)}
        for s in dict.fromkeys([*funnel_a, *funnel_b])
        if funnel_a.get(s) != funnel_b.get(s)
    ]
    pa, pb = ma["label_prevalence"], mb["label_prevalence"]
    labels = list(dict.fromkeys([*pa, *pb]))
    # flag labels first, then class-count labels ({class: count} mappings)
    labels.sort(key=lambda k: isinstance(pa.get(k, pb.get(k)), dict))
    prev = [
        {"label": label, "a": pa.get(label), "b": pb.get(label)}
        for label in labels
        if pa.get(label) != pb.get(label)
    ]
    ids_a, ids_b = set(ca.stays["stay_id"]), set(cb.stays["stay_id"])
    specs = sorted(
        k
        for k in {*ma["spec_hashes"], *mb["spec_hashes"]}
        if ma["spec_hashes"].get(k) != mb["spec_hashes"].get(k)
    )
    return {
        "a": str(ca.path),
        "b": str(cb.path),
        "name": {"a": f"{ca.dataset}/{ca.name}", "b": f"{cb.dataset}/{cb.name}"},
        "identical": ca.fingerprint == cb.fingerprint,
        "fingerprint": {"a": ca.fingerprint, "b": cb.fingerprint},
        "parts_differing": sorted(
            k for k in {*parts_a, *parts_b} if parts_a.get(k) != parts_b.get(k)
        ),
        "definitions_differing": specs,
        "funnel": funnel,
        "n_stays": {"a": ma["n_stays"], "b": mb["n_stays"]},
        "stays_only_in_a": len(ids_a - ids_b),
        "stays_only_in_b": len(ids_b - ids_a),
        "label_prevalence": prev,
        "variables_differing": ma["variables"] != mb["variables"],
        "dropped_values": {
            k: {"a": ma["dropped_values"].get(k), "b": mb["dropped_values"].get(k)}
            for k in {*ma["dropped_values"], *mb["dropped_values"]}
            if ma["dropped_values"].get(k) != mb["dropped_values"].get(k)
        },
    }


def diff_table(diff: dict[str, Any]) -> Any:
    """Rich table of the differences found by :func:`diff_builds`: one column per build, headed
    by its dataset/cohort name and short fingerprint; a dash where a build lacks the row."""
    from rich.table import Table

    from harness.tables import fit

    fps, names = diff["fingerprint"], diff.get("name") or {"a": diff["a"], "b": diff["b"]}
    notes = []
    if diff["parts_differing"]:
        notes.append("fingerprint parts that differ: " + ", ".join(diff["parts_differing"]))
    if diff["definitions_differing"]:
        notes.append("definition files that differ: " + ", ".join(diff["definitions_differing"]))
    if diff["variables_differing"]:
        notes.append("the hourly variables differ")
    table = Table(
        title="identical builds" if diff["identical"] else "builds differ",
        caption="\n".join(notes) or None,
        caption_justify="left",
    )
    table.add_column("")
    for side in ("a", "b"):
        table.add_column(f"{names[side]}\n{fps[side][:12]}", justify="right")

    def section(heading: str | None, rows: list[tuple[str, str, str]]) -> None:
        if rows:
            if heading:
                table.add_row(f"[bold]{heading}[/]", "", "")
            for n, row in enumerate(rows):
                table.add_row(*row, end_section=n == len(rows) - 1)

    def value(v: Any) -> str:
        return MISSING if v is None else str(v)

    section(
        None,
        [
            ("stays", value(diff["n_stays"]["a"]), value(diff["n_stays"]["b"])),
            (
                "stays only in this build",
                str(diff["stays_only_in_a"]),
                str(diff["stays_only_in_b"]),
            ),
        ],
    )
    section(
        "exclusion funnel (stays left)",
        [(r["step"], value(r["a"]), value(r["b"])) for r in diff["funnel"]],
    )
    prevalence: list[tuple[str, str, str]] = []
    for row in diff["label_prevalence"]:
        a, b = row["a"], row["b"]
        if isinstance(a, dict) or isinstance(b, dict):  # class counts: the classes that differ
            a, b = (c if isinstance(c, dict) else None for c in (a, b))
            for cls in _classes(a, b):
                if (a or {}).get(cls) != (b or {}).get(cls):
                    label = f"{row['label']}={cls} (count)"
                    prevalence.append((label, _count(a, cls), _count(b, cls)))
        else:
            prevalence.append((row["label"], _share(a, 4), _share(b, 4)))
    section("label prevalence", prevalence)
    section(
        "values dropped as out of range",
        [
            (name, value(r["a"]), value(r["b"]))
            for name, r in sorted(diff["dropped_values"].items())
        ],
    )
    return fit(table, 0)


def load_summaries(dataset: str | None = None, cohort: str | None = None) -> list[dict[str, Any]]:
    """Summaries of the newest builds of a dataset (both cohorts unless one is named)."""
    names = [cohort] if cohort else ["base", "matched"]
    return [summarize(load_cohort(n, dataset)) for n in names]


__all__ = [
    "diff_builds",
    "diff_table",
    "funnel_table",
    "load_summaries",
    "overview_table",
    "prevalence_table",
    "resolve_cohort_dir",
    "summarize",
]
