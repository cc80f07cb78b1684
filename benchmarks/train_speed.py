"""Seconds per epoch of `late_fusion` on cached CXR embeddings vs end to end through the backbone.

Both runs use the same stays, folds, seed and model code; only the CXR input differs (the cached
embedding vs the trainable image backbone on preprocessed pixels), which is the cost the
reference study pays on every run. Images are generated (a planted-signal synthetic set), so the
script needs no dataset.

    python benchmarks/train_speed.py --n 400 --epochs 2 --backbone default
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

import torch

from harness.models.data import FeatureSet, split_indices
from harness.models.pixels import attach_pixels, synthetic_images
from harness.models.submission import load_submission
from harness.models.train import resolve_device, train_model


def seconds_per_epoch(sub, fs, epochs: int, device: str) -> float:
    records: list[dict] = []
    train_model(sub, fs, None, 1, 0, device=device, max_epochs=epochs, log=records.append)
    return sum(r["seconds"] for r in records) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="stays (about 60%% train)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backbone", default="default", help="encoder name (registry)")
    parser.add_argument("--image-size", type=int, default=256, help="generated image side")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    fs = FeatureSet.synthetic(args.n, seed=0, kind="binary")
    t0 = time.perf_counter()
    fs_pixels = attach_pixels(fs, synthetic_images(fs, size=args.image_size), args.backbone)
    preprocess = time.perf_counter() - t0
    sub = load_submission("submissions/late_fusion")
    # Patience larger than the epoch budget, so both runs train exactly --epochs epochs.
    cached = seconds_per_epoch(sub, fs, args.epochs, device)
    e2e = seconds_per_epoch(sub.with_pixels(args.backbone), fs_pixels, args.epochs, device)

    n_train = len(split_indices(fs.fold, 1)[0])
    print(
        f"late_fusion, {args.n} stays ({n_train} train, {int(fs.has_cxr.sum())} with a CXR), "
        f"{args.epochs} epoch(s), device {device}, {torch.get_num_threads()} CPU thread(s), "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'track':<34}{'s/epoch':>10}")
    print(f"{'cached embeddings (feature track)':<34}{cached:>10.3f}")
    print(f"{'end to end, backbone ' + args.backbone:<34}{e2e:>10.3f}")
    print(
        f"ratio end-to-end / cached: {e2e / cached:.0f}x "
        f"(one-time image preprocessing: {preprocess:.1f} s, not included)"
    )


if __name__ == "__main__":
    main()
