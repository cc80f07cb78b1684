"""Summaries of built cohorts and comparisons of two builds, as dicts and as rich renderables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.cohort.load import Cohort, load_cohort, resolve_cohort_dir


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


def funnel_table(summary: dict[str, Any]) -> Any:
    """Rich table of the exclusion funnel (stays and subjects remaining after each rule)."""
    from rich.table import Table

    table = Table(title=f"{summary['dataset']} / {summary['cohort']}: exclusion funnel")
    table.add_column("step")
    table.add_column("stays", justify="right")
    table.add_column("subjects", justify="right")
    table.add_column("removed", justify="right")
    previous = None
    for row in summary["funnel"]:
        removed = "" if previous is None else f"-{previous - row['n_stays']}"
        table.add_row(row["step"], str(row["n_stays"]), str(row["n_subjects"]), removed)
        previous = row["n_stays"]
    return table


def prevalence_table(summaries: list[dict[str, Any]]) -> Any:
    """Rich table of label prevalences, one column per cohort."""
    from rich.table import Table

    table = Table(title="label prevalence")
    table.add_column("label")
    for s in summaries:
        table.add_column(f"{s['cohort']} (n={s['n_stays']})", justify="right")
    first = summaries[0]["label_prevalence"]
    # a flag label has its share of 1s; a class label a {class: count} mapping
    for label in [k for k, v in first.items() if not isinstance(v, dict)]:
        cells = [s["label_prevalence"].get(label) for s in summaries]
        table.add_row(label, *("-" if c is None else f"{c:.3f}" for c in cells))
    for label in [k for k, v in first.items() if isinstance(v, dict)]:
        counts = [s["label_prevalence"].get(label) or {} for s in summaries]
        for cls in sorted({k for c in counts for k in c}, key=int):
            table.add_row(f"{label}={cls} (count)", *(str(c.get(cls, 0)) for c in counts))
    return table


def overview_table(summaries: list[dict[str, Any]]) -> Any:
    """Rich table of sizes, CXR availability and fingerprints, one row per cohort."""
    from rich.table import Table

    table = Table(title="cohorts")
    for col in ("cohort", "stays", "subjects", "with CXR", "views", "fingerprint"):
        table.add_column(col)
    for s in summaries:
        cxr = s["cxr_availability"]
        frac = cxr["fraction_with_cxr"]
        views = ", ".join(f"{k}:{v}" for k, v in cxr["views"].items()) or "-"
        table.add_row(
            s["cohort"],
            str(s["n_stays"]),
            str(s["n_subjects"]),
            f"{cxr['n_with_cxr']} ({frac:.1%})" if frac is not None else "0",
            views,
            s["fingerprint"][:12],
        )
    return table


def _load_ref(ref: str | Path) -> Cohort:
    """A build given as a directory, `dataset/cohort` or `cohort` (default dataset)."""
    path = Path(ref)
    if (path / "manifest.json").is_file():
        return load_cohort(path=path)
    text = str(ref)
    dataset, _, cohort = text.rpartition("/")
    return load_cohort(cohort or "base", dataset or None)


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
    """Rich table of the differences found by :func:`diff_builds`."""
    from rich.table import Table

    table = Table(title="identical builds" if diff["identical"] else "builds differ")
    for col in ("what", "A", "B"):
        table.add_column(col)
    table.add_row("fingerprint", diff["fingerprint"]["a"][:12], diff["fingerprint"]["b"][:12])
    table.add_row("stays", str(diff["n_stays"]["a"]), str(diff["n_stays"]["b"]))
    table.add_row("stays only here", str(diff["stays_only_in_a"]), str(diff["stays_only_in_b"]))
    if diff["parts_differing"]:
        table.add_row("fingerprint parts differing", ", ".join(diff["parts_differing"]), "")
    if diff["definitions_differing"]:
        table.add_row("definition files differing", ", ".join(diff["definitions_differing"]), "")
    for row in diff["funnel"]:
        table.add_row(f"funnel: {row['step']}", str(row["a"]), str(row["b"]))
    for row in diff["label_prevalence"]:
        fmt = (lambda v: f"{v:.4f}") if isinstance(row["a"], float) else str
        table.add_row(f"prevalence: {row['label']}", fmt(row["a"]), fmt(row["b"]))
    for name, row in sorted(diff["dropped_values"].items()):
        table.add_row(f"dropped values: {name}", str(row["a"]), str(row["b"]))
    return table


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
