"""`load_feature_set` on a real pipeline run: synth -> cohort build -> encode (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def built_cache(tiny_pipeline):
    """The session's tiny pipeline, read only: these tests load features and train in memory."""
    return tiny_pipeline


def test_feature_set_is_aligned_with_cohort_and_store(built_cache, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(built_cache))
    from harness import store
    from harness.cohort import load_cohort
    from harness.encode.registry import encoder_key_for
    from harness.models.data import load_feature_set
    from harness.models.train import train_model

    cohort = load_cohort("base")
    fs = load_feature_set(cohort, "phenotype", encoder="test_tiny")
    stays = cohort.stays.reset_index(drop=True)
    assert list(fs.stay_id) == list(stays["stay_id"])
    np.testing.assert_array_equal(fs.fold, stays["fold"].to_numpy())
    np.testing.assert_array_equal(fs.y, stays[list(fs.task.label_columns)].to_numpy(np.float32))

    ehr = store.read_ehr(cohort)
    row = {s: i for i, s in enumerate(ehr.stay_id)}
    j = row[int(fs.stay_id[3])]
    np.testing.assert_array_equal(fs.ehr_observed[3], ehr.observed[j])
    np.testing.assert_allclose(fs.ehr_values[3][fs.ehr_observed[3]], ehr.values[j][ehr.observed[j]])

    linked = stays["has_cxr"].fillna(False).astype(bool).to_numpy()
    assert not (fs.has_cxr & ~linked).any()  # an image only where the cohort links one
    with_image = np.flatnonzero(fs.has_cxr)[:5]
    feats = store.read_cxr(
        encoder_key_for("test_tiny"), [str(d) for d in stays["dicom_id"].iloc[with_image]]
    )
    np.testing.assert_allclose(fs.cxr[with_image], feats.embedding, rtol=1e-6)
    assert np.all(fs.cxr[~fs.has_cxr] == 0)

    tm = train_model("submissions/medfuse", fs, "phenotype", 1, 0, max_epochs=1)
    assert tm.predict_proba(tm.split.test).shape == (len(tm.split.test), 25)


def test_end_to_end_track_on_cohort_images(built_cache, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(built_cache))
    from harness.cohort import load_cohort
    from harness.models.data import load_feature_set
    from harness.models.pixels import attach_cohort_pixels
    from harness.models.submission import load_submission
    from harness.models.train import train_model

    cohort = load_cohort("base")
    fs = load_feature_set(cohort, "mortality_in_hospital", encoder="test_tiny")
    fs = attach_cohort_pixels(fs, cohort, "test_tiny")
    assert fs.cxr_pixels.shape[1:] == (3, 32, 32)
    assert torch.all(fs.cxr_pixels[~torch.as_tensor(fs.has_cxr)] == 0)
    sub = load_submission("submissions/medfuse").with_pixels("test_tiny")
    tm = train_model(sub, fs, None, 1, 0, max_epochs=1)
    p = tm.predict_proba(tm.split.test)
    assert p.shape == (len(tm.split.test),) and np.isfinite(p).all()
