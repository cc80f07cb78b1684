"""When an entry's ``result.json`` is still what scoring would write: the scoring key.

Scoring an entry reads its unit files, the reference submissions' unit files (paired deltas,
fusion gains), the cohorts and task definitions, the evaluation's settings, and runs the
harness's scoring code. The scoring key is a hash of all of them: the bytes of every unit file
the entry and each reference would contribute, the cohorts' fingerprints, the task files, the
settings, and the harness package's own code. Beside ``result.json`` the evaluation writes
``scoring.json`` (local only): the key the result was scored under and the sha256 of the
result's bytes. An evaluation whose key equals the recorded one, with ``result.json``
byte-identical to what was written, returns that result as it is, without loading a feature
set (a warm ``harness demo`` re-scores nothing). Any change, however small (a re-trained
reference, an edited metric, ``--n-resamples``, an edited result.json), gives a fresh scoring.

The references are read as the scoring reads them: result.json gives their run key and
protocol, and their unit files under that run key are hashed. Their own result.json bytes are
not (re-scoring a reference rewrites them without changing what another entry's scoring reads).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import config
from harness.evaluate.paths import predictions_dir, result_path, unit_path
from harness.evaluate.protocol import DEFAULT_PROTOCOL, UNTUNED, reference_entry
from harness.io import harness_code, hash_files

if TYPE_CHECKING:
    from harness.evaluate.plan import Plan

#: Bump when what the key covers changes.
SCORING_KEY_VERSION = 1
#: The record of the key a result was scored under, beside its ``result.json``.
SCORING_FILE = "scoring.json"
#: Settings that decide where units run or who owns the entry, not what is scored.
NOT_SCORED = ("executor", "scheduler", "ray_address", "replace")


#: Parts of the harness package that cannot change a score: the command line and display, the
#: leaderboard (its schema aside), where units run (their output is hashed as unit files), the
#: synthetic generator and encoders (their output is hashed through cohort fingerprints and the
#: encoder key). Everything else (evaluate, metrics, results, cohort, models, ...) is hashed.
NOT_SCORING_CODE = (
    "cli/", "demo.py", "display.py", "executors/", "data/", "encode/", "leaderboard/render",
    "leaderboard/aggregate.py", "leaderboard/summary.py", "templates/",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of the harness code and schemas scoring depends on (every ``.py`` and ``.json``
    file outside :data:`NOT_SCORING_CODE`)."""
    return hash_files(Path(__file__).resolve().parents[1], harness_code(NOT_SCORING_CODE))


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _task_files(tasks: list[str]) -> dict[str, str | None]:
    """Hash of each task's definition and of the shared definitions it reads."""
    root = config.tasks_dir()
    names = [f"{t}.yaml" for t in tasks] + ["variables.yaml", "phenotypes.yaml"]
    return {name: file_digest(root / name) for name in names}


def _settings_record(plan: Plan) -> dict[str, Any]:
    record = dataclasses.asdict(plan.settings)
    for name in NOT_SCORED:
        record.pop(name, None)
    return record


def _unit_files(plan: Plan, name: str, key: str) -> Iterator[tuple[str, str, int, Path]]:
    """(task, cohort folder, fold, unit file) of every unit of entry ``name`` under run key
    ``key`` for the plan's tasks, cohorts, folds and seeds (the files may not exist)."""
    for task in plan.tasks:
        for cohort in plan.cohorts.values():
            base = predictions_dir(name, task, cohort.path.name, key, plan.entry.dataset)
            for k in plan.folds:
                for s in plan.seeds:
                    yield task, cohort.path.name, k, unit_path(base, k, s)


def _unit_digests(plan: Plan, name: str, key: str) -> dict[str, str | None]:
    """Each unit file's sha256 (None where a file is absent), by task/cohort/file name."""
    return {
        f"{task}/{cohort}/{path.name}": file_digest(path)
        for task, cohort, _, path in _unit_files(plan, name, key)
    }


