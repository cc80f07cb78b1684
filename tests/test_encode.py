"""The encode stage: encoder names, idempotence, failures as data, kill-and-resume, locking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from encode_fixtures import make_cohort

from harness.encode.encoders import build_test_tiny
from harness.encode.registry import encoder_key, encoder_key_for, get_encoder, parse_encoder_name
from harness.encode.run import encode_cohort
from harness.errors import InputError, UnknownNameError, UsageError
from harness.store import cxr_store_path, read_cxr

torch.set_num_threads(1)
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(root))
    return root


def _ids(cohort) -> list[str]:
    return [d for d in cohort.stays["dicom_id"] if isinstance(d, str)]


def _run(cohort, encoder=None, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("chunk_rows", 4)
    kw.setdefault("batch_size", 3)
    return encode_cohort(cohort, encoder or get_encoder("test_tiny"), **kw)


def test_parse_names_and_unknown_names() -> None:
    spec = parse_encoder_name("openclip:ViT-B-16@hf-hub:org/model")
    assert (spec.family, spec.model, spec.weights) == ("openclip", "ViT-B-16", "hf-hub:org/model")
    assert parse_encoder_name("timm:resnet50@/w/r50.pth").weights == "/w/r50.pth"
    assert parse_encoder_name("default").model is None
    with pytest.raises(UnknownNameError, match="Did you mean 'openclip'"):
        parse_encoder_name("opencip:ViT-B-16")
    with pytest.raises(UsageError, match="needs a model name"):
        parse_encoder_name("timm")
    with pytest.raises(UsageError, match="takes no model"):
        parse_encoder_name("default:resnet50")


def test_unloadable_weights_say_where_they_were_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError, match="weights file not found") as err:
        get_encoder(f"timm:resnet18@{tmp_path / 'missing.pth'}")
    assert "missing.pth" in str(err.value)
    import harness.encode.encoders as enc

    monkeypatch.setattr(enc, "DEFAULT_WEIGHTS_PACKAGE", "no-such-weights-package")
    with pytest.raises(InputError, match="looked in.*no-such-weights-package"):
        get_encoder("default")


def test_second_run_does_no_forward_pass(cache: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, 12, seed=1)
    first = _run(cohort)
    assert first.n_images == 10  # 12 stays, one without image, two sharing one
    # chunks of 4 rows hold 4, 4 and 2 images; batches of 3 never span two chunks: 2 + 2 + 1
    assert first.n_encoded == 10 and first.n_reused == 0 and first.forward_calls == 5
    second = _run(cohort)
    assert second.forward_calls == 0 and second.n_encoded == 0 and second.n_reused == 10
    assert second.cxr_key == first.cxr_key and second.ehr_reused
    # what is stored equals a direct forward pass of the same encoder
    ids = list(cohort.stays["dicom_id"])
    feats = read_cxr(first.cxr_key, ids)
    assert feats.status[1] == "no_image" and not feats.ok[1]
    np.testing.assert_array_equal(feats.embedding[2], feats.embedding[3])  # shared image
    enc = build_test_tiny()
    from harness.data.images import load_image, to_rgb

    path = cohort.cxr_root / cohort.stays["cxr_path"][5]
    x = enc.transform(to_rgb(load_image(path, min_size=enc.input_size)))[None]
    with torch.no_grad():
        direct = enc.forward(x).numpy()[0]
    np.testing.assert_allclose(feats.embedding[5], direct, rtol=1e-5, atol=1e-6)


def test_missing_and_corrupt_images_are_recorded(cache: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, 8, seed=2)
    (cohort.cxr_root / cohort.stays["cxr_path"][4]).unlink()
    (cohort.cxr_root / cohort.stays["cxr_path"][6]).write_bytes(b"not an image at all")
    report = _run(cohort)
    assert report.n_failed == 2
    assert report.failures_by_reason == {"missing_file": 1, "decode_error": 1}
    feats = read_cxr(report.cxr_key, list(cohort.stays["dicom_id"]) + ["unknown-id"])
    assert list(feats.status[[4, 6, 8]]) == ["missing_file", "decode_error", "not_encoded"]
    assert feats.ok.sum() == 5 and not feats.embedding[[4, 6, 8]].any()
    # failures are final: a re-run does not retry them unless the store key changes
    assert _run(cohort).forward_calls == 0


def test_changed_preprocessing_gets_a_new_key_and_fresh_vectors(
    cache: Path, tmp_path: Path
) -> None:
    cohort = make_cohort(tmp_path, 6, seed=3)
    base, other = build_test_tiny(size=32), build_test_tiny(size=24)
    assert base.weights_digest == other.weights_digest
    assert encoder_key(base) != encoder_key(other)
    r1 = _run(cohort, base)
    r2 = _run(cohort, other)
    assert r2.cxr_key != r1.cxr_key and r2.forward_calls > 0 and r2.n_reused == 0
    ids = _ids(cohort)
    a, b = read_cxr(r1.cxr_key, ids), read_cxr(r2.cxr_key, ids)
    assert a.ok.all() and b.ok.all() and not np.allclose(a.embedding, b.embedding)
    assert encoder_key_for("test_tiny") == r1.cxr_key


def test_new_images_are_appended_and_old_rows_untouched(cache: Path, tmp_path: Path) -> None:
    c1 = make_cohort(tmp_path / "a", 6, seed=4)
    c2 = make_cohort(tmp_path / "b", 9, seed=4)  # superset of c1's images
    r1 = _run(c1)
    before = read_cxr(r1.cxr_key, _ids(c1))
    r2 = _run(c2)
    assert r2.n_reused == r1.n_images and r2.n_encoded == r2.n_images - r1.n_images
    after = read_cxr(r1.cxr_key, _ids(c1))
    np.testing.assert_array_equal(before.embedding, after.embedding)


def test_concurrent_writers_do_not_corrupt_the_store(cache: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, 10, seed=5)
    reports, errors = [], []

    def work() -> None:
        try:
            reports.append(_run(cohort, build_test_tiny()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.n_encoded for r in reports) == [
        0,
        8,
    ]  # 10 stays: one without image, two sharing one
    feats = read_cxr(reports[0].cxr_key, _ids(cohort))
    assert feats.ok.all()


_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import zarr
    from encode_fixtures import make_cohort
    from harness.encode.encoders import build_test_tiny
    from harness.encode.run import encode_cohort

    mode, arg = sys.argv[2], int(sys.argv[3])
    enc = build_test_tiny()
    if mode == "setitem":  # SIGKILL itself just before the arg-th array write
        original, calls = zarr.Array.__setitem__, [0]
        def setitem(self, key, value):
            calls[0] += 1
            if calls[0] == arg:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, key, value)
        zarr.Array.__setitem__ = setitem
    else:  # slow forward passes; the parent kills the process from outside
        module = enc.module
        def slow(x):
            time.sleep(0.15)
            return module(x)
        enc.forward_fn = slow
    encode_cohort(make_cohort(Path(sys.argv[1]), 16, seed=7), enc,
                  num_workers=0, chunk_rows=4, batch_size=2)
    """
)


