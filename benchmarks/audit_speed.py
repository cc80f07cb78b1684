"""Benchmark `harness audit`: the default cohorts end to end, and the near-duplicate search.

1. The audit of the default ``base`` and ``matched`` cohorts (built and encoded first when they
   are missing), forced to run again: wall time and time per check.
2. faiss's range search against a brute-force numpy search (blocks of the full similarity
   matrix) on synthetic embeddings with planted near copies: the same pairs, and the speed
   ratio; then faiss's IVF index (approximate) with its recall against the exact pairs.
3. A projection to MIMIC-CXR-JPG (~377,000 images): exact search grows as n^2, IVF as n^1.5
   (nlist ~ 4 sqrt(n)); content hashing at the measured sha256 throughput over ~1.5 MB per JPEG.

Usage::

    python benchmarks/audit_speed.py                      # default cohorts + sizes 5k 20k 50k
    python benchmarks/audit_speed.py --sizes 2000 5000 --dim 512 --skip-cohort
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np

MIMIC_CXR_IMAGES = 377_110
MIMIC_CXR_MEAN_BYTES = 1.5e6  # MIMIC-CXR-JPG: ~570 GB over 377,110 JPEGs


def _default_cache_ready() -> None:
    """Build the default dataset, cohorts and features when the cache lacks them."""
    from harness import config
    from harness.cohort.build import build_cohorts
    from harness.data.synthetic import generate
    from harness.encode.run import encode

    root = config.default_dataset_dir()
    if not root.exists():
        generate(root, n_patients=config.DEFAULT_N_PATIENTS, seed=config.DEFAULT_SEED,
                 image_size=config.DEFAULT_IMAGE_SIZE)  # fmt: skip
    build_cohorts()
    for cohort in ("base", "matched"):
        encode(cohort)


def cohort_audit() -> None:
    from harness.audit import run_audit

    _default_cache_ready()
    print("== audit of the default cohorts (forced re-run) ==")
    for cohort in ("base", "matched"):
        t0 = time.perf_counter()
        audit = run_audit(cohort, force=True)
        wall = time.perf_counter() - t0
        inputs = audit.record["inputs"]
        per = ", ".join(f"{k} {v:.2f}" for k, v in inputs["seconds"].items())
        print(
            f"{cohort:8s} {inputs['n_stays']} stays, {inputs['n_linked_images']} images: "
            f"{wall:.2f} s wall (checks {audit.record['elapsed_s']:.2f} s: {per}); "
            f"verdict {audit.verdict}"
        )


def embeddings(n: int, dim: int, n_copies: int, seed: int = 0) -> tuple[np.ndarray, set]:
    """Clustered embeddings (like images of one modality) with ``n_copies`` planted near
    copies; returns the centred unit rows and the planted pairs."""
    from harness.audit.duplicates import centred_unit

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    x = centres[rng.integers(0, 64, n)] + rng.normal(size=(n, dim)) * 1.5
    src = rng.choice(n, n_copies, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), n_copies, replace=False)
    x[dst] = x[src] + rng.normal(size=(n_copies, dim)) * 0.05
    planted = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist(), strict=True)}
    return centred_unit(x), planted


def _pairs(arr: np.ndarray) -> set:
    return {(int(i), int(j)) for i, j, _ in arr}


def near_duplicate_search(sizes: list[int], dim: int, threshold: float, ivf_sizes: list[int]):
    from harness.audit.duplicates import near_pairs_faiss, near_pairs_numpy

    print(f"\n== near-duplicate search: faiss vs brute-force numpy (dim {dim}, threshold "
          f"{threshold}) ==")  # fmt: skip
    print(f"{'n':>8} {'numpy s':>9} {'faiss flat s':>13} {'speed-up':>9} {'same pairs':>11} "
          f"{'found/planted':>14}")  # fmt: skip
    flat_times: dict[int, float] = {}
    for n in sizes:
        x, planted = embeddings(n, dim, max(10, n // 1000))
        t0 = time.perf_counter()
        ref = _pairs(near_pairs_numpy(x, threshold))
        t_np = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = _pairs(near_pairs_faiss(x, threshold))
        t_f = time.perf_counter() - t0
        flat_times[n] = t_f
        print(f"{n:>8} {t_np:>9.2f} {t_f:>13.2f} {t_np / t_f:>8.1f}x {str(got == ref):>11} "
              f"{len(got & planted)}/{len(planted):<9}")  # fmt: skip
    print(f"\n{'n':>8} {'faiss IVF s':>12} {'recall vs exact':>16}")
    ivf_times: dict[int, float] = {}
    for n in ivf_sizes:
        x, planted = embeddings(n, dim, max(10, n // 1000))
        t0 = time.perf_counter()
        got = _pairs(near_pairs_faiss(x, threshold, exact_limit=0))
        ivf_times[n] = time.perf_counter() - t0
        ref = _pairs(near_pairs_faiss(x, threshold)) if n <= 100_000 else planted
        recall = len(got & ref) / max(1, len(ref))
        print(f"{n:>8} {ivf_times[n]:>12.2f} {recall:>16.3f}")
    return flat_times, ivf_times


def projection(flat: dict[int, float], ivf: dict[int, float]) -> None:
    n = MIMIC_CXR_IMAGES
    print(f"\n== projected to MIMIC-CXR-JPG ({n:,} images) ==")
    if flat:
        m = max(flat)
        print(f"faiss exact (IndexFlatIP): {flat[m] * (n / m) ** 2 / 60:.1f} min "
              f"(n^2 from {m:,})")  # fmt: skip
    if ivf:
        m = max(ivf)
        print(f"faiss IVF (nprobe 16):     {ivf[m] * (n / m) ** 1.5 / 60:.1f} min "
              f"(n^1.5 from {m:,})")  # fmt: skip
    buf = os.urandom(64 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(buf).hexdigest()
    rate = len(buf) / (time.perf_counter() - t0)
    total = n * MIMIC_CXR_MEAN_BYTES
    print(f"sha256 of every JPEG:      {total / rate / 60:.1f} min at {rate / 1e6:.0f} MB/s "
          f"({total / 1e9:.0f} GB; disk reads not included)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 50000])
    ap.add_argument("--ivf-sizes", type=int, nargs="+", default=[50000, 100000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.97)
    ap.add_argument("--skip-cohort", action="store_true", help="only the search benchmark")
    args = ap.parse_args()
    import faiss

    print(f"load average {os.getloadavg()}, cpus {os.cpu_count()}, "
          f"faiss threads {faiss.omp_get_max_threads()}")  # fmt: skip
    if not args.skip_cohort:
        cohort_audit()
    flat, ivf = near_duplicate_search(args.sizes, args.dim, args.threshold, args.ivf_sizes)
    projection(flat, ivf)


if __name__ == "__main__":
    main()
