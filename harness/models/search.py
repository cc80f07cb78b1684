"""Hyper-parameter search spaces: the ``search:`` section of ``submission.yaml``.

A search space maps a setting to a typed range::

    search:
      params.hidden: {type: categorical, choices: [32, 64, 128]}
      params.dropout: {type: float, low: 0.0, high: 0.5}
      params.n_layers: {type: int, low: 1, high: 3}

``params.NAME`` is a constructor argument the submission's ``params:`` sets (its default is the
untuned configuration); ``train.NAME`` a training setting. Every torch model is also searched
over the same general space (:data:`GENERAL_TORCH_SPACE`: learning rate, weight decay, batch
size), which a submission may not redefine: equal ranges are part of an equal budget. The epoch
cap and patience are the budget, set by ``harness tune`` for every model alike, and cannot be
searched. A configuration is a flat mapping ``{"params.hidden": 64, "train.lr": 0.001}``, applied
to a submission with :func:`apply_config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import SpecError

if TYPE_CHECKING:
    from harness.models.submission import Submission

TYPES = ("float", "log_float", "int", "categorical")
#: ``train`` settings a search may choose (the others are the budget or a separate sweep:
#: ``max_epochs``/``patience`` are set equal for all, ``cxr_dropout`` has its own sweep).
SEARCHABLE_TRAIN = ("lr", "weight_decay", "batch_size", "grad_clip", "class_weights")
MAX_DIMENSIONS = 32
MAX_CHOICES = 32
FORMAT = "{type: float|log_float|int, low: A, high: B} or {type: categorical, choices: [...]}"


@dataclass(frozen=True)
class Dimension:
    """One searched setting: ``name`` (``params.X`` / ``train.X``) and its typed range."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    choices: tuple[Any, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        return out

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this dimension (the default configuration's check)."""
        if self.type == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if self.type == "int":
            if not isinstance(value, int) or (value - self.low) % (self.step or 1):
                return False
        return self.low <= value <= self.high


#: Searched for every torch model over the same ranges (a submission cannot change them).
GENERAL_TORCH_SPACE: tuple[Dimension, ...] = (
    Dimension("train.lr", "log_float", 1e-4, 1e-2),
    Dimension("train.weight_decay", "log_float", 1e-5, 1e-1),
    Dimension("train.batch_size", "categorical", choices=(32, 64, 128)),
)


def _error(path: Path, message: str, fix: str) -> SpecError:
    return SpecError(message, path=path, fix=fix)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _dimension(name: str, raw: Any, path: Path) -> Dimension:
    where = f"`search.{name}`"
    if not isinstance(raw, dict) or "type" not in raw:
        raise _error(path, f"{where} is {raw!r}", f"write {FORMAT}")
    kind = raw["type"]
    if kind not in TYPES:
        raise _error(path, f"{where} has type {kind!r}", f"use one of {list(TYPES)}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high"}
    allowed |= {"step"} if kind == "int" else set()
    extra = sorted(set(raw) - allowed)
    if extra:
        raise _error(
            path, f"{where} has unknown key(s) {extra}", f"a {kind} range takes {sorted(allowed)}"
        )
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES:
            raise _error(
                path, f"{where}.choices is {choices!r}", f"a list of 1 to {MAX_CHOICES} values"
            )
        if not all(c is None or isinstance(c, str | int | float | bool) for c in choices):
            raise _error(
                path,
                f"{where}.choices holds a non-scalar value",
                "choices are numbers, strings, booleans or null",
            )
        if len({repr(c) for c in choices}) != len(choices):
            raise _error(path, f"{where}.choices repeats a value", "list each choice once")
        return Dimension(name, kind, choices=tuple(choices))
    low, high = _number(raw.get("low")), _number(raw.get("high"))
    if low is None or high is None or not low < high:
        raise _error(
            path,
            f"{where} has low={raw.get('low')!r}, high={raw.get('high')!r}",
            "two finite numbers with low < high",
        )
    if kind == "log_float" and low <= 0:
        raise _error(path, f"{where} is a log range from {low}", "a log_float range starts above 0")
    step = None
    if kind == "int":
        step = raw.get("step", 1)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)):
            raise _error(
                path,
                f"{where}: an int range needs whole numbers (low, high, step)",
                "e.g. {type: int, low: 1, high: 4}",
            )
        if step <= 0 or (high - low) % step:
            raise _error(
                path, f"{where}.step is {step!r}", "a positive whole number dividing high - low"
            )
        return Dimension(name, kind, int(low), int(high), None if step == 1 else int(step))
    return Dimension(name, kind, float(low), float(high))


