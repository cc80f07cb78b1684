"""Speed of `harness synth`: seconds and rows/s for the default size and a 20k-patient run.

Usage: python benchmarks/synth_speed.py [--quick] [--image-size PX]
(--quick: 200 and 2,000 patients instead of 2,000 and 20,000).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from harness import config
from harness.data.synthetic import generate


def run(n_patients: int, image_size: int, root: Path) -> None:
    out = root / f"synth-{n_patients}"
    s = generate(out, n_patients=n_patients, seed=0, image_size=image_size)
    rows = sum(s["rows"].values())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"{n_patients:>7,} patients  {s['n_stays']:>7,} stays  {rows:>11,} rows  "
        f"{s['n_images']:>7,} images ({image_size} px)  {s['seconds']:>7.1f} s  "
        f"{rows / s['seconds']:>10,.0f} rows/s  {s['n_images'] / s['seconds']:>6.0f} images/s  "
        f"{size / 2**20:>7.0f} MiB"
    )
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller runs")
    parser.add_argument("--image-size", type=int, default=config.DEFAULT_IMAGE_SIZE)
    args = parser.parse_args()
    sizes = [200, 2000] if args.quick else [config.DEFAULT_N_PATIENTS, 20000]
    print(f"cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            run(n, args.image_size, Path(tmp))


if __name__ == "__main__":
    main()
