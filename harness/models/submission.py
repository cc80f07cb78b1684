"""Submission folders: parse and check ``submission.yaml``, import ``model.py`` by path."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.errors import SpecError, SubmissionError
from harness.models.protocol import ESTIMATOR_INPUTS, INPUTS
from harness.models.search import Dimension, parse_search

log = logging.getLogger(__name__)

SUBMISSION_FILE = "submission.yaml"
KINDS = ("torch", "estimator")
TOP_KEYS = {
    "name": "short identifier (letters, digits, _ and -)",
    "version": "version of this submission (string or number)",
    "description": "one paragraph: what the model does",
    "authors": "list of names",
    "kind": "torch | estimator",
    "entry": "module:ClassName inside the folder, e.g. model:MyModel",
    "inputs": f"list, a subset of {list(INPUTS)}",
    "params": "mapping of constructor arguments",
    "train": "mapping of training settings",
    "tasks": "all, or a list of task names",
    "backbone": "image encoder name used when the model runs in the end-to-end (pixels) track",
    "citation": "the paper the method comes from",
    "search": "mapping: setting (params.NAME or train.NAME) -> typed range, searched by "
    "`harness tune`",
    "limits": "mapping: unit_seconds (wall clock per unit), memory_mb (worker memory); the "
    "harness caps both",
    "resources": "mapping: cpus, gpus a unit reserves on a Ray cluster (`--executor ray`)",
}
RESOURCE_KEYS = {
    "cpus": "a whole number of CPU cores, at least 1, e.g. 2",
    "gpus": "a number of GPUs, 0 or more; fractions share one GPU, e.g. 0.25",
}
LIMIT_KEYS = {
    "unit_seconds": "a positive number of seconds, e.g. 1800",
    "memory_mb": "a positive whole number of megabytes, e.g. 4096",
}
#: Submission names: ASCII letters, digits, _ and - (they name folders and leaderboard rows).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
REQUIRED = ("name", "version", "kind", "entry", "inputs")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings a submission may choose; the loop itself belongs to the harness."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 5
    cxr_dropout: float = 0.0
    class_weights: str = "none"
    grad_clip: float | None = None


TRAIN_KEYS = {
    "optimizer": (str, "adamw"),
    "lr": (float, "a positive number, e.g. 0.001"),
    "weight_decay": (float, "a number >= 0"),
    "batch_size": (int, "a positive integer"),
    "max_epochs": (int, "a positive integer"),
    "patience": (int, "a positive integer"),
    "cxr_dropout": (float, "a number in [0, 1)"),
    "class_weights": (str, "none | balanced"),
    "grad_clip": (float, "a positive number (max gradient norm)"),
}


@dataclass(frozen=True)
class Submission:
    """A parsed, checked submission folder."""

    path: Path
    name: str
    version: str
    kind: str
    entry_module: str
    entry_class: str
    inputs: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    tasks: tuple[str, ...] | None = None  # None = all tasks
    description: str = ""
    authors: tuple[str, ...] = ()
    backbone: str | None = None
    citation: str | None = None
    limits: dict[str, float] = field(default_factory=dict)
    #: What one unit reserves on a Ray cluster: ``cpus`` (default 1) and ``gpus`` (default 0).
    resources: dict[str, float] = field(default_factory=dict)
    #: The ``search`` section (:mod:`harness.models.search`), searched by ``harness tune``.
    search: tuple[Dimension, ...] = ()

    @property
    def yaml_path(self) -> Path:
        return self.path / SUBMISSION_FILE

    @property
    def module_path(self) -> Path:
        return self.path / f"{self.entry_module}.py"

    @property
    def end_to_end(self) -> bool:
        return "cxr_pixels" in self.inputs

    def supports(self, task_name: str) -> bool:
        return self.tasks is None or task_name in self.tasks

    def with_pixels(self, backbone: str | None = None) -> Submission:
        """The same model in the end-to-end track: ``cxr`` replaced by ``cxr_pixels``."""
        if self.kind != "torch":
            raise SubmissionError(f"{self.yaml_path}: estimators cannot train an image backbone")
        if "cxr" not in self.inputs and "cxr_pixels" not in self.inputs:
            raise SubmissionError(f"{self.yaml_path}: inputs has no cxr, nothing to run end to end")
        chosen = backbone or self.backbone
        if not chosen:
            raise SubmissionError(
                f"{self.yaml_path}: no image backbone for the end-to-end track. "
                "Fix: set `backbone:` in submission.yaml or pass one explicitly."
            )
        inputs = tuple("cxr_pixels" if i == "cxr" else i for i in self.inputs)
        return replace(self, inputs=inputs, backbone=chosen)

    def load_class(self) -> type:
        """Import ``model.py`` by path (under a unique module name) and return the entry class."""
        module = import_by_path(self.module_path, self.yaml_path)
        obj = getattr(module, self.entry_class, None)
        if obj is None or not isinstance(obj, type):
            found = sorted(n for n, v in vars(module).items() if isinstance(v, type))
            raise SubmissionError(
                f"{self.module_path}: entry class {self.entry_class!r} (field `entry` in "
                f"{self.yaml_path.name}) is not defined. Classes found: {found or 'none'}. "
                "Fix: correct `entry: module:ClassName`."
            )
        return obj


def _spec_error(path: Path, message: str, fix: str) -> SpecError:
    return SpecError(message, path=path, fix=fix)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _parse_train(raw: Any, path: Path) -> TrainConfig:
    if raw is None:
        return TrainConfig()
    if not isinstance(raw, dict):
        raise _spec_error(path, "field `train` must be a mapping", "e.g. `train: {lr: 0.001}`")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in TRAIN_KEYS:
            raise _spec_error(
                path,
                f"unknown key `train.{key}`",
                f"remove it; valid keys under `train` are {sorted(TRAIN_KEYS)}",
            )
        if key == "grad_clip" and value is None:
            values[key] = None
            continue
        conv = _train_value(key, value)
        if conv is None:
            raise _spec_error(path, f"`train.{key}` is {value!r}", f"use {TRAIN_KEYS[key][1]}")
        values[key] = conv
    return TrainConfig(**values)


def _train_value(key: str, value: Any) -> float | int | str | None:
    """``train.<key>`` converted to its type and range-checked (`TRAIN_KEYS`); None if invalid.

    Numbers must be positive, except ``weight_decay`` (>= 0) and ``cxr_dropout`` (in [0, 1));
    ``optimizer`` is case-insensitive and kept lower-case.
    """
    typ = TRAIN_KEYS[key][0]
    if typ is float:
        number = _as_float(value)
        if number is None:
            return None
        if key == "weight_decay":
            return number if number >= 0 else None
        if key == "cxr_dropout":
            return number if 0 <= number < 1 else None
        return number if number > 0 else None
    if typ is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    if key == "optimizer":
        return value.lower() if value.lower() == "adamw" else None
    if key == "class_weights":
        return value if value in ("none", "balanced") else None
    return value


def parse_submission(data: Any, path: Path) -> Submission:
    """Check a loaded ``submission.yaml`` mapping; ``path`` is the YAML file (for messages)."""
    if not isinstance(data, dict):
        raise _spec_error(path, "the file must be a YAML mapping", "see the template")
    for key in data:
        if key not in TOP_KEYS:
            raise _spec_error(
                path,
                f"unknown key `{key}`",
                f"remove or rename it; valid keys are {sorted(TOP_KEYS)}",
            )
    for key in REQUIRED:
        if data.get(key) in (None, ""):
            raise _spec_error(path, f"required field `{key}` is missing", TOP_KEYS[key])
    name = str(data["name"])
    if not NAME_PATTERN.match(name):
        raise _spec_error(
            path,
            f"`name` {name!r} is not 1-64 ASCII letters, digits, _ or - (starting with a letter "
            "or digit)",
            "use a short identifier such as my_model",
        )
    kind = data["kind"]
    if kind not in KINDS:
        raise _spec_error(path, f"`kind` is {kind!r}", f"use one of {list(KINDS)}")
    entry = data["entry"]
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        raise _spec_error(
            path, f"`entry` is {entry!r}", "write module:ClassName, e.g. model:MyModel"
        )
    module, cls = entry.split(":")
    if not module.isidentifier() or not cls.isidentifier():
        raise _spec_error(path, f"`entry` {entry!r} is not module:ClassName", "e.g. model:MyModel")
    inputs = data["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise _spec_error(path, "`inputs` must be a non-empty list", f"choose from {list(INPUTS)}")
    for item in inputs:
        if item not in INPUTS:
            raise _spec_error(
                path, f"`inputs` has unknown input {item!r}", f"choose from {list(INPUTS)}"
            )
    if "cxr" in inputs and "cxr_pixels" in inputs:
        raise _spec_error(
            path,
            "`inputs` lists both cxr and cxr_pixels",
            "a model uses cached embeddings (cxr) or images (cxr_pixels), not both",
        )
    if kind == "estimator":
        bad = [i for i in inputs if i not in ESTIMATOR_INPUTS]
        if bad:
            raise _spec_error(
                path,
                f"`inputs` {bad} cannot be used by an estimator",
                f"estimators take flat arrays: choose from {list(ESTIMATOR_INPUTS)}",
            )
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise _spec_error(path, "`params` must be a mapping", "e.g. `params: {hidden: 64}`")
    tasks = data.get("tasks", "all")
    if tasks in (None, "all"):
        task_tuple = None
    elif isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks):
        task_tuple = tuple(tasks)
        known = _known_tasks()
        unknown = [t for t in task_tuple if known and t not in known]
        if unknown:
            raise _spec_error(
                path, f"`tasks` lists unknown task(s) {unknown}", f"use `all` or names from {known}"
            )
    else:
        raise _spec_error(path, f"`tasks` is {tasks!r}", "write `all` or a list of task names")
    authors = data.get("authors") or []
    if isinstance(authors, str):
        authors = [authors]
    if not isinstance(authors, list) or len(authors) > 100:
        raise _spec_error(path, "`authors` must be a list of names", "e.g. `authors: [A. Name]`")
    authors = [_text(a, "authors", path) for a in authors]
    backbone = data.get("backbone")
    if "cxr_pixels" in inputs and not backbone:
        raise _spec_error(
            path,
            "`inputs` has cxr_pixels but no `backbone` is named",
            "set `backbone:` to an image encoder name (see `harness list encoders`)",
        )
    limits = _parse_limits(data.get("limits"), path)
    return Submission(
        path=path.parent,
        name=name,
        version=_text(data["version"], "version", path)[:100],
        kind=kind,
        entry_module=module,
        entry_class=cls,
        inputs=tuple(inputs),
        params=dict(params),
        train=_parse_train(data.get("train"), path),
        tasks=task_tuple,
        description=_text(data.get("description") or "", "description", path).strip(),
        authors=tuple(str(a) for a in authors),
        backbone=str(backbone) if backbone else None,
        citation=_text(data["citation"], "citation", path).strip()
        if data.get("citation")
        else None,
        limits=limits,
        resources=_parse_resources(data.get("resources"), path),
        search=parse_search(data.get("search"), path, kind=kind, params=params),
    )


def _known_tasks() -> list[str]:
    """Task names defined in the tasks folder (empty when it cannot be read)."""
    try:
        from harness.cohort.spec import list_tasks

        return list_tasks()
    except Exception:  # noqa: BLE001 - without task files nothing can be checked here
        return []


def _parse_numbers(
    raw: Any, path: Path, field: str, keys: dict[str, str], example: str,
    bad: Callable[[str, float], bool],
) -> dict[str, float]:  # fmt: skip
    """A mapping of named numbers (``limits``, ``resources``): known keys, each a finite
    number that ``bad`` does not refuse."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _spec_error(path, f"field `{field}` must be a mapping", f"e.g. `{example}`")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key not in keys:
            raise _spec_error(
                path, f"unknown key `{field}.{key}`", f"valid keys are {sorted(keys)}"
            )
        number = _as_float(value)
        if number is None or not math.isfinite(number) or bad(key, number):
            raise _spec_error(path, f"`{field}.{key}` is {value!r}", f"use {keys[key]}")
        out[key] = number
    return out


