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

    python benchmarks/evaluate_speed.py        # the zoo, quick protocol, IHM + phenotypes
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


def main() -> None:
    from harness.demo import DEMO_TASKS, reference_submissions
    from harness.evaluate.run import EvalSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--submission", action="append", help="default: the whole zoo")
    parser.add_argument("-t", "--task", action="append", help="default: the demo's tasks")
    parser.add_argument("--folds", default="1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--executor", default=None, help="isolated (default) or local")
    parser.add_argument("-e", "--encoder", default=None, help="CXR encoder (default: default)")
    args = parser.parse_args()

    keep = config.cache_root()
    if not (keep / "features").is_dir():
        raise SystemExit(f"no feature cache under {keep}: run `harness demo` first")
    settings = EvalSettings.quick(
        tasks=tuple(args.task or DEMO_TASKS),
        folds=tuple(int(f) for f in args.folds.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        executor=args.executor,
        encoder=args.encoder,
    )
    load_before = os.getloadavg()
    print(_threads())
    executor = args.executor or "isolated"
    print(f"tasks {', '.join(settings.tasks)}; folds {settings.folds}; seeds {settings.seeds}; "
          f"at most {settings.max_epochs} epochs; executor {executor}")  # fmt: skip
    header = " ".join(f"{HEADINGS[c]:>8s}" for c in COLUMNS)
    print(f"{'submission':18s} units    total  ratio {header}")
    root = _fresh_cache(keep)
    os.environ["HARNESS_CACHE"] = str(root)
    grand = dict.fromkeys(COLUMNS, 0.0)
    grand_total, grand_units = 0.0, 0
    try:
        for path in reference_submissions(args.submission):
            total, seconds, units = run_one(path, settings)
            print(_row(path.name, total, seconds, units), flush=True)
            grand_total += total
            grand_units += units
            for c in COLUMNS:
                grand[c] += seconds[c]
    finally:
        os.environ["HARNESS_CACHE"] = str(keep)
        shutil.rmtree(root, ignore_errors=True)
    print(_row("total", grand_total, grand, grand_units))
    steps = grand["train.steps"]
    if steps > 0:
        ratio = grand_total / steps
        over = sorted((c for c in COLUMNS if c != "train.steps"), key=lambda c: -grand[c])[:4]
        shares = ", ".join(f"{HEADINGS[c]} {grand[c] / grand_total:.0%}" for c in over)
        verdict = "within" if ratio <= TARGET_RATIO else "above"
        print(f"total / optimizer-step time {ratio:.2f}: {verdict} the {TARGET_RATIO} target; "
              f"largest other stages: {shares} of the total")  # fmt: skip
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
