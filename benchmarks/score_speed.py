"""Seconds for 1,000 patient-level bootstrap resamples of macro-AUROC (25 labels x 20,000 stays).

Compares the vectorised kernel (harness.metrics.bootstrap) with a naive loop calling
scikit-learn's roc_auc_score on each explicitly resampled row set, on the same resamples, and
prints both times, the ratio and the largest difference between the two sets of values. The
naive loop is timed on ``--naive`` resamples (default 50) and extrapolated to the full count.

    python benchmarks/score_speed.py [--stays 20000] [--labels 25] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from harness.metrics.bootstrap import bootstrap_indices, bootstrap_metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=20_000)
    parser.add_argument("--labels", type=int, default=25)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive", type=int, default=50, help="resamples for the naive loop")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    subjects = rng.integers(0, int(args.stays * 0.75), args.stays)
    y = (rng.random((args.stays, args.labels)) < rng.uniform(0.03, 0.4, args.labels)).astype(int)
    scores = np.round(np.clip(0.2 * y + rng.random(y.shape), 0, None), 3)  # ties included

    t0 = time.perf_counter()
    resamples = bootstrap_indices(subjects, n_resamples=args.resamples)
    t_draw = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = bootstrap_metric("auroc_macro", y, scores, resamples)
    t_fast = time.perf_counter() - t0

    n_naive = min(args.naive, args.resamples)
    t0 = time.perf_counter()
    naive = np.array(
        [
            roc_auc_score(y[idx], scores[idx], average="macro")
            for idx in (resamples.indices(b) for b in range(n_naive))
        ]
    )
    t_naive = (time.perf_counter() - t0) * args.resamples / n_naive

    print(f"data: {args.stays} stays, {np.unique(subjects).size} subjects, {args.labels} labels")
    print(f"draw {args.resamples} subject-level resamples: {t_draw:.2f} s")
    print(f"vectorised macro-AUROC, {args.resamples} resamples: {t_fast:.2f} s")
    print(
        f"naive scikit-learn loop, {args.resamples} resamples: {t_naive:.1f} s "
        f"(timed on {n_naive}, extrapolated)"
    )
    print(f"speed-up: {t_naive / t_fast:.0f}x")
    diff = np.abs(fast[:n_naive] - naive).max()
    print(f"max |difference| on the {n_naive} shared resamples: {diff:.2e}")


if __name__ == "__main__":
    main()
