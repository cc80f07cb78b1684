"""Image decoding: DICOM photometric handling and windowing, 16-bit PNG, reduced-size JPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data.images import DECODE_ERROR, MISSING_FILE, ImageReadError, load_image, to_rgb


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str, **extra: object) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture()
def ramp() -> np.ndarray:
    # 12-bit ramp: left column 0, right column 4000
    return np.tile(np.linspace(0, 4000, 32).round().astype(np.uint16), (24, 1))


def test_dicom_monochrome1_is_inverted(tmp_path: Path, ramp: np.ndarray) -> None:
    p1, p2 = tmp_path / "m1.dcm", tmp_path / "m2.dcm"
    _write_dicom(p1, ramp, "MONOCHROME1")
    _write_dicom(p2, ramp, "MONOCHROME2")
    a1 = np.asarray(load_image(p1))
    a2 = np.asarray(load_image(p2))
    assert a1.shape == a2.shape == (24, 32)
    # MONOCHROME2: high stored value = bright; MONOCHROME1: high stored value = dark
    assert a2[0, 0] == 0 and a2[0, -1] == 255
    assert a1[0, 0] == 255 and a1[0, -1] == 0
    np.testing.assert_array_equal(a1.astype(int), 255 - a2.astype(int))


def test_dicom_window_clips_outside_values(tmp_path: Path, ramp: np.ndarray) -> None:
    p = tmp_path / "win.dcm"
    # window 1000..3000: everything below is black, everything above white
    _write_dicom(p, ramp, "MONOCHROME2", WindowCenter=2000, WindowWidth=2000)
    a = np.asarray(load_image(p))[0]
    raw = ramp[0]
    assert (a[raw <= 1000] == 0).all()
    assert (a[raw >= 3000] == 255).all()
    inside = (raw > 1100) & (raw < 2900)
    assert ((a[inside] > 0) & (a[inside] < 255)).all()
    assert np.all(np.diff(a.astype(int)) >= 0)


def test_sixteen_bit_png_and_gray_to_rgb(tmp_path: Path) -> None:
    arr = np.tile(np.arange(0, 65536, 2048, dtype=np.uint16), (4, 1))
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    img = load_image(p)
    assert img.mode == "L"
    a = np.asarray(img)
    assert a[0, 0] == 0 and a[0, -1] == 255
    rgb = np.asarray(to_rgb(img))
    assert rgb.shape == (4, 32, 3)
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path: Path) -> None:
    p = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 2000), np.uint8)).save(p)
    small = load_image(p, min_size=224)
    # DCT scaling by 1/2, 1/4, 1/8: the smallest that keeps both sides >= 224 is 1/4
    assert small.size == (500, 400)
    assert load_image(p).size == (2000, 1600)


def test_missing_and_corrupt_files_have_reasons(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as missing:
        load_image(tmp_path / "nope.jpg")
    assert missing.value.reason == MISSING_FILE and "nope.jpg" in str(missing.value)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageReadError) as corrupt:
        load_image(bad)
    assert corrupt.value.reason == DECODE_ERROR and "bad.jpg" in str(corrupt.value)
    trunc = tmp_path / "trunc.jpg"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ok.jpg")
    trunc.write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    with pytest.raises(ImageReadError) as truncated:
        load_image(trunc)
    assert truncated.value.reason == DECODE_ERROR


def test_huge_images_are_refused_with_a_clear_record(tmp_path, monkeypatch, recwarn):
    """A 12000 x 12000 JPEG is not decoded (1.1 GB as RGB): one record, no Pillow warning."""
    path = tmp_path / "huge.jpg"
    Image.new("L", (12000, 12000), 128).save(path, quality=10)
    with pytest.raises(ImageReadError, match=r"12000 x 12000 = 144 M pixels exceeds the cap") as e:
        load_image(path, min_size=224)
    assert e.value.reason == DECODE_ERROR
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setenv("HARNESS_MAX_IMAGE_PIXELS", str(200_000_000))
    assert load_image(path, min_size=224).size[0] >= 224  # the cap is the only reason
