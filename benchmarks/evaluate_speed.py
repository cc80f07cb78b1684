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
    wait    waiting for the references an entry is compared with (they must finish first)
    other   anything not marked (imports, claims, the progress display)

The submissions run as `harness demo -j N` runs them (``-j``, default 1): the references first,
the earlier references re-scored at the end; with N > 1, N evaluations at once in their own
processes, the cores divided between them, and each row holds that process's own stage times
(they overlap, so they add up to more than the wall time). Two ratios are printed:

    wall / training-busy time   the goal's figure: training-busy time is the wall time during
                                which at least one evaluation was in its optimizer steps (the
                                union of the step spans the workers report on the machine's
                                monotonic clock); 1.0 would be nothing but training
    own / steps                 each evaluation's own time, less waiting, per second of its own
                                optimizer steps (the per-row ratio)

One at a time the two agree. Side by side the first falls because one evaluation's predictions
and scoring overlap another's training, while the second does not fall (with fewer threads each,
steps take longer): read both, with the wall time. ``--compare`` runs one at a time first, then
N at once, and prints the two runs side by side with the speed-up. The load average before and
after and the thread settings are recorded, since both change the figures.

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
from dataclasses import dataclass
from pathlib import Path

from harness import config, timing

COLUMNS = (*timing.STAGES, "waiting", "other")
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
    for name in ("datasets", "cohorts", "features", ".keys", "audit"):
        if (keep / name).exists():
            (root / name).symlink_to(keep / name)
    return root


def _threads() -> str:
    import torch

    env = {k: os.environ.get(k, "-") for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    shown = " ".join(f"{k}={v}" for k, v in env.items())
    return f"torch intra-op threads {torch.get_num_threads()}, {shown}, cpus {os.cpu_count()}"


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


def _ratio(numerator: float, steps: float) -> str:
    return f"{numerator / steps:6.2f}" if steps > 0 else "     -"


@dataclass
class ZooRun:
    """The figures of one run over the zoo."""

    jobs: int
    wall: float  # seconds, start to end
    process: float  # the evaluations' own seconds, summed (more than the wall when overlapping)
    waiting: float  # of which waiting for references
    steps: float  # optimizer-step seconds summed over the evaluations
    busy: float  # seconds of wall time during which at least one evaluation was training

    @property
    def ratio(self) -> float:
        """Wall time per second of training-busy time (the goal's figure)."""
        return self.wall / self.busy if self.busy > 0 else float("nan")

    @property
    def per_process(self) -> float:
        """Each evaluation's own time (less waiting) per optimizer-step second."""
        return (self.process - self.waiting) / self.steps if self.steps > 0 else float("nan")


def run_zoo(paths, settings, jobs: int) -> ZooRun:
    """Evaluate ``paths`` as `harness demo -j jobs` does (references first, the earlier ones
    re-scored at the end), printing each evaluation's stages as it finishes."""
    from harness.evaluate.parallel import evaluate_many, threads_per_job
    from harness.evaluate.score.references import UNIMODAL_REFERENCES

    if jobs > 1 and len(paths) > 1:
        print(f"{jobs} evaluations at a time, {threads_per_job(jobs)} thread(s) each; rows: "
              "each process's own stage times (they overlap)")  # fmt: skip
    else:
        print(f"one evaluation at a time in this process, {_threads()}")
    header = " ".join(f"{HEADINGS[c]:>8s}" for c in COLUMNS)
    print(f"{'submission':18s} units    total  ratio {header}")
    grand = dict.fromkeys(COLUMNS, 0.0)
    spans: list[tuple[float, float]] = []
    units = 0

    def shown(outcome) -> None:
        nonlocal units
        if outcome.error:
            print(f"{outcome.folder:18s} failed: {outcome.error}", flush=True)
            return
        seconds = {c: outcome.stage_seconds.get(c, 0.0) for c in COLUMNS}
        seconds["other"] = max(0.0, outcome.seconds - sum(seconds.values()))
        cells = " ".join(f"{seconds[c]:8.1f}" for c in COLUMNS)
        ratio = _ratio(outcome.seconds - seconds["waiting"], seconds["train.steps"])
        print(f"{outcome.folder:18s} {outcome.units_run:5d} {outcome.seconds:8.1f} {ratio} "
              f"{cells}", flush=True)  # fmt: skip
        for c in COLUMNS:
            grand[c] += seconds[c]
        spans.extend(outcome.step_spans)
        units += outcome.units_run

    started = time.perf_counter()
    evaluate_many(
        paths, settings, references=UNIMODAL_REFERENCES, jobs=jobs, on_done=shown, measure=True
    )
    run = ZooRun(
        jobs=jobs, wall=time.perf_counter() - started, process=sum(grand.values()),
        waiting=grand["waiting"], steps=grand["train.steps"], busy=timing.union_seconds(spans),
    )  # fmt: skip
    cells = " ".join(f"{grand[c]:8.1f}" for c in COLUMNS)
    ratio = _ratio(run.process - run.waiting, run.steps)
    print(f"{'total':18s} {units:5d} {run.process:8.1f} {ratio} {cells}")
    print(f"wall {run.wall:.1f} s; optimizer steps {run.steps:.1f} s summed over the "
          f"evaluations, {run.busy:.1f} s of wall time during which one was training")  # fmt: skip
    if run.busy > 0:
        others = [c for c in COLUMNS if c not in ("train.steps", "waiting")]
        over = sorted(others, key=lambda c: -grand[c])[:4]
        shares = ", ".join(f"{HEADINGS[c]} {grand[c] / run.process:.0%}" for c in over)
        verdict = "within" if run.ratio <= TARGET_RATIO else "above"
        print(f"wall / training-busy time {run.ratio:.2f}: {verdict} the {TARGET_RATIO} target "
              f"(each evaluation's own time / its steps: {run.per_process:.2f}); largest "
              f"other stages: {shares} of the evaluations' time")  # fmt: skip
    return run


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
        type=_positive,
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
    if args.compare and args.jobs == 1:
        print("--compare needs -j N with N > 1: running one at a time only")
    runs: list[ZooRun] = []
    for jobs in [1, args.jobs] if args.compare and args.jobs > 1 else [args.jobs]:
        root = _fresh_cache(keep)  # every run trains every unit
        os.environ["HARNESS_CACHE"] = str(root)
        try:
            runs.append(run_zoo(paths, settings, jobs))
        finally:
            os.environ["HARNESS_CACHE"] = str(keep)
            shutil.rmtree(root, ignore_errors=True)
    if len(runs) > 1:
        print("side by side:  wall (s)  steps summed (s)  training-busy (s)  wall/busy  "
              "own/steps  speed-up")  # fmt: skip
        for run in runs:
            speed_up = runs[0].wall / run.wall
            print(f"  -j {run.jobs:<4d} {run.wall:10.1f} {run.steps:17.1f} {run.busy:18.1f} "
                  f"{run.ratio:10.2f} {run.per_process:10.2f} {speed_up:8.2f}x")  # fmt: skip
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
