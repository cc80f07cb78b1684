"""What a unit and an image cost here, what two Ray workers gain, and the full protocol projected.

Three measurements on a built dataset (run `harness demo` first), then a projection:

1. **Units, local vs Ray.** The same units of one submission (default `late_fusion`, quick
   settings, in-hospital mortality + phenotypes, both cohorts, folds 1-2: 8 units) are evaluated
   into two fresh results folders: with the local executor (one unit after another, every core
   to it) and with ``--executor ray`` on a local Ray instance with one CPU per core (one unit
   per core, one thread each). Printed: the time until the last unit file is written (the part
   the executor schedules: loading, training, predicting) and the whole evaluation (scoring,
   which stays in the driver, included), with the speed-ups, and whether the unit files hold
   the same predictions.
2. **Images.** Seconds per image of the default encoder here: decoding plus the forward pass,
   on a sample of the dataset's JPEGs, in this process (every core).
3. **Zoo units.** Mean seconds of a unit per reference entry, read from the unit files the cache
   holds (each records its training time), when a demo has run; else the measured submission's.

The projection prints its assumptions (cohort scale, epochs, GPU speed-up per unit, encoder
throughput per GPU, scheduling efficiency): the full reference protocol (18 entries x 4 tasks x
2 cohorts x 5 folds x 3 seeds = 2,160 units, MIMIC-CXR-JPG's ~377,000 images) on 1, 8 and 64
GPU workers. Every assumption is a flag, so a cluster's real figures can replace them.

    python benchmarks/scale_out.py
    python benchmarks/scale_out.py -s ehr_lstm --folds 1,2,3 --gpu-unit-speedup 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from evaluate_speed import _fresh_cache  # the benchmarks folder is on the path

from harness import config

REFERENCE_PROTOCOL = {"entries": 18, "tasks": 4, "cohorts": 2, "folds": 5, "seeds": 3}
MIMIC_CXR_IMAGES = 377_110


def _units(root: Path) -> dict[str, object]:
    from harness.evaluate.units import read_unit

    out = {}
    for path in sorted((root / "results").rglob("*.parquet")):
        frame, _ = read_unit(path)
        out[str(path.relative_to(root))] = frame.filter(like="prob_").to_numpy().tobytes()
    return out


def _evaluate(keep: Path, args, scheduler: str) -> tuple[float, float, dict, Path]:
    """(seconds to the last unit written, seconds in all, unit predictions, cache root)."""
    from harness.evaluate.run import EvalSettings, evaluate

    root = _fresh_cache(keep)
    os.environ["HARNESS_CACHE"] = str(root)
    settings = EvalSettings.quick(
        tasks=tuple(args.task),
        folds=tuple(int(k) for k in args.folds.split(",")),
        scheduler=scheduler,
        executor="local" if args.trusted else None,
    )
    started = time.time()
    outcome = evaluate(config.submissions_dir() / args.submission, settings)
    total = time.time() - started
    last = max(p.stat().st_mtime for p in (root / "results").rglob("*.parquet"))
    if outcome.units_run == 0:
        raise SystemExit("no unit trained: the fresh cache reused results")
    return last - started, total, _units(root), root


def _image_seconds(keep: Path, n: int) -> tuple[float, int]:
    """Seconds per image (decode + transform + forward, batches of 64) of the default encoder."""
    import torch

    from harness.cohort import load_cohort
    from harness.data.images import load_image, to_rgb
    from harness.encode.registry import get_encoder
    from harness.encode.run import cohort_images

    os.environ["HARNESS_CACHE"] = str(keep)
    paths = [p for p in cohort_images(load_cohort("base")).values() if p is not None][:n]
    encoder = get_encoder("default")
    encoder.module.eval()
    started = time.perf_counter()
    for i in range(0, len(paths), 64):
        x = torch.stack(
            [
                encoder.transform(to_rgb(load_image(p, min_size=encoder.input_size)))
                for p in paths[i : i + 64]
            ]
        )
        with torch.inference_mode():
            encoder.forward(x)
    return (time.perf_counter() - started) / max(1, len(paths)), len(paths)


def _zoo_unit_seconds(keep: Path, dataset: str) -> dict[str, float]:
    """Mean recorded training seconds of a unit, per entry with unit files in ``keep``."""
    import pyarrow.parquet as pq

    out: dict[str, list[float]] = {}
    for path in (keep / "results" / dataset).glob("*/predictions/*/*/*/*.parquet"):
        entry = path.relative_to(keep / "results" / dataset).parts[0]
        if "." in entry:  # protocol or dropout variants: the plain entries only
            continue
        meta = json.loads(pq.read_schema(path).metadata[b"harness_unit"])
        out.setdefault(entry, []).append(float(meta["train_seconds"]))
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-s", "--submission", default="late_fusion")
    ap.add_argument("-t", "--task", action="append", default=None)
    ap.add_argument("--folds", default="1,2")
    ap.add_argument("--trusted", action="store_true", help="in-process runner (no sandbox)")
    ap.add_argument("--images", type=int, default=256, help="JPEGs timed for the image cost")
    ap.add_argument("--dataset", default=config.DEFAULT_DATASET)
    ap.add_argument(
        "--scale",
        type=float,
        default=10.0,
        help="real-MIMIC cohort size / the default synthetic cohort's",
    )
    ap.add_argument(
        "--epoch-factor",
        type=float,
        default=2.0,
        help="full-protocol epochs per unit / quick (30 vs 15 at most)",
    )
    ap.add_argument(
        "--gpu-unit-speedup",
        type=float,
        default=3.0,
        help="a unit on one GPU worker vs one CPU core here (small heads: modest)",
    )
    ap.add_argument(
        "--gpu-images-per-s",
        type=float,
        default=1500.0,
        help="encode throughput of one GPU (decode-bound JPEG pipeline)",
    )
    ap.add_argument(
        "--efficiency",
        type=float,
        default=0.85,
        help="share of worker time spent in units (scheduling, stragglers)",
    )
    args = ap.parse_args()
    args.task = args.task or ["mortality_in_hospital", "phenotype"]
    keep = config.cache_root()
    cpus = os.cpu_count() or 1
    print(f"machine: {cpus} cores, load average {os.getloadavg()[0]:.2f}; cache {keep}")

    import ray

    here_units, here_total, here_pred, root_a = _evaluate(keep, args, "local")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        ray_units, ray_total, ray_pred, root_b = _evaluate(keep, args, "ray")
    finally:
        ray.shutdown()
    n_units = len(here_pred)
    same = here_pred == ray_pred
    print(
        f"\n1. {n_units} units of {args.submission} (quick, {', '.join(args.task)}, "
        f"folds {args.folds}, both cohorts), load average now {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':28}{'local':>10}{'ray x' + str(cpus):>10}{'speed-up':>10}")
    print(
        f"{'to the last unit written':28}{here_units:10.1f}{ray_units:10.1f}"
        f"{here_units / ray_units:10.2f}x"
    )
    print(
        f"{'whole evaluation':28}{here_total:10.1f}{ray_total:10.1f}{here_total / ray_total:10.2f}x"
    )
    print(f"unit predictions identical between the executors: {same}")
    unit_s = here_units / n_units
    print(f"one unit here, every core to it: {unit_s:.1f} s")
    for root in (root_a, root_b):
        shutil.rmtree(root, ignore_errors=True)
    os.environ["HARNESS_CACHE"] = str(keep)

    per_image, n_images = _image_seconds(keep, args.images)
    print(
        f"\n2. images: {per_image * 1000:.1f} ms per image here (decode + forward, default "
        f"encoder, {n_images} JPEGs, {cpus} cores): {1 / per_image:.0f} images/s"
    )

    zoo = _zoo_unit_seconds(keep, args.dataset)
    if zoo:
        mean_unit = sum(zoo.values()) / len(zoo)
        print(
            f"\n3. recorded training seconds per unit, {len(zoo)} entries in the cache: "
            f"mean {mean_unit:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in zoo.items()) + ")"
        )
    else:
        mean_unit = unit_s
        print(f"\n3. no zoo units in the cache: the measured unit ({unit_s:.1f} s) stands in")

    units = 1
    for v in REFERENCE_PROTOCOL.values():
        units *= v
    cpu_unit = mean_unit * args.scale * args.epoch_factor
    gpu_unit = cpu_unit / args.gpu_unit_speedup
    encode_cpu = MIMIC_CXR_IMAGES * per_image
    shape = " x ".join(f"{v} {k}" for k, v in REFERENCE_PROTOCOL.items())
    print("\nprojection: the full reference protocol on real-MIMIC cohort sizes")
    print(
        f"  assumptions: {units:,} units ({shape}); "
        f"a unit costs {args.scale:g}x the stays and {args.epoch_factor:g}x the epochs of the "
        f"quick units measured here: {cpu_unit:.0f} s on this machine's cores, "
        f"{gpu_unit:.0f} s on a GPU worker ({args.gpu_unit_speedup:g}x); "
        f"{MIMIC_CXR_IMAGES:,} images at {1 / per_image:.0f} images/s here or "
        f"{args.gpu_images_per_s:g} per GPU; {args.efficiency:.0%} of worker time in units"
    )
    print(f"  {'workers':>10}{'encode':>14}{'evaluate':>14}{'total':>14}")
    print(
        f"  {'this CPU':>10}{encode_cpu / 3600:13.1f}h{units * cpu_unit / 3600:13.1f}h"
        f"{(encode_cpu + units * cpu_unit) / 3600:13.1f}h"
    )
    for n in (1, 8, 64):
        enc = MIMIC_CXR_IMAGES / (args.gpu_images_per_s * n)
        ev = units * gpu_unit / (n * args.efficiency)
        print(
            f"  {str(n) + ' GPU':>10}{enc / 3600:13.2f}h{ev / 3600:13.2f}h"
            f"{(enc + ev) / 3600:13.2f}h"
        )


if __name__ == "__main__":
    main()
