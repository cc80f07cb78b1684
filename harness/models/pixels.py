"""The end-to-end track: preprocessed CXR pixels on a `FeatureSet` and a trainable backbone.

Images are preprocessed once with the encoder's own transform and kept in memory as float16;
the backbone comes from the encoder registry (`harness.encode.registry.get_encoder`) and is
fine-tuned with the rest of the model by the ordinary training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.models.data import FeatureSet

if TYPE_CHECKING:  # pragma: no cover
    from harness.cohort.load import Cohort
    from harness.encode.encoders import Encoder


class Backbone(nn.Module):
    """A registry encoder as a trainable sub-module: (B, 3, H, W) -> (B, dim)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.net = encoder.module
        self._forward_fn = encoder.forward_fn
        self.dim = int(encoder.dim)
        self.name = encoder.name
        self.net.requires_grad_(True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fn = self._forward_fn or self.net
        out = fn(pixels)
        return out.flatten(1) if out.dim() > 2 else out


def build_backbone(name: str) -> tuple[Backbone, int]:
    """The trainable backbone for encoder ``name`` and its output dimension."""
    from harness.encode.registry import get_encoder

    backbone = Backbone(get_encoder(name))
    return backbone, backbone.dim


def preprocess_images(images: Sequence[Any], transform: Any) -> torch.Tensor:
    """Apply ``transform`` (PIL -> (3, H, W)) to each image; ``None`` entries become zeros."""
    first = next((img for img in images if img is not None), None)
    if first is None:
        raise ValueError("no images to preprocess")
    shape = tuple(transform(first).shape)
    out = torch.zeros((len(images), *shape), dtype=torch.float16)
    for i, img in enumerate(images):
        if img is not None:
            out[i] = transform(img).to(torch.float16)
    return out


def attach_pixels(fs: FeatureSet, images: Sequence[Any], encoder: str | Encoder) -> FeatureSet:
    """A copy of ``fs`` carrying preprocessed images (one per stay, ``None`` where missing).

    ``has_cxr`` becomes false where no image is given, so both tracks see the same missingness.
    """
    if len(images) != len(fs):
        raise ValueError(f"{len(images)} images for {len(fs)} stays")
    if isinstance(encoder, str):
        from harness.encode.registry import get_encoder

        encoder = get_encoder(encoder)
    pixels = preprocess_images(images, encoder.transform)
    present = np.array([img is not None for img in images])
    return fs.replace(
        cxr_pixels=pixels,
        has_cxr=fs.has_cxr & present,
        provenance={**fs.provenance, "pixels_encoder": encoder.name},
    )


def synthetic_images(fs: FeatureSet, *, size: int = 64, seed: int = 0) -> list[Any]:
    """PIL images whose brightness pattern follows each stay's CXR embedding (None if missing).

    Gives the end-to-end track a planted signal on `FeatureSet.synthetic` data: the first
    embedding component sets the brightness of a central blob.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blob = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.05)
    signal = fs.cxr[:, 0] if fs.cxr.shape[1] else np.zeros(len(fs))
    signal = (signal - signal.mean()) / (signal.std() + 1e-6)
    images: list[Any] = []
    for i in range(len(fs)):
        if not fs.has_cxr[i]:
            images.append(None)
            continue
        arr = 0.4 + 0.15 * signal[i] * blob + 0.05 * rng.standard_normal((size, size))
        gray = (np.clip(arr, 0, 1) * 255).astype(np.uint8)
        images.append(Image.fromarray(gray, mode="L").convert("RGB"))
    return images


def attach_cohort_pixels(fs: FeatureSet, cohort: Cohort, encoder: str | Encoder) -> FeatureSet:
    """Load each stay's linked image from the cohort's image root and attach it preprocessed.

    Unreadable or missing files count as a missing CXR (``has_cxr`` false), with a warning.
    """
    import logging

    from harness.data.images import load_image, to_rgb
    from harness.encode.run import cohort_images

    if fs.dicom_id is None:
        raise ValueError("this FeatureSet has no dicom_id column (build it with load_feature_set)")
    paths = cohort_images(cohort)
    images: list[Any] = []
    failed = 0
    for has, dicom in zip(fs.has_cxr, fs.dicom_id, strict=True):
        path = paths.get(str(dicom)) if has and dicom is not None else None
        if path is None:
            images.append(None)
            continue
        try:
            images.append(to_rgb(load_image(path)))
        except Exception:  # recorded as missing, like the encode stage does
            failed += 1
            images.append(None)
    if failed:
        logging.getLogger(__name__).warning("%d linked images could not be read", failed)
    return attach_pixels(fs, images, encoder)