def reference_inputs(plan: Plan) -> dict[str, Any]:
    """What scoring reads of each reference submission (never the entry itself)."""
    out: dict[str, Any] = {}
    from harness.evaluate.score.references import UNIMODAL_REFERENCES

    for ref in UNIMODAL_REFERENCES:
        name = reference_entry(ref, plan.settings.protocol, plan.settings.tuned)
        if name == plan.entry.name:
            continue
        path = result_path(name, plan.entry.dataset)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out[name] = None
            continue
        raw = raw if isinstance(raw, Mapping) else {}
        prov = raw.get("provenance")
        prov = prov if isinstance(prov, Mapping) else {}
        key = prov.get("run_key")
        protocol = prov.get("protocol")
        protocol = protocol if isinstance(protocol, Mapping) else {}
        out[name] = {
            "status": raw.get("status"),
            "run_key": key,
            "profile": protocol.get("profile", DEFAULT_PROTOCOL),
            "tuning": protocol.get("tuning", UNTUNED),
            "max_epochs": prov.get("max_epochs"),
            "units": _unit_digests(plan, name, key) if isinstance(key, str) else None,
        }
    return out


#: Packages whose numerics the scores depend on (metrics, resampling streams, tables).
SCORING_PACKAGES = ("numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "fairlearn")


def _package_versions() -> dict[str, str | None]:
    import importlib.metadata
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in SCORING_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _signing_key_digest() -> str | None:
    from harness.signing import signing_key

    try:
        key = signing_key(create=False)
    except Exception:  # noqa: BLE001 - no key yet: scoring creates one, and the key changes
        return None
    return None if key is None else hashlib.sha256(key).hexdigest()


def scoring_key(plan: Plan, references: Mapping[str, Any] | None = None) -> str:
    """The key of scoring ``plan`` now (``references``: a :func:`reference_inputs` snapshot
    taken when scoring began; read now when not given)."""
    payload = {
        "version": SCORING_KEY_VERSION,
        "code": code_digest(),
        "entry": [plan.entry.name, plan.entry.dataset, plan.sub.name, str(plan.sub.version)],
        "run_key": plan.key,
        "encoder_key": plan.encoder_key,
        "tasks": plan.tasks,
        "task_files": _task_files(plan.tasks),
        "scenarios": plan.scenarios,
        "settings": _settings_record(plan),
        "cohorts": {c: cohort.fingerprint for c, cohort in plan.cohorts.items()},
        # the verdict, not the audit's own key: re-auditing unchanged data re-scores nothing
        "audits": {
            c: [a.get("verdict"), a.get("failed"), a.get("allowed")] for c, a in plan.audits.items()
        },
        "units": _unit_digests(plan, plan.entry.name, plan.key),
        "references": reference_inputs(plan) if references is None else references,
        "packages": _package_versions(),
        # the result is signed: another key (a new cache, a regenerated key) signs it again
        "signing_key": _signing_key_digest(),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sessions_to_train(plan: Plan) -> int:
    """(task, fold) pairs with a unit file still missing: the runners the evaluation will open
    when one serves every cohort of a fold (at least that many otherwise)."""
    files = _unit_files(plan, plan.entry.name, plan.key)
    return len({(task, k) for task, _, k, path in files if not path.is_file()})


def units_present(plan: Plan) -> int:
    """How many of the plan's unit files exist."""
    return sum(path.is_file() for *_, path in _unit_files(plan, plan.entry.name, plan.key))


def record_path(plan: Plan) -> Path:
    return plan.entry.result_path.with_name(SCORING_FILE)


def record_scoring(plan: Plan, key: str) -> None:
    """Write ``scoring.json`` for the result just written (atomically)."""
    from harness.io import atomic_write_bytes

    record = {"scoring_key": key, "result_sha256": file_digest(plan.entry.result_path)}
    atomic_write_bytes(record_path(plan), json.dumps(record, indent=1).encode())


def reusable_result(plan: Plan) -> dict[str, Any] | None:
    """The entry's ``result.json`` when it was scored under the key scoring would have now and
    is byte-identical to what was written then; None otherwise."""
    try:
        record = json.loads(record_path(plan).read_text(encoding="utf-8"))
        raw_bytes = plan.entry.result_path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("scoring_key"):
        return None
    if record.get("result_sha256") != hashlib.sha256(raw_bytes).hexdigest():
        return None
    if record["scoring_key"] != scoring_key(plan):
        return None
    raw = json.loads(raw_bytes)
    return raw if isinstance(raw, dict) and raw.get("status") == "ok" else None
