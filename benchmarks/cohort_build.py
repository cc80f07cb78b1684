"""Benchmark the cohort builder on synthetic datasets: wall time, chartevents rows/s, peak RSS.

Each build runs in a fresh subprocess so that its peak resident memory (DuckDB's native memory
included) is measured alone. Usage::

    python benchmarks/cohort_build.py --sizes 5000 20000 --memory-limit 1GB --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from harness.cohort.build import build_cohorts
root = Path(sys.argv[1])
t0 = time.perf_counter()
out = build_cohorts(root / "mimic-iv", root / "mimic-cxr-jpg", dataset=root.name,
                    memory_limit=sys.argv[2], threads=int(sys.argv[3]) or None, overwrite=True)
wall = time.perf_counter() - t0
base = json.loads((out["base"] / "manifest.json").read_text())
matched = json.loads((out["matched"] / "manifest.json").read_text())
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "n_stays": base["n_stays"], "n_matched": matched["n_stays"],
                  "peak_kib": peak_kib}))
"""


def _count_rows(path: Path) -> int:
    import duckdb

    con = duckdb.connect()
    try:
        sql = f"SELECT count(*) FROM read_csv('{path}', header=true)"
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def run(n_patients: int, work: Path, memory_limit: str, threads: int) -> dict:
    from harness.data.synthetic import generate

    root = work / f"synthetic-{n_patients}"
    t0 = time.perf_counter()
    if not (root / "mimic-iv").exists():
        # 64 px is the smallest image the generator accepts
        generate(root, n_patients=n_patients, seed=0, image_size=64)
    gen_s = time.perf_counter() - t0
    # counted before the build, so that a failure here cannot waste a long build
    chart_rows = _count_rows(root / "mimic-iv/icu/chartevents.csv.gz")
    env = os.environ | {"HARNESS_CACHE": str(work / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), memory_limit, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:  # show the builder's own error, not just the exit status
        raise SystemExit(f"cohort build of {root} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    chart_mb = (root / "mimic-iv/icu/chartevents.csv.gz").stat().st_size / 1e6
    return {
        "n_patients": n_patients,
        "generate_s": round(gen_s, 1),
        "build_wall_s": round(result["wall_s"], 1),
        "chartevents_rows": chart_rows,
        "chartevents_csv_gz_mb": round(chart_mb, 1),
        "chart_rows_per_s": round(chart_rows / result["wall_s"]),
        # the builder process's own peak resident set (Linux ru_maxrss is in KiB)
        "peak_rss_mb": round(result["peak_kib"] / 1024),
        "n_stays_base": result["n_stays"],
        "n_stays_matched": result["n_matched"],
        # the machine's 1-minute load average after the build: wall times are only comparable
        # between runs on an otherwise idle machine
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--threads", type=int, default=0, help="0: DuckDB default (all cores)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cohort-bench-"))
    print(f"work dir: {work}")
    print(
        f"{'patients':>9} {'stays':>7} {'matched':>7} {'chart rows':>11} {'build s':>8} "
        f"{'rows/s':>10} {'peak RSS MB':>11}"
    )
    for n in sorted(args.sizes):
        r = run(n, work, args.memory_limit, args.threads)
        print(
            f"{r['n_patients']:>9} {r['n_stays_base']:>7} {r['n_stays_matched']:>7} "
            f"{r['chartevents_rows']:>11} {r['build_wall_s']:>8} {r['chart_rows_per_s']:>10} "
            f"{r['peak_rss_mb']:>11}"
        )
        print(json.dumps(r))


if __name__ == "__main__":
    main()
