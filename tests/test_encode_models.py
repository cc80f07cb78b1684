"""Real encoders: the packaged EfficientNet-Lite0 weights classify natural photos correctly, and an
open_clip model loads from a local checkpoint with the ``@path`` syntax."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from encode_fixtures import make_cohort
from PIL import Image

from harness.encode.registry import encoder_key, get_encoder
from harness.encode.run import encode_cohort
from harness.store import read_cxr

torch.set_num_threads(1)


def _sklearn_photo(name: str) -> Image.Image:
    import sklearn

    path = Path(sklearn.__file__).parent / "datasets" / "images" / name
    if not path.is_file():
        pytest.skip(f"scikit-learn sample photo {name} not installed")
    return Image.open(path).convert("RGB")


def test_default_efficientnet_lite0_classifies_natural_photos() -> None:
    from timm.data import ImageNetInfo

    from harness.encode.encoders import build_efficientnet_lite0

    encoder = get_encoder("default")
    classifier = build_efficientnet_lite0(num_classes=1000)
    info = ImageNetInfo()
    x = torch.stack([encoder.transform(_sklearn_photo(n)) for n in ("china.jpg", "flower.jpg")])
    with torch.no_grad():
        probs = classifier(x).softmax(-1)
        feats = encoder.forward(x)
        pooled = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
    top1 = [info.index_to_description(int(i)) for i in probs.argmax(-1)]
    assert top1[0].startswith("palace")  # a temple in Beijing
    assert top1[1].startswith("daisy")  # a white-petalled flower
    assert encoder.dim == 1280 and feats.shape == (2, 1280)
    torch.testing.assert_close(feats, pooled)  # the encoder is the classifier minus its head


TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def test_openclip_from_local_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    cfg = tmp_path / "harness-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("harness-tiny-clip").eval()
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)

    encoder = get_encoder(f"openclip:harness-tiny-clip@{ckpt}")
    assert encoder.dim == 24 and encoder.preprocess_config["size"] == [32, 32]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48), np.uint8))
    x = encoder.transform(img.convert("RGB"))[None]
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward(x), model.encode_image(x))

    # other weights under the same name: a different digest, hence a different store key
    torch.manual_seed(1)
    ckpt2 = tmp_path / "tiny2.pt"
    torch.save(open_clip.create_model("harness-tiny-clip").state_dict(), ckpt2)
    other = get_encoder(f"openclip:harness-tiny-clip@{ckpt2}")
    assert other.weights_digest != encoder.weights_digest
    assert encoder_key(other) != encoder_key(encoder)

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    cohort = make_cohort(tmp_path / "data", 5, seed=8)
    report = encode_cohort(cohort, encoder, num_workers=0, chunk_rows=4)
    assert report.n_encoded == 3 and report.n_failed == 0  # 5 stays: one without, two sharing
    feats = read_cxr(report.cxr_key, list(cohort.stays["dicom_id"]))
    assert feats.ok.sum() == 4 and feats.embedding.shape == (5, 24)


def test_openclip_without_weights_is_refused() -> None:
    from harness.errors import InputError

    with pytest.raises(InputError, match="random weights"):
        get_encoder("openclip:RN50")


def test_random_encoder_seed() -> None:
    """``random:<model>@<seed>``: the seed sets the weights and the key; bad seeds are refused."""
    from harness.errors import UsageError

    a, a2, b = (get_encoder(f"random:resnet10t@{s}") for s in ("1", "1", "2"))
    assert encoder_key(a) == encoder_key(a2) != encoder_key(b)
    assert (
        get_encoder("random:resnet10t").weights_digest
        == get_encoder("random:resnet10t@0").weights_digest
    )
    with pytest.raises(UsageError, match="integer seed"):
        get_encoder("random:resnet10t@abc")
