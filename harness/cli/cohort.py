"""`harness cohort build|show|diff`: build cohorts from any registered data source, print and
compare builds (sources: :mod:`harness.cohort.datasources`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from harness.cli.base import HarnessTyper

if TYPE_CHECKING:
    from harness.cohort.datasources import DataSource

console = Console()
cohort_app = HarnessTyper(help="Build, show and compare benchmark cohorts.", no_args_is_help=True)


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
    meds: Path | None = typer.Option(
        None, "--meds", help="MEDS dataset folder (data/*.parquet, metadata/)."
    ),
    meds_cxr: Path | None = typer.Option(
        None, "--meds-cxr", help="MIMIC-CXR-JPG root of the image events of --meds."
    ),
    meds_mapping: str | None = typer.Option(
        None,
        "--meds-mapping",
        help="Code vocabulary of --meds: mimic, clif or a mapping YAML (default: detected).",
    ),
    source: Path | None = typer.Option(
        None,
        "--source",
        help="A source folder of any registered format (detected from it), or a source name "
        "for that source's default data (`harness list sources`).",
    ),
) -> None:
    """Build the base and matched cohorts (stays, hourly series, manifest, splits)."""
    from harness.cohort.datasources import BuildRequest
    from harness.cohort.load import load_cohort
    from harness.cohort.show import funnel_table, overview_table, summarize

    chosen, path, images = _choose_source(
        {
            "--mimic-iv": mimic_iv,
            "--clif": clif,
            "--carebench": carebench,
            "--meds": meds,
            "--source": source,
        },
        {"--mimic-cxr": mimic_cxr, "--cxr-root": cxr_root, "--meds-cxr": meds_cxr},
    )
    if meds_mapping is not None and chosen.mapping_option != "--meds-mapping":
        from harness.errors import UsageError

        raise UsageError("--meds-mapping needs --meds DIR (or a MEDS folder as --source)")
    request = BuildRequest(
        path=path,
        images=images,
        dataset=dataset,
        threads=threads,
        memory_limit=memory_limit,
        overwrite=overwrite,
        mapping=meds_mapping,
    )
    from harness.progress import display

    with display():
        paths = chosen.build(request)
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
    for summary in summaries:
        console.print(funnel_table(summary))
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


def _choose_source(
    given: dict[str, Path | None], image_options: dict[str, Path | None]
) -> tuple[DataSource, Path | None, Path | None]:
    """The registered source, its folder and its images folder from the command-line options.

    One source option at most (none: the default synthetic data); ``--source`` takes a folder
    (its format is detected) or a registered source name (that source's default data); an
    images option must belong to the chosen source.
    """
    from harness.cohort.datasources import DATA_SOURCES, DEFAULT_SOURCE, detect_source
    from harness.errors import UsageError

    by_option = {s.option: s for _, s in DATA_SOURCES.items()}
    named = {opt: p for opt, p in given.items() if p is not None}
    images = {opt: p for opt, p in image_options.items() if p is not None}
    if len(named) > 1 or len(images) > 1:
        options = ", ".join(by_option)
        raise UsageError(f"give one source: {options} or --source (and its images option)")
    option: str | None = None
    path: Path | None = None
    chosen = DATA_SOURCES.get(DEFAULT_SOURCE)
    if named:
        option, folder = next(iter(named.items()))
        if option != "--source":
            chosen, path = by_option[option], folder
        elif str(folder) in DATA_SOURCES and not folder.exists():
            chosen = DATA_SOURCES.get(str(folder))  # a source name: its default data
        else:
            chosen, path = detect_source(folder), folder
    if not images:
        return chosen, path, None
    image_option, image_path = next(iter(images.items()))
    if image_option != chosen.images_option or option is None:
        owner = next((s for s in by_option.values() if s.images_option == image_option), None)
        needs = f" needs {owner.option}" if owner else " is not an images option"
        hint = " (the default source has both)" if option is None else ""
        raise UsageError(f"{image_option}{needs}{hint}")
    return chosen, path, image_path


def register(app: typer.Typer) -> None:
    app.add_typer(cohort_app, name="cohort")
