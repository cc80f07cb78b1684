"""Cost of the sandbox: the same units run in-process (``local``) and in the bubblewrap worker.

Both executors train and predict the same units (every fold and seed asked for, all scenarios,
both cohorts) from the same `FeatureSet`s, with one worker per fold serving both cohorts and the
next one started ahead in the background, as `harness evaluate` runs them. The script checks
that the predictions are byte-identical and prints the wall time of each executor and the
worker's start-up. It builds a small synthetic dataset in a temporary cache.

    python benchmarks/isolation_overhead.py --n-patients 600 --folds 1,2 --seeds 0 \
        --submissions ehr_lstm,late_fusion,tabular_gbm
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _run_units(executor_name, sub, sets, folds, seeds, scenarios, max_epochs) -> tuple[float, list]:
    from harness.evaluate.run import EvalSettings, Unit, _LazyRunner, read_unit, run_unit
    from harness.executors import Limits, get_executor

    settings = EvalSettings(max_epochs=max_epochs)
    executor = get_executor(executor_name)
    out = []
    started = time.perf_counter()
    # one worker per (task, fold), the next one started ahead, as `harness evaluate` does
    runner = _LazyRunner(executor, sub, Limits())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in folds:
                runner.close()  # one worker per fold, serving both cohorts
                for cohort, fs in sets.items():
                    others = {o: f for o, f in sets.items() if o != cohort}
                    for s in seeds:
                        path = Path(tmp) / f"{cohort}_{k}_{s}.parquet"
                        unit = Unit(fs.task.name, cohort, k, s)
                        run_unit(runner, fs, unit, settings, scenarios, others, path)
                        frame, _ = read_unit(path)
                        out.append(frame.filter(like="prob_").to_numpy())
    finally:
        runner.shutdown()
    return time.perf_counter() - started, out


def _startup_seconds(sub) -> float:
    from harness.executors import Limits, get_executor

    t0 = time.perf_counter()
    runner = get_executor("isolated").open(sub, Limits())  # returns once the worker is ready
    runner.close()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-patients", type=int, default=600)
    parser.add_argument("--folds", default="1,2")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--submissions", default="ehr_lstm,late_fusion,tabular_gbm")
    parser.add_argument("--task", default="mortality_in_hospital")
    parser.add_argument("--repeats", type=int, default=2, help="runs per executor (min taken)")
    args = parser.parse_args()

    os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-bench-")
    import torch

    from harness.cli.main import main as cli
    from harness.cohort import load_cohort
    from harness.evaluate.scenarios import SCENARIOS
    from harness.models.data import load_feature_set
    from harness.models.submission import load_submission

    for argv in (["synth", "--n-patients", str(args.n_patients), "--image-size", "64"],
                 ["cohort", "build"], ["encode", "-e", "test_tiny"]):  # fmt: skip
        assert cli(argv) == 0, argv
    sets = {
        c: load_feature_set(load_cohort(c), args.task, encoder="test_tiny")
        for c in ("base", "matched")
    }
    folds = [int(x) for x in args.folds.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    scenarios = SCENARIOS.names()
    n_units = len(sets) * len(folds) * len(seeds)
    n_requests = n_units * (3 + sum(len(SCENARIOS.get(s).rates) - 1 for s in scenarios) + 1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{args.n_patients} patients, task {args.task}, {n_units} units per submission "
          f"({len(sets)} cohorts x {len(folds)} folds x {len(seeds)} seeds), "
          f"{n_requests} requests per submission, max {args.max_epochs} epochs")  # fmt: skip
    print(f"best of {args.repeats} runs per executor, order alternated")
    print(f"{'submission':<14}{'local s':>9}{'isolated s':>12}{'overhead s':>12}{'overhead':>10}"
          f"{'identical':>11}")  # fmt: skip
    total_local = total_iso = 0.0
    for name in args.submissions.split(","):
        sub = load_submission(REPO / "submissions" / name)
        times: dict[str, list[float]] = {"local": [], "isolated": []}
        preds: dict[str, list] = {}
        for r in range(args.repeats):  # alternate the order: neither side gets the warm cache
            for ex in ("local", "isolated") if r % 2 == 0 else ("isolated", "local"):
                sec, preds[ex] = _run_units(ex, sub, sets, folds, seeds, scenarios, args.max_epochs)
                times[ex].append(sec)
        local_s, iso_s = min(times["local"]), min(times["isolated"])
        local_p, iso_p = preds["local"], preds["isolated"]
        same = all(np.array_equal(a.view(np.uint64), b.view(np.uint64))
                   for a, b in zip(local_p, iso_p, strict=True))  # fmt: skip
        total_local += local_s
        total_iso += iso_s
        print(f"{name:<14}{local_s:>9.2f}{iso_s:>12.2f}{iso_s - local_s:>12.2f}"
              f"{(iso_s / local_s - 1) * 100:>9.1f}%{str(same):>11}")  # fmt: skip
    print(f"{'all':<14}{total_local:>9.2f}{total_iso:>12.2f}{total_iso - total_local:>12.2f}"
          f"{(total_iso / total_local - 1) * 100:>9.1f}%")  # fmt: skip
    print(
        f"worker start-up (sandbox + python + torch import): "
        f"{_startup_seconds(load_submission(REPO / 'submissions' / 'ehr_lstm')):.2f} s"
    )


if __name__ == "__main__":
    main()
