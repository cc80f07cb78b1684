"""`harness cohort build|show|diff`: build cohorts from MIMIC sources, print and compare builds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()
cohort_app = typer.Typer(help="Build, show and compare benchmark cohorts.", no_args_is_help=True)


@cohort_app.command("build")
def build(
    mimic_iv: Path | None = typer.Option(
        None, "--mimic-iv", help="MIMIC-IV root (holds hosp/ and icu/). Default: synthetic data."
    ),
    mimic_cxr: Path | None = typer.Option(
        None, "--mimic-cxr", help="MIMIC-CXR-JPG root (metadata CSV and files/)."
    ),
    dataset: str | None = typer.Option(None, help="Dataset name (default: from the folder)."),
    memory_limit: str = typer.Option("1GB", help="DuckDB memory limit; spills to disk beyond."),
    threads: int | None = typer.Option(None, min=1, help="DuckDB threads (default: all cores)."),
    overwrite: bool = typer.Option(False, help="Rebuild even when nothing changed."),
    clif: Path | None = typer.Option(
        None, "--clif", help="CLIF folder (clif_<table>.parquet), or `demo` for the MIMIC-IV demo."
    ),
    carebench: Path | None = typer.Option(
        None, "--carebench", help="CareBench benchmark folder (splits/, merged/); folds kept."
    ),
    cxr_root: Path | None = typer.Option(
        None, "--cxr-root", help="Folder of {dicom_id}.jpg images for --carebench."
    ),
) -> None:
    """Build the base and matched cohorts (stays, hourly series, manifest, splits)."""
    from harness.cohort.build import build_cohorts
    from harness.cohort.load import load_cohort
    from harness.cohort.show import funnel_table, overview_table, summarize

    if mimic_cxr is not None and mimic_iv is None:
        from harness.errors import UsageError

        raise UsageError("--mimic-cxr needs --mimic-iv (the default source has both)")
    if sum(x is not None for x in (mimic_iv, clif, carebench)) > 1 or (
        cxr_root is not None and carebench is None
    ):
        from harness.errors import UsageError

        raise UsageError("give one source: --mimic-iv, --clif or --carebench (with --cxr-root)")
    with console.status("building cohorts"):
        if clif is not None:
            from harness.data.clif import build_clif_cohorts

            demo = str(clif) == "demo" and not clif.exists()
            paths = build_clif_cohorts(
                None if demo else clif,
                dataset=dataset,
                threads=threads,
                memory_limit=memory_limit,
                overwrite=overwrite,
            )
        elif carebench is not None:
            from harness.data.carebench import build_carebench_cohorts

            paths = build_carebench_cohorts(
                carebench, cxr_root, dataset=dataset, overwrite=overwrite
            )
        else:
            paths = build_cohorts(
                mimic_iv,
                mimic_cxr,
                dataset=dataset,
                memory_limit=memory_limit,
                threads=threads,
                overwrite=overwrite,
            )
    summaries = [summarize(load_cohort(path=p)) for p in paths.values()]
    console.print(funnel_table(summaries[-1]))
    console.print(overview_table(summaries))
    for name, p in paths.items():
        console.print(f"{name}: {p}")


@cohort_app.command("show")
def show(
    dataset: str | None = typer.Option(None, help="Dataset name (default: the synthetic one)."),
    cohort: str | None = typer.Option(None, help="base or matched (default: both)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Print the funnel, label prevalences, CXR availability and fingerprint of a build."""
    from harness.cohort.show import funnel_table, load_summaries, overview_table, prevalence_table

    summaries = load_summaries(dataset, cohort)
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
        return
    console.print(funnel_table(summaries[-1]))
    console.print(prevalence_table(summaries))
    console.print(overview_table(summaries))


@cohort_app.command("diff")
def diff(
    a: str = typer.Argument(..., help="A build directory, `dataset/cohort` or `cohort`."),
    b: str = typer.Argument(..., help="The build to compare with."),
    as_json: bool = typer.Option(False, "--json", help="Print the differences as JSON."),
) -> None:
    """Say where two builds differ (fingerprint parts, funnel steps, counts, prevalences)."""
    from harness.cohort.show import diff_builds, diff_table

    result = diff_builds(a, b)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        console.print(diff_table(result))
    if not result["identical"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(cohort_app, name="cohort")
