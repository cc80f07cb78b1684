"""Where `harness evaluate` spends its time, per submission and stage, against its training steps.

Runs the evaluation of the chosen submissions on a built dataset (cohorts and feature caches
must exist: run `harness demo` or `harness cohort build` + `harness encode` first) into a fresh,
temporary results folder, so every unit really trains, and prints per submission and in total
the wall time of each stage:

    load                 cohort, feature cache and tensors
    steps   train.steps: optimizer steps (or an estimator's fit), measured where the model trains
    val     train.validation: validation passes for checkpoint selection
    train+  train.other: model set-up, the sandbox round trip (worker start-up included)
    predict test and scenario predictions (degrading the inputs included)
    boot / fair / robust / score+   scoring: bootstrap metrics and deltas, fairness tables,
            robustness curves, the rest (reading units, pooling, references)
    write   result.json, unit files
    other   anything not marked (imports, claims, the progress display)

and the ratio total / train.steps (1.0 would be nothing but the training itself). The run records
the load average before and after and the thread settings, since both change the figures.

``-j N`` (N > 1) evaluates the zoo as `harness demo -j N` does: N evaluations at once in their
own processes, the cores divided between them. The per-submission rows are then each process's
own stage times (they overlap, so they add up to more than the wall time; ``wait`` is the time an
entry, trained, waited for the references it is compared with). The ratio becomes wall time /
time during which at least one evaluation was in its optimizer steps (the union of the step
spans the workers report on the machine's monotonic clock): 1.0 would again be nothing but
training, and anything above it is time when no model was training. ``--compare`` runs the
zoo one at a time first and then with the jobs, and prints both totals side by side.

    python benchmarks/evaluate_speed.py        # the zoo, quick protocol, IHM + phenotypes, -j 1
    python benchmarks/evaluate_speed.py -j 2 --compare
    python benchmarks/evaluate_speed.py -s late_fusion -s ehr_lstm --executor local
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from harness import config, timing

COLUMNS = (*timing.STAGES, "other")
#: Column headings (8 characters) for the stages.
HEADINGS = {
    "load": "load", "train.steps": "steps", "train.validation": "val", "train.other": "train+",
    "predict": "predict", "scoring.bootstrap": "boot", "scoring.fairness": "fair",
    "scoring.robustness": "robust", "scoring.other": "score+", "write": "write", "other": "other",
    "waiting": "wait",
}  # fmt: skip


#: The goal for total / optimizer-step time over the zoo (quick protocol).
TARGET_RATIO = 1.3


def _fresh_cache(keep: Path) -> Path:
    """A temporary cache root that shares the built datasets, cohorts, features and keys of
    ``keep`` (symbolic links) and has an empty results folder."""
    root = Path(tempfile.mkdtemp(prefix="harness-speed-"))
    for name in ("datasets", "cohorts", "features", ".keys"):
        if (keep / name).exists():
            (root / name).symlink_to(keep / name)
    return root


def _threads() -> str:
    import torch

    env = {k: os.environ.get(k, "-") for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    shown = " ".join(f"{k}={v}" for k, v in env.items())
    return f"torch intra-op threads {torch.get_num_threads()}, {shown}, cpus {os.cpu_count()}"


def run_one(path: Path, settings) -> tuple[float, dict[str, float], int]:
    """Evaluate one submission; (wall seconds, seconds per stage, units trained)."""
    from harness.evaluate.run import evaluate

    started = time.perf_counter()
    with timing.measure() as clock:
        outcome = evaluate(path, settings)
    total = time.perf_counter() - started
    seconds = {name: clock.seconds.get(name, 0.0) for name in timing.STAGES}
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    return total, seconds, outcome.units_run


def _row(name: str, total: float, seconds: dict[str, float], units: int) -> str:
    steps = seconds.get("train.steps", 0.0)
    ratio = f"{total / steps:6.2f}" if steps > 0 else "     -"
    cells = " ".join(f"{seconds[c]:8.1f}" for c in COLUMNS)
    return f"{name:18s} {units:5d} {total:8.1f} {ratio} {cells}"


def _settings(args):
    from harness.demo import DEMO_TASKS
    from harness.evaluate.run import EvalSettings

    return EvalSettings.quick(
        tasks=tuple(args.task or DEMO_TASKS),
        folds=tuple(int(f) for f in args.folds.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        executor=args.executor,
        encoder=args.encoder,
    )


def _verdict(ratio: float, grand: dict[str, float], total: float, columns) -> str:
    over = sorted((c for c in columns if c != "train.steps"), key=lambda c: -grand[c])[:4]
    shares = ", ".join(f"{HEADINGS[c]} {grand[c] / total:.0%}" for c in over)
    verdict = "within" if ratio <= TARGET_RATIO else "above"
    return f"{verdict} the {TARGET_RATIO} target; largest other stages: {shares}"


def one_at_a_time(paths, settings) -> tuple[float, float]:
    """Every submission in this process, one after another; (wall, step seconds)."""
    header = " ".join(f"{HEADINGS[c]:>8s}" for c in COLUMNS)
    print(f"{'submission':18s} units    total  ratio {header}")
    grand = dict.fromkeys(COLUMNS, 0.0)
    grand_total, grand_units = 0.0, 0
    for path in paths:
        total, seconds, units = run_one(path, settings)
        print(_row(path.name, total, seconds, units), flush=True)
        grand_total += total
        grand_units += units
        for c in COLUMNS:
            grand[c] += seconds[c]
    print(_row("total", grand_total, grand, grand_units))
    steps = grand["train.steps"]
    if steps > 0:
        ratio = grand_total / steps
        print(f"total / optimizer-step time {ratio:.2f}: "
              f"{_verdict(ratio, grand, grand_total, COLUMNS)} of the total")  # fmt: skip
    return grand_total, steps


def side_by_side(paths, settings, jobs: int) -> tuple[float, float]:
    """The submissions ``jobs`` at a time, as `harness demo -j` runs them; (wall, seconds
    during which at least one was in its optimizer steps)."""
    from harness.evaluate.parallel import evaluate_many, threads_per_job
    from harness.evaluate.score.references import UNIMODAL_REFERENCES

    columns = (*COLUMNS, "waiting")
    print(f"{jobs} evaluations at a time, {threads_per_job(jobs)} thread(s) each; "
          "rows: each process's own stage times (they overlap)")  # fmt: skip
    header = " ".join(f"{HEADINGS[c]:>8s}" for c in columns)
    print(f"{'submission':18s} units    total  ratio {header}")
    grand = dict.fromkeys(columns, 0.0)
    spans: list[tuple[float, float]] = []

    def shown(outcome) -> None:
        if outcome.error:
            print(f"{outcome.folder:18s} failed: {outcome.error}", flush=True)
            return
        seconds = {c: outcome.stage_seconds.get(c, 0.0) for c in columns}
        seconds["other"] = max(0.0, outcome.seconds - sum(seconds.values()))
        cells = " ".join(f"{seconds[c]:8.1f}" for c in columns)
        steps = seconds["train.steps"]
        ratio = f"{outcome.seconds / steps:6.2f}" if steps > 0 else "     -"
        print(f"{outcome.folder:18s} {outcome.units_run:5d} {outcome.seconds:8.1f} {ratio} "
              f"{cells}", flush=True)  # fmt: skip
        for c in columns:
            grand[c] += seconds[c]
        spans.extend(outcome.step_spans)

    started = time.perf_counter()
    evaluate_many(
        paths, settings, references=UNIMODAL_REFERENCES, jobs=jobs, on_done=shown, measure=True
    )
    wall = time.perf_counter() - started
    union = timing.union_seconds(spans)
    cells = " ".join(f"{grand[c]:8.1f}" for c in columns)
    print(f"{'sum of processes':18s} {'':5s} {sum(grand.values()):8.1f} {'':6s} {cells}")
    print(f"wall {wall:.1f} s; optimizer steps: {grand['train.steps']:.1f} s summed over the "
          f"processes, {union:.1f} s during which at least one was training")  # fmt: skip
    if union > 0:
        ratio = wall / union
        print(
            f"wall / optimizer-step time {ratio:.2f}: "
            f"{_verdict(ratio, grand, sum(grand.values()), columns)} of the processes' time"
        )
    return wall, union


def main() -> None:
    from harness.demo import reference_submissions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--submission", action="append", help="default: the whole zoo")
    parser.add_argument("-t", "--task", action="append", help="default: the demo's tasks")
    parser.add_argument("--folds", default="1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--executor", default=None, help="isolated (default) or local")
    parser.add_argument("-e", "--encoder", default=None, help="CXR encoder (default: default)")
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="evaluations at once (default 1: one after another, all threads)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="with -j N: run one at a time first, then N at once"
    )
    args = parser.parse_args()  # fmt: skip

    keep = config.cache_root()
    if not (keep / "features").is_dir():
        raise SystemExit(f"no feature cache under {keep}: run `harness demo` first")
    settings = _settings(args)
    load_before = os.getloadavg()
    print(_threads())
    executor = args.executor or "isolated"
    print(f"tasks {', '.join(settings.tasks)}; folds {settings.folds}; seeds {settings.seeds}; "
          f"at most {settings.max_epochs} epochs; executor {executor}")  # fmt: skip
    paths = reference_submissions(args.submission)
    figures: list[tuple[str, float, float]] = []
    modes = [1, args.jobs] if args.compare and args.jobs > 1 else [args.jobs]
    for jobs in modes:
        root = _fresh_cache(keep)  # every run trains every unit
        os.environ["HARNESS_CACHE"] = str(root)
        try:
            if jobs == 1:
                wall, steps = one_at_a_time(paths, settings)
            else:
                wall, steps = side_by_side(paths, settings, jobs)
        finally:
            os.environ["HARNESS_CACHE"] = str(keep)
            shutil.rmtree(root, ignore_errors=True)
        figures.append((f"-j {jobs}", wall, steps))
    if len(figures) > 1:
        print("side by side:   wall (s)   training (s)   ratio")
        for label, wall, steps in figures:
            print(f"  {label:10s} {wall:10.1f} {steps:14.1f} {wall / steps:7.2f}")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
