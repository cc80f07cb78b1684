"""The demo on the embedded default dataset: synth, cohort, encode, evaluate, leaderboard.

Every stage is content-addressed or resumable, so a second `make demo` reuses what exists and
only prints the tables again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console

#: Reference submissions, EHR reference and unimodal ones first (others are compared with them).
REFERENCE_ORDER = ("ehr_lstm", "ehr_transformer", "cxr_probe")
#: Tasks the demo evaluates (quick settings); `harness evaluate` covers all four by default.
DEMO_TASKS = ("mortality_in_hospital", "phenotype")


def reference_submissions(names: Sequence[str] | None = None) -> list:
    """Submission folders in evaluation order: unimodal references first, then the rest."""
    from harness import config

    root = config.submissions_dir()
    found = sorted(p for p in root.iterdir() if (p / "submission.yaml").is_file())
    if names:
        wanted = set(names)
        found = [p for p in found if p.name in wanted]
    head = [p for name in REFERENCE_ORDER for p in found if p.name == name]
    return head + [p for p in found if p not in head]


def run_demo(
    n_patients: int | None = None,
    *,
    tasks: Sequence[str] = DEMO_TASKS,
    submissions: Sequence[str] | None = None,
    folds: Sequence[int] = (1,),
    seeds: Sequence[int] = (0,),
    executor: str | None = None,
    console: Console | None = None,
) -> None:
    from harness import config
    from harness.cohort import load_cohort
    from harness.cohort.build import build_cohorts
    from harness.cohort.show import funnel_table, overview_table, summarize
    from harness.data.synthetic import generate, summarize_dataset
    from harness.display import print_leaderboard, print_summary
    from harness.encode.run import encode
    from harness.evaluate.run import EvalSettings, evaluate
    from harness.leaderboard.aggregate import aggregate

    console = console or Console()
    started = time.perf_counter()

    console.rule("1. synthetic MIMIC-IV + MIMIC-CXR-JPG dataset")
    root = config.default_dataset_dir()
    if not root.exists():
        generate(
            root,
            n_patients=n_patients or config.DEFAULT_N_PATIENTS,
            seed=config.DEFAULT_SEED,
            image_size=config.DEFAULT_IMAGE_SIZE,
        )
    summary = summarize_dataset(root)
    summary["path"] = str(root)
    print_summary(summary, console)

    console.rule("2. cohorts")
    paths = build_cohorts()
    summaries = [summarize(load_cohort(path=paths[c])) for c in ("base", "matched")]
    console.print(funnel_table(summaries[1]))
    console.print(overview_table(summaries))

    console.rule("3. encode (CXR embeddings + EHR tensors, cached)")
    for cohort in ("base", "matched"):
        report = encode(cohort)
        verb = "encoded" if report.forward_calls else "reused"
        console.print(
            f"{cohort}: {report.n_images} images ({verb}; {report.n_failed} failed), "
            f"CXR key {report.cxr_key}, EHR key {report.ehr_key}"
        )

    settings = EvalSettings.quick(
        tasks=tuple(tasks), folds=tuple(folds), seeds=tuple(seeds), executor=executor
    )
    console.rule(
        f"4. evaluate the reference submissions (folds {','.join(map(str, folds))}, "
        f"seeds {','.join(map(str, seeds))}, at most {settings.max_epochs} epochs)"
    )
    for path in reference_submissions(submissions):
        t0 = time.perf_counter()
        try:
            outcome = evaluate(path, settings)
        except Exception as exc:  # one broken submission must not stop the demo
            console.print(f"[red]{path.name} failed[/]: {exc}")
            continue
        heads = ", ".join(
            f"{r['task']}/{r['cohort']} {r['metric']}={r['value']:.3f}"
            for r in outcome.headline
            if r["value"] is not None
        )
        console.print(
            f"{path.name:16s} {outcome.units_run} trained, {outcome.units_reused} reused, "
            f"{time.perf_counter() - t0:5.1f} s  {heads}",
            highlight=False,
        )

    console.rule("5. leaderboard")
    board = aggregate(config.results_dir(), config.leaderboard_dir())
    print_leaderboard(board, console, summary=True)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
