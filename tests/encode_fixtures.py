"""Tiny cohort-like inputs for the encode tests: JPEG radiographs on disk, stays, hourly rows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

VARIABLES = ["heart_rate", "sbp", "spo2"]


@dataclass
class TinyCohort:
    """Duck-types harness.cohort.Cohort for the encode stage."""

    name: str
    dataset: str
    path: Path
    stays: pd.DataFrame
    fingerprint: str
    cxr_root: Path | None
    hourly_frame: pd.DataFrame
    variables: list[str] = field(default_factory=lambda: list(VARIABLES))

    def hourly(self) -> pd.DataFrame:
        return self.hourly_frame


def write_jpeg(path: Path, seed: int, size: int = 40) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    arr = (xx * (1 + seed % 5) + yy * (seed % 3) + rng.normal(0, 20, (size, size))) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path, quality=90)


def make_cohort(root: Path, n_stays: int = 12, *, seed: int = 0, name: str = "base") -> TinyCohort:
    """Stays with a linked JPEG (two stays share one image, one stay has none)."""
    rng = np.random.default_rng(seed)
    cxr_root = root / "cxr"
    rows = []
    for i in range(n_stays):
        stay_id, subject = 30_000_000 + i, 10_000_000 + i
        dicom = f"d{seed:02d}{i:04d}" if i != 1 else None
        if i == 3:
            dicom = f"d{seed:02d}{2:04d}"  # shares stay 2's image
        rel = None
        if dicom is not None:
            rel = f"files/p{str(subject)[:2]}/p{subject}/s5{i:07d}/{dicom}.jpg"
            if not (cxr_root / rel).exists():
                write_jpeg(cxr_root / rel, seed * 1000 + i)
        rows.append(
            {
                "stay_id": stay_id,
                "subject_id": subject,
                "dicom_id": dicom,
                "cxr_path": rel,
                "has_cxr": dicom is not None,
                "fold": i % 5 + 1,
            }
        )
    stays = pd.DataFrame(rows)
    hourly_rows = []
    for sid in stays["stay_id"]:
        for var in VARIABLES:
            hours = rng.choice(48, size=int(rng.integers(0, 10)), replace=False)
            for h in hours:
                hourly_rows.append((sid, int(h), var, float(rng.normal(80, 10))))
    hourly = pd.DataFrame(hourly_rows, columns=["stay_id", "hour", "variable", "value"])
    hourly = hourly.astype({"stay_id": "int64", "hour": "int64", "value": "float32"})
    fp = hashlib.sha256(f"{name}-{seed}-{n_stays}".encode()).hexdigest()
    return TinyCohort(name, "tiny", root, stays, fp, cxr_root, hourly)
