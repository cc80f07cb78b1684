"""What `make demo` costs: the cold run into a fresh cache, then the warm re-run, side by side.

Runs ``harness demo`` (the command `make demo` runs: every reference submission, quick
protocol, in-hospital mortality + phenotypes, sandboxed) as a subprocess into a temporary
cache, twice: cold (synth, cohorts, encode, the zoo trained and scored, the leaderboard) and
warm (everything reused). Prints both wall times, the demo's own per-stage times, the load
average before and after, and the thread and job settings. ``--jobs 1`` gives the one-process
baseline of the same code in the same run (``--compare-jobs 1`` runs both).

    python benchmarks/demo_speed.py                    # cold + warm, default jobs
    python benchmarks/demo_speed.py --compare-jobs 1   # also the one-at-a-time run, cold
    python benchmarks/demo_speed.py -s ehr_lstm -s late_fusion --keep /tmp/demo-cache
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HARNESS = [sys.executable, "-c", "import sys; from harness.cli.main import main; sys.exit(main())"]


def run_demo(cache: Path, args: list[str]) -> tuple[float, str, str]:
    """Wall seconds, the demo's stage line and its per-submission lines."""
    env = {**os.environ, "HARNESS_CACHE": str(cache), "COLUMNS": "200"}
    started = time.perf_counter()
    proc = subprocess.run([*HARNESS, "demo", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"harness demo failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr}")
    lines = proc.stdout.splitlines()
    stages = next((ln for ln in lines if ln.startswith("demo finished")), "")
    subs = [ln for ln in lines if re.search(r"\d+ trained, \d+ reused", ln)]
    return wall, stages, "\n".join(subs)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--submission", action="append", default=[])
    parser.add_argument("-j", "--jobs", type=int, default=None, help="demo --jobs (default: its)")
    parser.add_argument(
        "--compare-jobs", type=int, default=None, help="also run cold with this many jobs"
    )
    parser.add_argument("--keep", type=Path, default=None, help="cache folder to keep")
    args = parser.parse_args()

    extra = [a for name in args.submission for a in ("-s", name)]
    runs = [args.jobs] + ([args.compare_jobs] if args.compare_jobs is not None else [])
    print(f"cpus {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, "
          f"load before {load()}")  # fmt: skip
    rows = []
    for jobs in runs:
        cache = args.keep if args.keep and jobs == args.jobs else Path(tempfile.mkdtemp())
        if cache.exists():
            shutil.rmtree(cache)
        job_args = extra + ([] if jobs is None else ["--jobs", str(jobs)])
        cold, cold_stages, subs = run_demo(cache, job_args)
        warm, warm_stages, _ = run_demo(cache, job_args)
        rows.append((jobs, cold, warm, cold_stages, warm_stages, subs))
        if cache != args.keep:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"load after jobs={jobs or 'default'}: {load()}")
    for jobs, cold, warm, cold_stages, warm_stages, subs in rows:
        print(f"\n== harness demo --jobs {jobs or 'default'}")
        print(subs)
        print(f"cold: {cold:7.1f} s wall  ({cold_stages})")
        print(f"warm: {warm:7.1f} s wall  ({warm_stages})")
    if len(rows) == 2:
        print(f"\ncold speed-up of jobs={rows[0][0] or 'default'} over jobs={rows[1][0]}: "
              f"{rows[1][1] / rows[0][1]:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
