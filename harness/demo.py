"""The demo on the embedded default dataset: synth, cohort, encode, evaluate, leaderboard.

Every stage is content-addressed or resumable, so a second `make demo` reuses what exists and
only prints the tables again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console

from harness.evaluate.parallel import JobOutcome

#: Reference submissions first (the others are compared with them), the quick ones before the
#: slow ``ehr_transformer``: when evaluations run side by side, each reference scores only after
#: those before it, so a quick one placed after a slow one would hold a core idle, waiting.
REFERENCE_ORDER = ("ehr_lstm", "cxr_probe", "ehr_transformer")
#: Tasks the demo evaluates (quick settings); `harness evaluate` covers all four by default.
DEMO_TASKS = ("mortality_in_hospital", "phenotype")
#: The slowest references to train on the default data (`benchmarks/evaluate_speed.py`): started
#: first when several evaluations run at once, so that no long one starts last.
SLOWEST_FIRST = ("tabular_gbm", "umse")


def reference_submissions(names: Sequence[str] | None = None) -> list:
    """Submission folders in evaluation order: unimodal references first, then the rest."""
    from harness import config

    root = config.submissions_dir()
    found = sorted(p for p in root.iterdir() if (p / "submission.yaml").is_file())
    if names:
        known = [p.name for p in found]
        unknown = [n for n in names if n not in known]
        if unknown:
            import difflib

            from harness.errors import UnknownNameError

            hints = []
            for n in unknown:
                close = difflib.get_close_matches(n, known, n=1, cutoff=0.5)
                hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise UnknownNameError(
                f"unknown submission(s) {', '.join(hints)} in {root}; "
                f"valid names: {', '.join(known)}"
            )
        wanted = set(names)
        found = [p for p in found if p.name in wanted]
    head = [p for name in (*REFERENCE_ORDER, *SLOWEST_FIRST) for p in found if p.name == name]
    return head + [p for p in found if p not in head]


def print_outcome(outcome: JobOutcome, console: Console) -> None:
    """One line per evaluated submission: units, time and headline metrics, or its error."""
    if outcome.error is not None:  # one broken submission does not stop the demo
        console.print(f"[red]{outcome.folder} failed[/]: {outcome.error}")
        return
    heads = ", ".join(
        f"{r['task']}/{r['cohort']} {r['metric']}={r['value']:.3f}"
        for r in outcome.headline
        if r["value"] is not None
    )
    console.print(
        f"{outcome.folder:16s} {outcome.units_run} trained, {outcome.units_reused} reused, "
        f"{outcome.seconds:5.1f} s  {heads}",
        highlight=False,
    )


def run_demo(
    n_patients: int | None = None,
    *,
    tasks: Sequence[str] = DEMO_TASKS,
    submissions: Sequence[str] | None = None,
    folds: Sequence[int] = (1,),
    seeds: Sequence[int] = (0,),
    executor: str | None = None,
    jobs: int | None = None,
    console: Console | None = None,
) -> None:
    from harness import config
    from harness.audit import run_audit
    from harness.cohort import load_cohort
    from harness.cohort.build import build_cohorts
    from harness.cohort.show import funnel_table, overview_table, summarize
    from harness.data.synthetic import generate, summarize_dataset
    from harness.display import print_leaderboard, print_summary
    from harness.encode.run import encode
    from harness.evaluate.parallel import default_jobs, evaluate_many, threads_per_job
    from harness.evaluate.run import EvalSettings
    from harness.evaluate.score.references import UNIMODAL_REFERENCES
    from harness.leaderboard.aggregate import aggregate

    console = console or Console()
    folders = reference_submissions(submissions)  # an unknown name fails before any work
    started = time.perf_counter()
    stages: dict[str, float] = {}
    mark = started

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = now - mark
        mark = now

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

    lap("synth")
    console.rule("2. cohorts")
    paths = build_cohorts()
    summaries = [summarize(load_cohort(path=paths[c])) for c in ("base", "matched")]
    console.print(funnel_table(summaries[1]))
    console.print(overview_table(summaries))

    lap("cohorts")
    console.rule("3. encode (CXR embeddings + EHR tensors, cached)")
    for cohort in ("base", "matched"):
        report = encode(cohort)
        verb = "encoded" if report.forward_calls else "reused"
        console.print(
            f"{cohort}: {report.n_images} images ({verb}; {report.n_failed} failed), "
            f"CXR key {report.cxr_key}, EHR key {report.ehr_key}"
        )

    lap("encode")
    console.rule("4. leak audit (subjects, images, times, labels, folds)")
    for cohort in ("base", "matched"):
        console.print(run_audit(cohort).one_line(), highlight=False, soft_wrap=True)

    lap("audit")
    settings = EvalSettings.quick(
        tasks=tuple(tasks), folds=tuple(folds), seeds=tuple(seeds), executor=executor
    )
    console.rule(
        f"5. evaluate the reference submissions (folds {','.join(map(str, folds))}, "
        f"seeds {','.join(map(str, seeds))}, at most {settings.max_epochs} epochs)"
    )
    jobs = default_jobs(len(folders)) if jobs is None else jobs
    if jobs > 1:
        console.print(
            f"{len(folders)} submissions, {jobs} at a time with {threads_per_job(jobs)} "
            "thread(s) each; the references first (the others' scores are compared with them)"
        )
    evaluate_many(
        folders, settings, references=UNIMODAL_REFERENCES, jobs=jobs,
        on_done=lambda outcome: print_outcome(outcome, console),
    )  # fmt: skip

    lap("evaluate")
    console.rule("6. leaderboard")
    board = aggregate(config.results_dir(), config.leaderboard_dir())
    print_leaderboard(board, console, summary=True)
    lap("leaderboard")
    console.rule("7. report")
    from harness.report import write_report

    written = write_report(board=board)
    opening = next((r for r in written.reports if not r.missing), None)
    if opening is not None and opening.sections:
        for paragraph in opening.sections[0].paragraphs:
            console.print(paragraph.replace("**", "").replace("`", ""), highlight=False)
    console.print(
        "the four answers: " + ", ".join(str(p) for p in written.paths.values()),
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    lap("report")
    laps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in stages.items())
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s ({laps})")
