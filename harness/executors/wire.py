"""The messages that cross the trust boundary: a JSON header plus NumPy arrays, never pickles.

A message is ``MAGIC``, an 8-byte big-endian header length, the UTF-8 JSON header, then for each
array the header lists, its ``.npy`` bytes (``allow_pickle=False`` on both sides). Tensors travel
as plain arrays with their names: the receiving side rebuilds them, so nothing it reads can run
code. Sizes are capped so that a hostile peer cannot make the harness allocate without bound.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from harness.models.protocol import Tensors

MAGIC = b"HXW1"
#: Largest header and largest single array the harness accepts from a worker.
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAY_BYTES = 1 << 31
#: Largest array a worker may answer with (predictions: stays x outputs x 8 bytes).
MAX_ANSWER_BYTES = 1 << 28


class WireError(Exception):
    """A malformed or oversized message (the peer is broken or hostile)."""


def _read_exact(fh: IO[bytes], n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = fh.read(left)
        if not chunk:
            raise EOFError(f"stream ended with {left} of {n} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_message(
    fh: IO[bytes], header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
) -> None:
    """Write one message; arrays are serialised as ``.npy`` without pickling."""
    blobs = []
    meta = []
    for name, arr in (arrays or {}).items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
        data = buf.getvalue()
        blobs.append(data)
        meta.append({"name": name, "nbytes": len(data)})
    head = json.dumps({**header, "arrays": meta}, allow_nan=False).encode("utf-8")
    fh.write(MAGIC + struct.pack(">Q", len(head)) + head)
    for data in blobs:
        fh.write(data)
    fh.flush()


def read_message(
    fh: IO[bytes], *, max_array_bytes: int | Callable[[], int] = MAX_ARRAY_BYTES
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read one message written by `write_message`; raises `EOFError` at a clean end of stream.

    ``max_array_bytes`` bounds the arrays of the message *together*; a callable is asked once
    the header has arrived (what the request pending at that moment can need).
    """
    magic = fh.read(len(MAGIC))
    if not magic:
        raise EOFError("stream closed")
    if magic != MAGIC:
        raise WireError(f"bad message start {magic!r}")
    (size,) = struct.unpack(">Q", _read_exact(fh, 8))
    if size > MAX_HEADER_BYTES:
        raise WireError(f"message header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exact(fh, size), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise WireError(f"unreadable message header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise WireError("message header is not a mapping with an array list")
    arrays: dict[str, np.ndarray] = {}
    budget = max_array_bytes() if callable(max_array_bytes) else max_array_bytes
    for item in header.pop("arrays"):
        try:
            name, nbytes = str(item["name"]), int(item["nbytes"])
        except (KeyError, TypeError, ValueError):
            raise WireError("malformed array entry in message header") from None
        if not 0 < nbytes <= budget:
            raise WireError(f"array {name!r} of {nbytes} bytes is outside the accepted size")
        budget -= nbytes
        try:
            arrays[name] = np.lib.format.read_array(
                io.BytesIO(_read_exact(fh, nbytes)), allow_pickle=False
            )
        except ValueError as exc:
            raise WireError(f"array {name!r} is not a plain .npy array: {exc}") from None
    return header, arrays


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-finite JSON constant {token}")


# --------------------------------------------------------------------------------------------
# Tensors <-> arrays

_TENSOR_FIELDS = (
    "ehr", "ehr_mask", "ehr_summary", "cxr", "has_cxr", "cxr_time_hours", "demographics",
    "stay_id", "y", "cxr_pixels",
)  # fmt: skip


def tensors_to_wire(t: Tensors, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`Tensors` as named arrays plus a small header (column names)."""
    arrays = {}
    for name in _TENSOR_FIELDS:
        value = getattr(t, name)
        if value is not None:
            arrays[f"{prefix}.{name}"] = value.numpy()
    meta = {"demo_names": list(t.demo_names), "summary_names": list(t.summary_names)}
    return meta, arrays


def tensors_from_wire(meta: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> Tensors:
    """Rebuild `Tensors` from `tensors_to_wire` output (``index`` becomes 0..n-1)."""
    import torch

    from harness.models.protocol import Tensors

    values: dict[str, Any] = {}
    for name in _TENSOR_FIELDS:
        arr = arrays.get(f"{prefix}.{name}")
        values[name] = None if arr is None else torch.from_numpy(np.array(arr))
    missing = [n for n in _TENSOR_FIELDS if n not in ("y", "cxr_pixels") and values[n] is None]
    if missing:
        raise WireError(f"tensors {prefix!r} lack {missing}")
    n = int(values["stay_id"].shape[0])
    return Tensors(
        **values,
        index=np.arange(n),
        demo_names=[str(x) for x in meta.get("demo_names", [])],
        summary_names=[str(x) for x in meta.get("summary_names", [])],
    )


def without_labels(t: Tensors) -> Tensors:
    """The same tensors with ``y`` removed: what a model may see of a test or scenario set."""
    return replace(t, y=None)