def _parse_limits(raw: Any, path: Path) -> dict[str, float]:
    return _parse_numbers(
        raw, path, "limits", LIMIT_KEYS, "limits: {unit_seconds: 600}",
        lambda key, n: n <= 0 or (key == "memory_mb" and n != int(n)),
    )  # fmt: skip


def _parse_resources(raw: Any, path: Path) -> dict[str, float]:
    return _parse_numbers(
        raw, path, "resources", RESOURCE_KEYS, "resources: {cpus: 2, gpus: 0.5}",
        lambda key, n: n < 0 or (key == "cpus" and (n < 1 or n != int(n))),
    )  # fmt: skip


def load_submission(path: str | Path) -> Submission:
    """Read and check ``<path>/submission.yaml`` (``path`` may also be the YAML file itself)."""
    path = Path(path)
    yaml_path = path if path.suffix in (".yaml", ".yml") else path / SUBMISSION_FILE
    if not yaml_path.is_file():
        raise SpecError(
            "no submission.yaml found",
            path=yaml_path,
            fix="point to a submission folder, or create one with `harness new-submission NAME`",
        )
    try:
        data = _load_yaml(yaml_path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            f"invalid YAML{where}: {problem}",
            path=yaml_path,
            fix="fix the YAML syntax (indentation, a missing colon or quote)",
        ) from None
    _check_plain_files(yaml_path.parent)
    sub = parse_submission(data, yaml_path)
    if not sub.module_path.is_file():
        raise SpecError(
            f"`entry` points to {sub.module_path.name}, which does not exist",
            path=yaml_path,
            fix=f"add {sub.module_path.name} to the folder or correct `entry`",
        )
    return sub


