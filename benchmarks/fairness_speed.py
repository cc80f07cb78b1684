"""Group fairness tables: all groups at once (batched kernels) vs fairlearn's MetricFrame.

Scores one binary label over every fairness attribute and pairwise intersection (21 columns) of
a generated stays table, both ways, and prints the time of each, the speed-up and the largest
difference between their numbers. The second way is what the harness did before: one
MetricFrame per attribute, calling each per-group metric function group by group.

    python benchmarks/fairness_speed.py [--n 2300] [--labels 25] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from harness.metrics.fairness import (
    BINARY_GROUP_METRICS,
    fairness_groups,
    group_values,
    metric_frame,
)


def _stays(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": rng.integers(18, 95, n),
            "gender": rng.choice(["F", "M"], n),
            "race_group": rng.choice(["WHITE", "BLACK", "ASIAN", "HISPANIC", "OTHER"], n),
            "insurance": rng.choice(["Medicare", "Medicaid", "Private", None], n),
            "admission_type": rng.choice(["EMERGENCY", "URGENT", "ELECTIVE"], n),
            "dicom_id": np.where(rng.random(n) < 0.5, "img", None),
        }
    )


def _both_ways(y, p, decision, groups: pd.DataFrame) -> tuple[float, float, float]:
    """(vectorised seconds, MetricFrame seconds, largest |difference|) over all attributes."""
    fast_s = slow_s = worst = 0.0
    for attr in groups.columns:
        g = groups[attr].to_numpy().astype(str)
        names = sorted(set(g))
        t0 = time.perf_counter()
        codes = pd.Index(names).get_indexer(pd.Index(g))
        fast = group_values(BINARY_GROUP_METRICS, y, p, decision, codes, len(names))
        t1 = time.perf_counter()
        slow = metric_frame(BINARY_GROUP_METRICS, y, p, decision, g).by_group.astype(float)
        t2 = time.perf_counter()
        fast_s, slow_s = fast_s + t1 - t0, slow_s + t2 - t1
        for name in BINARY_GROUP_METRICS:
            a, b = fast[name], slow.loc[names, name].to_numpy()
            both = ~(np.isnan(a) & np.isnan(b))
            worst = max(worst, float(np.nanmax(np.abs(a[both] - b[both]), initial=0.0)))
    return fast_s, slow_s, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2300, help="stays (the default cohort: 2,326)")
    parser.add_argument("--labels", type=int, default=25, help="binary labels (phenotypes: 25)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    groups = fairness_groups(_stays(args.n, rng))
    n_groups = sum(groups[c].nunique() for c in groups.columns)
    print(f"{args.n} stays, {groups.shape[1]} attributes ({n_groups} groups), "
          f"{args.labels} labels, best of {args.repeat}")  # fmt: skip
    best_fast = best_slow = float("inf")
    worst = 0.0
    for _ in range(args.repeat):
        fast_total = slow_total = 0.0
        for _label in range(args.labels):
            y = (rng.random(args.n) < 0.2).astype(int)
            p = np.clip(0.2 + 0.3 * y + 0.4 * rng.random(args.n), 0, 1)
            fast, slow, diff = _both_ways(y, p, (p >= 0.5).astype(int), groups)
            fast_total, slow_total, worst = fast_total + fast, slow_total + slow, max(worst, diff)
        best_fast, best_slow = min(best_fast, fast_total), min(best_slow, slow_total)
    print(f"vectorised (batched kernels)  {best_fast:8.2f} s")
    print(f"fairlearn MetricFrame         {best_slow:8.2f} s")
    print(f"speed-up {best_slow / best_fast:.1f}x; largest difference {worst:.1e}")


if __name__ == "__main__":
    main()
