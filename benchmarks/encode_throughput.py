"""Encode-stage throughput: pure forward vs the full pipeline, and the warm-cache re-run.

Prints, on one device in one run: model forward images/s on ready tensors, full pipeline images/s
(JPEG decode + preprocess + forward + Zarr write) and their ratio, for 256-px and full-size
(~2500 px) radiograph-like JPEGs, then the time of a re-run over a store of ``--warm-rows`` images
that are all already encoded (no forward pass).

    python benchmarks/encode_throughput.py --device cpu --n-images 128
    python benchmarks/encode_throughput.py --device cuda --n-images 2048 --batch-size 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_jpegs(folder: Path, n: int, size: tuple[int, int], n_unique: int = 16) -> dict[str, Path]:
    """Radiograph-like 8-bit grayscale JPEGs (smooth anatomy-ish shading plus noise)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    uniques = []
    for k in range(min(n, n_unique)):
        cx, cy = w * (0.3 + 0.4 * rng.random()), h * (0.4 + 0.2 * rng.random())
        body = np.exp(-(((xx - cx) / (0.35 * w)) ** 2 + ((yy - cy) / (0.45 * h)) ** 2))
        arr = 40 + 170 * body + rng.normal(0, 6, (h, w))
        path = folder / f"u{k}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").save(path, quality=90)
        uniques.append(path)
    out = {}
    for i in range(n):
        path = folder / f"img{i:06d}.jpg"
        shutil.copyfile(uniques[i % len(uniques)], path)
        out[f"bench{size[0]}_{i:06d}"] = path
    return out


def pure_forward(encoder, device: str, n: int, batch_size: int) -> float:
    import torch

    size = encoder.preprocess_config["size"]
    cuda = device.startswith("cuda")
    x = torch.randn(batch_size, 3, *size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
        encoder.module.to(memory_format=torch.channels_last)
    n_batches = max(1, n // batch_size)

    def run(k: int) -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            for _ in range(k):
                encoder.forward(x).float().cpu()

    run(2)  # warm-up (cudnn autotune, allocator)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(n_batches)
    if cuda:
        torch.cuda.synchronize()
    return n_batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    parser.add_argument("--n-images", type=int, default=128, help="images per pipeline run")
    parser.add_argument("--encoder", default="default")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument("--warm-rows", type=int, default=10_000, help="rows in the warm re-run")
    parser.add_argument("--full-size", type=int, nargs=2, default=[2500, 3000], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    os.environ["HARNESS_CACHE"] = str(work / "cache")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from harness.encode.registry import encoder_key, get_encoder
    from harness.encode.run import default_num_workers, encode_images, resolve_device
    from harness.store import CXRStoreWriter, read_cxr

    device = resolve_device(args.device)
    workers = default_num_workers() if args.workers is None else args.workers
    encoder = get_encoder(args.encoder).to(device)
    key = encoder_key(encoder)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    print(
        f"device={device} ({name}) encoder={args.encoder} dim={encoder.dim} "
        f"input={encoder.preprocess_config['size']} batch={args.batch_size} workers={workers} "
        f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()}"
    )
    try:
        fwd = pure_forward(
            encoder, device, max(args.n_images, 4 * args.batch_size), args.batch_size
        )
        print(f"pure forward: {fwd:,.1f} img/s")
        for label, size in (("256px", (256, 256)), ("full-size", tuple(args.full_size))):
            images = make_jpegs(work / label, args.n_images, size)
            t0 = time.perf_counter()
            stats = encode_images(
                images,
                encoder,
                key=f"{key}-bench-{label}",
                batch_size=args.batch_size,
                num_workers=workers,
                device=device,
            )
            rate = stats.n_encoded / (time.perf_counter() - t0)
            print(
                f"pipeline {label:9s} ({size[0]}x{size[1]} JPEG, n={stats.n_encoded}): "
                f"{rate:,.1f} img/s = {rate / fwd:.0%} of pure forward"
            )

        # Warm re-run: a store with every row committed; the re-run must do no forward pass.
        n = args.warm_rows
        ids = [f"warm_{i:07d}" for i in range(n)]
        attrs = {"encoder": encoder.name, "weights_digest": encoder.weights_digest}
        with CXRStoreWriter(f"{key}-warm", dim=encoder.dim, attrs=attrs) as store:
            store.plan(ids)
            rng = np.random.default_rng(0)
            c = store.chunk_rows
            for k, chunk_ids in store.pending_chunks():
                status = ["ok" if d else "" for d in chunk_ids]
                store.write_chunk(k, rng.random((c, encoder.dim), np.float32), status, [""] * c)
        t0 = time.perf_counter()
        stats = encode_images(
            dict.fromkeys(ids), encoder, key=f"{key}-warm", num_workers=workers, device=device
        )
        t_rerun = time.perf_counter() - t0
        assert stats.forward_calls == 0 and stats.n_reused == n
        t0 = time.perf_counter()
        feats = read_cxr(f"{key}-warm", ids)
        t_read = time.perf_counter() - t0
        assert feats.ok.all()
        print(
            f"warm re-run over {n:,} images: {t_rerun:.2f}s (0 forward passes); "
            f"read_cxr of all rows: {t_read:.2f}s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
