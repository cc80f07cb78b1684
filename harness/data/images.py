"""Decode chest radiographs (JPEG, PNG, DICOM) into 8-bit PIL images ready for an encoder transform.

JPEGs are decoded at reduced size with Pillow's ``draft()`` when the encoder needs far fewer pixels
than the file holds; DICOM goes through pydicom's modality and VOI LUTs, MONOCHROME1 is inverted.
Unreadable inputs raise :class:`ImageReadError` with a machine-readable ``reason``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import InputError

log = logging.getLogger(__name__)

#: Reasons recorded in the feature store for images that could not be used.
MISSING_FILE = "missing_file"
DECODE_ERROR = "decode_error"

DICOM_SUFFIXES = {".dcm", ".dicom"}
#: Largest image (width x height) decoded; MIMIC-CXR radiographs hold about 9-15 M pixels.
#: ``HARNESS_MAX_IMAGE_PIXELS`` overrides it. Larger files are recorded as ``decode_error``
#: with the size in the reason, instead of allocating gigabytes.
MAX_IMAGE_PIXELS = 50_000_000
TOO_LARGE_FIX = "downscale the file, or raise HARNESS_MAX_IMAGE_PIXELS if it really is a radiograph"


def max_image_pixels() -> int:
    import os

    return int(os.environ.get("HARNESS_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))


def _too_large(path: Path, width: int, height: int) -> ImageReadError | None:
    cap = max_image_pixels()
    if width * height <= cap:
        return None
    return ImageReadError(
        f"image of {width} x {height} = {width * height / 1e6:.0f} M pixels exceeds the cap of "
        f"{cap / 1e6:.0f} M pixels",
        path=path,
        reason=DECODE_ERROR,
        fix=TOO_LARGE_FIX,
    )


class ImageReadError(InputError):
    """A missing or undecodable image; ``reason`` is ``missing_file`` or ``decode_error``."""

    def __init__(self, message: str, *, path: str | Path, reason: str, fix: str | None = None):
        super().__init__(message, path=path, fix=fix)
        self.reason = reason


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_to_array(path: str | Path) -> np.ndarray:
    """Read a DICOM radiograph as a uint8 (H, W) array in display orientation (bright = dense).

    Applies the modality LUT (rescale slope/intercept), the VOI LUT or window centre/width, inverts
    MONOCHROME1 so that dense tissue is bright, then scales the displayed range to 0..255.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: the first frame is the radiograph
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds, index=0)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3:  # colour DICOM (rare for CXR): luminance
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    lo, hi = float(np.min(arr)), float(np.max(arr))
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.round(scaled * 255.0).astype(np.uint8)


def load_image(path: str | Path, *, min_size: int | None = None) -> Image.Image:
    """Load a radiograph as an 8-bit grayscale (``L``) or ``RGB`` PIL image.

    Args:
        path: JPEG, PNG (8 or 16 bit) or DICOM file.
        min_size: the smallest side the caller needs; JPEGs are decoded with DCT scaling down to
            the smallest power-of-two reduction that still keeps both sides >= ``min_size``.

    Raises:
        ImageReadError: the file is missing (``missing_file``) or undecodable (``decode_error``).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(
            "image file not found",
            path=path,
            reason=MISSING_FILE,
            fix="check the cohort's cxr_root and that the image files were downloaded",
        )
    import warnings

    try:
        if _is_dicom(path):
            import pydicom

            head = pydicom.dcmread(str(path), stop_before_pixels=True)
            too_large = _too_large(path, int(head.get("Columns", 0)), int(head.get("Rows", 0)))
            if too_large:
                raise too_large
            return Image.fromarray(dicom_to_array(path), mode="L")
        with warnings.catch_warnings():
            # the cap below replaces Pillow's decompression-bomb warning with a clear record
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            too_large = _too_large(path, *img.size)
            if too_large:
                raise too_large
            if img.format == "JPEG" and min_size:
                img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (min_size, min_size))
            img.load()
            return _to_8bit(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"image exceeds the cap of {max_image_pixels() / 1e6:.0f} M pixels ({exc})",
            path=path,
            reason=DECODE_ERROR,
            fix=TOO_LARGE_FIX,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageReadError(
            f"cannot decode image ({type(exc).__name__}: {exc})",
            path=path,
            reason=DECODE_ERROR,
            fix="re-download the file; corrupt images are recorded and skipped",
        ) from exc
    except Exception as exc:  # pydicom raises a variety of types for broken pixel data
        raise ImageReadError(
            f"cannot decode image ({type(exc).__name__}: {exc})", path=path, reason=DECODE_ERROR
        ) from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale radiographs become 3 identical channels, as ImageNet/CLIP encoders expect."""
    return img if img.mode == "RGB" else img.convert("RGB")
