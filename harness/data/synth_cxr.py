"""Synthetic chest radiographs: vectorised numpy rendering of anatomy and findings, JPEG encoding.

An image is drawn on a coordinate grid in [-1, 1]^2 (image left = patient's right) from a row of
finding intensities in [0, 1]. Rendering happens at up to ``WORK_SIZE`` pixels and is upsampled
for larger outputs, so full-size (2500 px) images cost little more than small ones. Each image
has its own seeded generator, so the output does not depend on how work is split across processes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from harness.progress import Bar

#: Largest resolution rendered directly; bigger images are upsampled from it.
WORK_SIZE = 512
JPEG_QUALITY = 90
#: Finding intensities a render row carries, in this order.
FINDINGS = (
    "cardio",  # heart width
    "mediastinum",  # upper mediastinal width
    "opacity",  # diffuse bilateral perihilar haze
    "consolidation",  # focal dense blob
    "effusion",  # basal fluid with meniscus
    "pneumothorax",  # lucent lateral rim without markings
    "nodule",  # round well-defined lesion
    "devices",  # tubes and lines
)


def _noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a coarse random grid upsampled bilinearly to n x n."""
    from PIL import Image

    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((n, n), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 1.5


def _ellipse(x, y, cx, cy, rx, ry, edge):
    r = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return np.clip((1.0 - r) / edge, 0.0, 1.0)


def _segment(x, y, p0, p1, width):
    """Soft mask of a line segment from p0 to p1 of the given half-width."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d = np.sqrt((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2)
    return np.clip(1.0 - d / width, 0.0, 1.0)


#: Number of cached anatomy variants (pose, size, lung texture) per resolution and view.
N_TEMPLATES = 12
_TEMPLATES: dict[tuple[int, str, int], dict[str, np.ndarray]] = {}
HEART_RX, HEART_C, MED_W = 0.27, (0.10, 0.24), 0.09


def _template(n: int, kind: str, k: int) -> dict[str, np.ndarray]:
    """Anatomy without findings for one pose (cached: it only depends on n, kind and k)."""
    key = (n, kind, k)
    if key in _TEMPLATES:
        return _TEMPLATES[key]
    rng = np.random.default_rng([n, 303, ("AP", "PA", "LATERAL").index(kind), k])
    lin = ((np.arange(n, dtype=np.float32) + 0.5) / n) * 2.0 - 1.0
    scale = np.float32(rng.uniform(0.9, 1.04))
    dx, dy = (np.float32(v) for v in rng.uniform(-0.05, 0.05, 2))
    x = ((lin - dx) / scale)[None, :]
    y = ((lin - dy) / scale)[:, None]
    marks = _noise(rng, n, 40) * 0.7 + _noise(rng, n, 12) * 0.3
    t = {"x": x, "y": y, "marks": marks}
    if kind == "LATERAL":
        t.update(_lateral_base(x, y, marks))
    else:
        t.update(_frontal_base(x, y, marks, ap=kind == "AP"))
    _TEMPLATES[key] = t
    return t


def render(f: dict[str, float], view: str, size: int, seed: Sequence[int]) -> np.ndarray:
    """Render one radiograph with the given finding intensities as a size x size uint8 array."""
    rng = np.random.default_rng(list(seed))
    n = min(size, WORK_SIZE)
    kind = "LATERAL" if view in ("LATERAL", "LL") else ("PA" if view == "PA" else "AP")
    t = _template(n, kind, int(rng.integers(N_TEMPLATES)))
    img = t["base"].copy()
    if kind == "LATERAL":
        _lateral_findings(img, t, f)
    else:
        _frontal_findings(img, t, f, rng)
    gain = rng.uniform(0.9, 1.1)
    img = np.clip(img * gain + rng.uniform(-0.03, 0.03), 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    img += 0.012 * rng.standard_normal(img.shape, dtype=np.float32)
    out = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if size != n:
        from PIL import Image

        out = np.asarray(
            Image.fromarray(out, mode="L").resize((size, size), Image.Resampling.BICUBIC)
        )
    return out


def _frontal_base(x, y, marks, *, ap: bool) -> dict[str, np.ndarray]:
    ax = np.abs(x)
    img = np.full(np.broadcast_shapes(x.shape, y.shape), 0.06, dtype=np.float32)
    body = _ellipse(x, y, 0.0, 0.15, 0.97, 1.3, 0.12)
    img += 0.36 * body
    # Diaphragm domes: the patient's right (image left) sits a little higher.
    dome = 0.52 - 0.10 * np.clip(1 - ((ax - 0.42) / 0.34) ** 2, 0, 1) - 0.04 * (x < 0)
    above = np.clip((dome - y) / 0.03, 0.0, 1.0)
    lungs = {side: _ellipse(x, y, side * 0.42, -0.06, 0.33, 0.66, 0.4) * above for side in (-1, 1)}
    rx = HEART_RX * (1.08 if ap else 1.0)
    heart = _ellipse(x, y, HEART_C[0], HEART_C[1], rx, 0.24, 0.3)
    med = np.clip((MED_W - np.abs(x - 0.01)) / 0.03, 0.0, 1.0) * (y > -0.95)
    lung_all = np.maximum(lungs[-1], lungs[1])
    lung = lung_all * (1.0 - heart) * (1.0 - med)
    img -= 0.27 * lung
    img += 0.05 * marks * lung
    phase = 6.0 * y - 1.1 * ax**1.6
    ribs = np.clip(np.sin(2.0 * np.pi * phase) - 0.45, 0.0, None) * 1.8
    img += 0.08 * ribs * body * (ax > 0.07) * (y < 0.55)
    for side in (-1, 1):
        img += 0.18 * _segment(x, y, (side * 0.08, -0.72), (side * 0.62, -0.80), 0.035)
    img += 0.30 * med + 0.26 * heart * (1.0 - med)
    img += 0.22 * np.clip((y - dome) / 0.05, 0.0, 1.0) * body
    img += 0.55 * ((x > 0.78) & (x < 0.86) & (y > -0.92) & (y < -0.82))  # side marker
    devices = (
        _segment(x, y, (0.01, -1.0), (0.01, -0.42), 0.012)  # endotracheal tube
        + _segment(x, y, (0.04, -1.0), (0.07, 0.80), 0.010)  # gastric tube
        + _segment(x, y, (-0.58, -0.80), (-0.06, -0.28), 0.010)  # central line
        + _ellipse(x, y, -0.55, -0.30, 0.03, 0.03, 0.5)  # ECG leads
        + _ellipse(x, y, 0.62, 0.20, 0.03, 0.03, 0.5)
    )
    return {
        "base": img,
        "lung_l": lungs[-1],
        "lung_r": lungs[1],
        "lung": lung_all,
        "heart": heart,
        "med": med,
        "devices": np.clip(devices, 0.0, 1.0),
        "heart_rx": np.float32(rx),
    }


def _frontal_findings(img, t, f, rng) -> None:
    x, y, marks, lung_all = t["x"], t["y"], t["marks"], t["lung"]
    lungs = {-1: t["lung_l"], 1: t["lung_r"]}
    if f["cardio"] > 0.02:
        rx = float(t["heart_rx"]) * (1.0 + 0.7 * f["cardio"])
        big = _ellipse(x, y, HEART_C[0] + 0.3 * (rx - HEART_RX), HEART_C[1], rx, 0.25, 0.3)
        extra = np.clip(big - t["heart"], 0.0, 1.0) * (1.0 - t["med"])
        img += extra * (0.26 + 0.27 * lung_all)
    if f["mediastinum"] > 0.02:
        w = MED_W + 0.14 * f["mediastinum"] * np.clip((0.05 - y) / 0.3, 0, 1)
        wide = np.clip((w - np.abs(x - 0.01)) / 0.03, 0.0, 1.0) * (y > -0.95)
        extra = np.clip(wide - t["med"], 0.0, 1.0)
        img += extra * (0.30 + 0.27 * lung_all)
    if f["pneumothorax"] > 0.02:
        side = 1 if rng.random() < 0.5 else -1
        edge = 0.33 * (1.0 - 1.3 * (0.15 + 0.5 * f["pneumothorax"]))
        d = side * (x - side * 0.42) - edge
        rim = lungs[side] * np.clip(d / 0.02, 0.0, 1.0)
        line = lungs[side] * np.clip(1.0 - np.abs(d) / 0.01, 0.0, 1.0)
        img -= rim * (0.07 + 0.05 * marks) - 0.15 * line
    if f["effusion"] > 0.02:
        sides = (-1, 1) if f["effusion"] > 0.9 else ((1 if rng.random() < 0.5 else -1),)
        for side in sides:
            level = 0.50 - 0.62 * f["effusion"] - 0.12 * (side * (x - side * 0.42)) / 0.33
            img += 0.34 * lungs[side] * np.clip((y - level) / 0.03, 0.0, 1.0)
    if f["opacity"] > 0.02:
        haze = 0.55 + 0.45 * np.exp(-((np.abs(x) - 0.22) ** 2) / 0.05)
        img += 0.32 * f["opacity"] * haze * lung_all * (0.85 + 0.15 * marks)
    if f["consolidation"] > 0.02:
        side = 1 if rng.random() < 0.5 else -1
        cx, cy = side * 0.42 + rng.uniform(-0.08, 0.08), rng.uniform(-0.35, 0.30)
        r = 0.10 + 0.10 * f["consolidation"]
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += 0.42 * f["consolidation"] * blob * lung_all * (0.8 + 0.2 * marks)
    if f["nodule"] > 0.02:
        side = 1 if rng.random() < 0.5 else -1
        cx, cy = side * rng.uniform(0.30, 0.52), rng.uniform(-0.45, -0.10)
        r = 0.035 + 0.07 * f["nodule"]
        disk = np.clip((r - np.sqrt((x - cx) ** 2 + (y - cy) ** 2)) / 0.012, 0.0, 1.0)
        img += 0.34 * min(1.0, 1.5 * f["nodule"]) * disk
    if f["devices"] > 0.5:
        img += 0.5 * t["devices"]


def _lateral_base(x, y, marks) -> dict[str, np.ndarray]:
    img = np.full(np.broadcast_shapes(x.shape, y.shape), 0.06, dtype=np.float32)
    body = _ellipse(x, y, 0.0, 0.12, 0.88, 1.3, 0.12)
    img += 0.36 * body
    dome = 0.45 + 0.12 * x
    lung = _ellipse(x, y, 0.02, -0.05, 0.55, 0.66, 0.3) * np.clip((dome - y) / 0.03, 0, 1)
    heart = _ellipse(x, y, -0.28, 0.28, 0.30, 0.24, 0.25)
    img -= 0.25 * lung * (1.0 - 0.6 * heart)
    img += 0.04 * marks * lung
    img += 0.34 * np.clip(1.0 - np.abs(x - 0.66) / 0.09, 0, 1) * (y > -0.95)  # spine
    img += 0.2 * heart + 0.22 * np.clip((y - dome) / 0.05, 0, 1) * body
    devices = _segment(x, y, (-0.25, -1.0), (-0.15, -0.40), 0.012)
    return {"base": img, "lung": lung, "heart": heart, "devices": devices}


def _lateral_findings(img, t, f) -> None:
    x, y, lung = t["x"], t["y"], t["lung"]
    if f["cardio"] > 0.02:
        big = _ellipse(x, y, -0.28, 0.28, 0.30 * (1.0 + 0.4 * f["cardio"]), 0.24, 0.25)
        img += 0.2 * np.clip(big - t["heart"], 0.0, 1.0)
    if f["effusion"] > 0.02:
        img += 0.3 * lung * (x > 0.15) * np.clip((y - (0.44 - 0.5 * f["effusion"])) / 0.03, 0, 1)
    if f["opacity"] > 0.02:
        img += 0.25 * f["opacity"] * lung * (0.85 + 0.15 * t["marks"])
    if f["devices"] > 0.5:
        img += 0.45 * t["devices"]


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """Baseline JPEG bytes of an 8-bit grayscale image (deterministic for a given libjpeg)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _render_batch(args: tuple) -> int:
    paths, findings, views, size, seeds = args
    for path, frow, view, seed in zip(paths, findings, views, seeds, strict=True):
        f = dict(zip(FINDINGS, (float(v) for v in frow), strict=True))
        data = encode_jpeg(render(f, view, size, seed))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return len(paths)


def write_images(
    paths: list[Path],
    findings: np.ndarray,
    views: list[str],
    size: int,
    seed: int,
    *,
    workers: int | None = None,
    progress: Bar | None = None,
) -> None:
    """Render and write every image; ``findings`` is n x len(FINDINGS).

    Image i uses the generator seeded by (seed, i), so the bytes do not depend on ``workers``.
    ``progress`` counts the images written.
    """
    n = len(paths)
    seeds = [(seed, 202, i) for i in range(n)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n >= 400 else 1
    step = max(1, min(256, -(-n // max(workers * 4, 1))))
    batches = [
        ([str(p) for p in paths[a : a + step]], findings[a : a + step], views[a : a + step],
         size, seeds[a : a + step])
        for a in range(0, n, step)
    ]  # fmt: skip
    if workers <= 1:
        for b in batches:
            _render_batch(b)
            if progress is not None:
                progress.advance(len(b[0]))
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for b, _ in zip(batches, pool.map(_render_batch, batches), strict=True):
            if progress is not None:
                progress.advance(len(b[0]))