def parse_search(
    raw: Any, path: Path, *, kind: str, params: Mapping[str, Any]
) -> tuple[Dimension, ...]:
    """The ``search`` section as checked dimensions (``path``: the YAML file, for messages)."""
    from harness.models.submission import TRAIN_KEYS

    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise _error(
            path,
            "field `search` must be a mapping of setting -> range",
            "e.g. `search: {params.hidden: {type: int, low: 16, high: 64}}`",
        )
    if len(raw) > MAX_DIMENSIONS:
        raise _error(path, f"`search` has {len(raw)} settings", f"search at most {MAX_DIMENSIONS}")
    general = {d.name for d in GENERAL_TORCH_SPACE} if kind == "torch" else set()
    out = []
    for name, spec in raw.items():
        section, _, key = str(name).partition(".")
        if section not in ("params", "train") or not key:
            raise _error(
                path,
                f"`search` has the setting {name!r}",
                "name params.NAME (a constructor argument) or train.NAME",
            )
        if name in general:
            raise _error(
                path,
                f"`search.{name}` redefines a range the harness searches for every torch model",
                f"remove it: every torch model is searched over the same {sorted(general)}",
            )
        if section == "train" and key not in SEARCHABLE_TRAIN:
            why = "is not a training setting"
            if key in TRAIN_KEYS:
                why = "cannot be searched"
            if key in ("max_epochs", "patience"):
                why = "is part of the equal budget `harness tune` sets"
            raise _error(
                path,
                f"`search.{name}` {why}",
                f"searchable training settings: {list(SEARCHABLE_TRAIN)}",
            )
        if section == "params" and key not in params:
            raise _error(
                path,
                f"`search.{name}`: `params:` does not set {key!r}",
                f"add `{key}:` with its default value under `params:`",
            )
        out.append(_dimension(name, spec, path))
    return tuple(out)


def search_space(sub: Submission) -> tuple[Dimension, ...]:
    """Every dimension searched for ``sub``: the general torch space, then its own."""
    general = GENERAL_TORCH_SPACE if sub.kind == "torch" else ()
    return (*general, *sub.search)


def default_config(sub: Submission, space: tuple[Dimension, ...]) -> dict[str, Any]:
    """The submission's own values of the searched settings (its untuned configuration)."""
    out = {}
    for dim in space:
        section, key = dim.name.split(".", 1)
        out[dim.name] = sub.params.get(key) if section == "params" else getattr(sub.train, key)
    return out


def apply_config(sub: Submission, config: Mapping[str, Any] | None) -> Submission:
    """``sub`` with a configuration's values in its ``params`` and ``train`` (each checked)."""
    from harness.models.submission import TRAIN_KEYS, _train_value

    if not config:
        return sub
    params: dict[str, Any] = dict(sub.params)
    train: dict[str, Any] = {}
    for name, value in config.items():
        section, _, key = str(name).partition(".")
        if section == "params" and key:
            params[key] = value
        elif section == "train" and key in SEARCHABLE_TRAIN:
            if value is None and key == "grad_clip":  # no clipping
                train[key] = None
                continue
            checked = _train_value(key, value)
            if checked is None:
                raise _error(
                    sub.yaml_path,
                    f"configuration sets train.{key} to {value!r}",
                    f"use {TRAIN_KEYS[key][1]}",
                )
            train[key] = checked
        else:
            raise _error(
                sub.yaml_path,
                f"configuration sets {name!r}",
                f"only params.NAME and train.{{{','.join(SEARCHABLE_TRAIN)}}}",
            )
    return replace(sub, params=params, train=replace(sub.train, **train))