def _store_files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reference")
    old = os.environ.get("HARNESS_CACHE")
    os.environ["HARNESS_CACHE"] = str(root / "cache")
    try:
        cohort = make_cohort(root / "data", 16, seed=7)
        report = _run(cohort, chunk_rows=4, batch_size=2)
        rel = cxr_store_path(report.cxr_key).relative_to(root / "cache")
    finally:
        if old is None:
            os.environ.pop("HARNESS_CACHE", None)
        else:
            os.environ["HARNESS_CACHE"] = old
    return root, rel


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,arg",
    [("setitem", 1), ("setitem", 4), ("setitem", 6), ("external", 0)],
    ids=["during-plan", "mid-chunk", "between-chunks", "external-sigkill"],
)
def test_kill_and_resume_gives_identical_store(
    mode: str, arg: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_store
) -> None:
    ref_root, rel = reference_store
    cache = tmp_path / "cache"
    env = {**os.environ, "HARNESS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(TESTS_DIR)))
    cmd = [sys.executable, str(script), str(tmp_path / "data"), mode, str(arg)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    store = cache / rel
    if mode == "external":
        deadline = time.monotonic() + 120
        while not (store / "committed" / "c" / "0").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""

    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    cohort = make_cohort(tmp_path / "data", 16, seed=7)
    resumed = _run(cohort, chunk_rows=4, batch_size=2)
    assert resumed.n_encoded + resumed.n_reused == resumed.n_images == 14
    if arg != 1:
        assert resumed.n_reused < 14  # something was left to do...
    if mode == "external" or arg == 6:
        assert resumed.n_reused >= 4  # ...and committed chunks were not redone
    assert _store_files(store) == _store_files(ref_root / "cache" / rel)
    assert _run(cohort, chunk_rows=4, batch_size=2).forward_calls == 0