#: Largest ``submission.yaml`` read, and longest free-text field kept.
MAX_YAML_BYTES = 64 * 1024
MAX_TEXT_CHARS = 4000


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: a few hundred bytes of nested aliases expand to
    gigabytes (a "billion laughs" file) before any field is checked."""

    # The anchor passed on is None (no anchor recorded). types-PyYAML declares the parameter as
    # a dict where PyYAML passes the anchor's name (str | None): hence the ignores below.

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in submission.yaml", event.start_mark
            )
        return super().compose_node(parent, index)

    def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:
        return super().compose_scalar_node(None)  # type: ignore[arg-type]

    def compose_sequence_node(self, anchor: Any) -> yaml.SequenceNode:
        return super().compose_sequence_node(None)  # type: ignore[arg-type]

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        return super().compose_mapping_node(None)  # type: ignore[arg-type]


def _load_yaml(yaml_path: Path) -> Any:
    size = yaml_path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise SpecError(
            f"the file has {size} bytes, more than {MAX_YAML_BYTES}",
            path=yaml_path,
            fix="keep submission.yaml to names and settings; put data in other files",
        )
    return yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506


def _text(value: Any, field_name: str, path: Path) -> str:
    """A free-text field: a scalar, at most `MAX_TEXT_CHARS` characters."""
    if isinstance(value, dict | list):
        raise _spec_error(path, f"`{field_name}` must be text, not a {type(value).__name__}",
                          f"write `{field_name}:` as one string")  # fmt: skip
    text = str(value)
    if len(text) > MAX_TEXT_CHARS:
        raise _spec_error(path, f"`{field_name}` has {len(text)} characters",
                          f"keep it under {MAX_TEXT_CHARS}")  # fmt: skip
    return text


def _check_plain_files(folder: Path) -> None:
    """A submission folder holds regular files and folders only: a link could point the harness
    at a cache file, a device or a pipe when it hashes or copies the folder."""
    import os
    import stat

    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SpecError(
                    f"{path.relative_to(folder).as_posix()} is a link or a special file",
                    path=folder,
                    fix="replace it with a copy of the file: submission folders hold only "
                    "regular files and folders",
                )


def import_by_path(module_path: Path, yaml_path: Path) -> Any:
    """Import a submission's module under a name unique to its absolute path."""
    resolved = module_path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"harness_submission_{resolved.parent.name}_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise SubmissionError(f"{module_path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise SubmissionError(
            f"{describe_exception(exc, module_path)} while importing (named by `entry` in "
            f"{yaml_path.name}). Fix: make `python {module_path.name}` import cleanly."
        ) from None
    return module


def describe_exception(exc: BaseException, module_path: Path) -> str:
    """``model.py:LINE in FUNC: Type: message``: the deepest frame inside the submission file."""
    resolved = str(Path(module_path).resolve())
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{module_path}:{exc.lineno}: SyntaxError: {exc.msg}"
    inside = [f for f in frames if str(Path(f.filename).resolve()) == resolved]
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    what = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    if inside:
        frame = inside[-1]
        return f"{module_path}:{frame.lineno} in {frame.name}: {what}"
    return f"{module_path}: {what}"
