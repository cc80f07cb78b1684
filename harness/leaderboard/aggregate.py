"""Aggregate every ``result.json`` into a validated leaderboard with ranks, and write it out.

Ranks are per (dataset, cohort fingerprint, task, cohort, protocol) on the task's main metric:
entries on different datasets or cohorts, or evaluated under different protocols (profile, folds,
seeds, epoch cap, bootstrap resamples, checkpoint selection, threshold rule: :func:`protocol_of`),
are never ranked together; each table carries its protocol. Ranks are competition ranks of the point
value (equal values share a rank); each row carries its difference from the leader with the 95%
CI and p-value of a paired test on the shared bootstrap resamples, and is *tied with the leader*
when p >= 0.05 (results written before the resamples were stored fall back to CI overlap and are
marked ``comparison: ci_overlap``), so statistical ties are reported rather than hidden. Failed
evaluations are listed apart under ``failed`` (a category and a sanitized message); files that
cannot be published go to ``rejected`` (entry folder, category, sanitized reason) and never stop
the others: unreadable, non-UTF-8, truncated or non-JSON files, NaN or infinity, schema
violations, a missing or wrong signature (:mod:`harness.signing`), and anything
:func:`harness.leaderboard.publish.publishable_result` refuses. Results are read through
:class:`harness.results.Result` (older schema versions migrated on the way).

Results are found at ``<results>/<dataset>/<name>/result.json`` (what `harness evaluate` writes)
and, for folders written before results were kept per dataset, ``<results>/<name>/result.json``;
when both hold the same (name, dataset), the per-dataset one wins.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import __version__, config
from harness.errors import InputError, UsageError
from harness.io import atomic_write_text, harness_code, hash_files
from harness.leaderboard.publish import (
    MIN_GROUP_SIZE,
    PRIVATE_BLOCK_FIELDS,
    Rejected,
    assert_publishable,
    failed_record,
    find_paths,
    publishable_result,
    rejection,
    strip_private,
)
from harness.metrics.bootstrap import paired_delta
from harness.metrics.registry import HIGHER_IS_BETTER
from harness.results import PROTOCOL_FIELDS, Block, Result
from harness.results.schema import (
    LEADERBOARD_SCHEMA,
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    schema_errors,
    validate,
)
from harness.signing import SIGNATURE_FIELD, signing_key, verify

log = logging.getLogger(__name__)

#: Largest result.json read (results hold aggregates only: a few hundred kB at most).
MAX_RESULT_BYTES = 64 * 1024 * 1024
UNSIGNED_FIX = (
    "re-run `harness evaluate` for it (results are signed since schema 1.1), or publish it "
    "anyway with `harness leaderboard --accept-unsigned` if you trust the file"
)


@dataclass
class Leaderboard:
    """The aggregated document plus where it was written."""

    document: dict
    paths: dict[str, Path]

    @property
    def rankings(self) -> list[dict]:
        return self.document["rankings"]

    @property
    def failed(self) -> list[dict]:
        return self.document["failed"]

    @property
    def rejected(self) -> list[dict]:
        return self.document["rejected"]


def result_files(results_dir: Path) -> list[Path]:
    """Per-dataset result files first, then those of the older flat layout."""
    return sorted(results_dir.glob("*/*/result.json")) + sorted(results_dir.glob("*/result.json"))


def _no_constant(name: str):
    raise Rejected("non_finite", f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Rejected("non_finite", f"{text[:40]} overflows to infinity")
    return value


def parse_result(data: bytes) -> dict:
    """Strictly parse a result.json: UTF-8, JSON, no NaN or infinity, an object; else Rejected."""
    if len(data) > MAX_RESULT_BYTES:
        raise Rejected("unreadable", f"{len(data)} bytes, more than {MAX_RESULT_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("encoding", f"not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise Rejected("invalid_json", f"not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:
        raise Rejected("invalid_json", f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise Rejected("schema", "a result must be a JSON object")
    return doc


def check_signature(doc: dict, key: bytes | None, *, accept_unsigned: bool = False) -> None:
    """Raise Rejected (``signature``) unless ``doc`` is signed with ``key`` (or unsigned and
    ``accept_unsigned``)."""
    if SIGNATURE_FIELD not in doc:
        from harness.results.migrate import version_of

        # only results written before signing existed (schema 1.0) may be unsigned
        if accept_unsigned and version_of(doc) == "1.0":
            return
        raise Rejected(
            "signature", f"unsigned (written before results were signed): {UNSIGNED_FIX}"
        )
    if key is None:
        raise Rejected(
            "signature",
            "this cache has no signing key (.keys/result-signing.key), so no signature can be "
            "verified: run `harness leaderboard` with the cache that evaluated the results",
        )
    if not verify(doc, key):
        raise Rejected(
            "signature",
            "signature does not match the content: the file was edited after `harness evaluate` "
            "wrote it, or comes from another cache; re-run `harness evaluate` for it",
        )


def checked_result(doc: dict, entry: str) -> Result:
    """``doc`` read as a :class:`Result` once it matches the schema and names its own folder
    ``entry``; else Rejected (``schema``)."""
    errors = schema_errors(doc, RESULT_SCHEMA)
    if errors:
        raise Rejected("schema", "invalid result.json: " + "; ".join(errors[:3]))
    try:
        result = Result(doc)
    except InputError as exc:  # a schema version this harness cannot read
        raise Rejected("schema", str(exc)) from None
    if result.name != entry:
        raise Rejected("schema", f"names entry {result.name!r} but lies in folder {entry!r}")
    return result


def load_results(
    results_dir: str | Path,
    *,
    accept_unsigned: bool = False,
    key: bytes | None = None,
    min_group_size: int = MIN_GROUP_SIZE,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Publishable ``ok`` results, failure records and rejection records under ``results_dir``.

    Every file is checked on its own (parse, signature, schema, :func:`publishable_result`); a
    file that fails goes to the rejection records, never stopping the others. ``key`` defaults
    to the cache's signing key; ``accept_unsigned`` publishes results without a signature (a
    wrong signature is always rejected).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(
            "results folder does not exist",
            path=results_dir,
            fix="run `harness evaluate submissions/<name>` first, or pass --results DIR",
        )
    _check_min_group_size(min_group_size)
    if key is None:
        key = signing_key(create=False)
    ok, failed, rejected = [], [], []
    seen: set[tuple[str, str]] = set()
    for path in result_files(results_dir):
        entry = path.parent.name
        source = path.relative_to(results_dir).as_posix()
        try:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise Rejected("unreadable", f"cannot be read ({exc.strerror or exc})") from None
            doc = parse_result(data)
            check_signature(doc, key, accept_unsigned=accept_unsigned)
            result = checked_result(doc, entry)
            key_ = (str(result.name), str(result.dataset))
            if key_ in seen:
                log.info("%s: %s on %s already read; skipped", path, *key_)
                continue
            if not result.ok:
                seen.add(key_)
                failed.append(failed_record(result))
                continue
            published = _vet(doc, min_group_size)
        except Rejected as exc:
            log.info("%s rejected (%s): %s", source, exc.category, exc.reason)
            rejected.append(exc.record(entry, source))
            continue
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            log.debug("%s could not be checked", source, exc_info=True)
            reason = f"content could not be checked ({type(exc).__name__})"
            rejected.append(rejection(entry, "schema", reason, source))
            continue
        seen.add(key_)
        ok.append(published)
    return ok, failed, rejected


#: An entry is tied with the leader when the paired test's p-value is at least this.
TIE_ALPHA = 0.05
#: Row fields of a ranking table, in order.
ROW_FIELDS = (
    "rank", "name", "version", "inputs", "audit", "value", "ci_low", "ci_high", "comparison",
    "delta_vs_leader", "delta_ci_low", "delta_ci_high", "p_vs_leader", "tied_with_leader",
)  # fmt: skip


def _overlap(a: dict, b: dict) -> bool:
    if None in (a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"]):
        return False
    return a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]


def _resamples(row: dict) -> np.ndarray | None:
    values = row.get("_resamples")
    return None if values is None else np.array([np.nan if v is None else v for v in values], float)


def _compare_with_leader(row: dict, leader: dict) -> None:
    """Fill ``row``'s comparison with ``leader``: paired on the shared resamples when both carry
    them under the same bootstrap (seed, count and subjects), else by CI overlap (older results).

    ``delta_vs_leader`` = entry - leader (negative is worse when higher is better); its 95% CI is
    the percentile interval of the paired resample deltas and ``p_vs_leader`` the two-sided
    normal-approximation p (:func:`harness.metrics.bootstrap.paired_delta`). Tied: p >= 0.05.
    """
    none = {"delta_vs_leader": None, "delta_ci_low": None, "delta_ci_high": None,
            "p_vs_leader": None}  # fmt: skip
    if row is leader:
        row.update(none, comparison="leader", tied_with_leader=None)
        return
    if row["value"] is None or leader["value"] is None:
        row.update(none, comparison="none", tied_with_leader=None)
        return
    mine, theirs = _resamples(row), _resamples(leader)
    same_bootstrap = row["_bootstrap"] == leader["_bootstrap"]
    if mine is not None and theirs is not None and mine.shape == theirs.shape and same_bootstrap:
        d = paired_delta(row["value"], leader["value"], mine, theirs).to_dict()
        row.update(
            comparison="paired",
            delta_vs_leader=d["delta"],
            delta_ci_low=d["ci_low"],
            delta_ci_high=d["ci_high"],
            p_vs_leader=d["p_value"],
            tied_with_leader=d["p_value"] is not None and d["p_value"] >= TIE_ALPHA,
        )
        return
    row.update(
        none,
        comparison="ci_overlap",
        delta_vs_leader=row["value"] - leader["value"],
        tied_with_leader=_overlap(row, leader),
    )


def protocol_of(result: Result | dict, task: str | None = None, cohort: str | None = None) -> dict:
    """The protocol ``result`` was evaluated under (for one task and cohort when given), with a
    readable ``label``: every field of :data:`~harness.results.PROTOCOL_FIELDS`
    (:meth:`harness.results.Result.protocol`; results written before protocols were recorded
    are ``honest`` with the folds, seeds and epoch cap of their provenance)."""
    out = Result.of(result).protocol(task, cohort)
    out["label"] = protocol_label(out)
    return out


def _numbers(values: list[int]) -> str:
    values = sorted(values)
    if len(values) >= 4 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values)) or "?"


def protocol_label(protocol: dict, *, selection: bool = True) -> str:
    """One line naming a protocol, e.g. ``honest · folds 1-5 · seeds 0,1,2 · ...``
    (``selection=False`` leaves the per-task selection metric out)."""
    epochs = protocol.get("max_epochs")
    chosen = protocol.get("selection")
    if isinstance(chosen, dict):
        chosen = ", ".join(f"{t}: {m}" for t, m in chosen.items())
    parts = [
        str(protocol.get("profile")),
        f"folds {_numbers(protocol.get('folds') or [])}",
        f"seeds {_numbers(protocol.get('seeds') or [])}",
        f"≤{epochs} epochs" if epochs else "submission's epochs",
        f"{protocol.get('n_resamples') or '?'} resamples",
    ]
    if selection:
        parts.append(f"selection {chosen or '?'}")
    parts.append(f"threshold {protocol.get('threshold')}")
    tuning = protocol.get("tuning") or "default"
    parts.append("default settings" if tuning == "default" else str(tuning))
    return " · ".join(parts)


def protocol_key(protocol: dict) -> str:
    """The protocol's part of a ranking key: entries with equal keys are ranked together."""
    return json.dumps({k: protocol.get(k) for k in PROTOCOL_FIELDS}, sort_keys=True)


def _ranking_key(result: Result, block: Block, protocol: dict) -> tuple:
    """Entries are ranked together when they share all of this."""
    return (
        result.dataset, _fingerprint(result, block.cohort), block.task, block.cohort,
        block.main_metric, protocol["profile"], protocol["label"], protocol_key(protocol),
    )  # fmt: skip


def _fingerprint(result: Result, cohort: str) -> str:
    fingerprint = result.fingerprint(cohort)
    return "unknown" if fingerprint is None else fingerprint


def _new_table(result: Result, block: Block, protocol: dict) -> dict:
    metric = block.main_metric or ""
    return {
        "dataset": result.dataset,
        "fingerprint": _fingerprint(result, block.cohort),
        "task": block.task,
        "cohort": block.cohort,
        "metric": metric,
        "higher_is_better": HIGHER_IS_BETTER.get(metric, True),
        "protocol": protocol,
        "rows": [],
    }


def audit_status(record: object) -> str | None:
    """A row's ``audit``: passed, failed-allowed (evaluated with --allow-leaks), or None."""
    if not isinstance(record, dict):
        return None
    if record.get("verdict") == "passed":
        return "passed"
    return "failed-allowed" if record.get("allowed") else "failed"


def _row(result: Result, block: Block) -> dict:
    """An entry's row of a ranking table (``_``-fields are used for ranking, then dropped)."""
    from harness.models.protocol import INPUTS

    headline = block.headline
    boot = block.bootstrap
    inputs = result.inputs
    return {
        "name": result.name,
        "version": result.version,
        # what the entry reads (a confound when entries differ: e.g. demographics)
        "inputs": None if inputs is None else [i for i in INPUTS if i in inputs],
        # the cohort's leak audit (None: scored before audits existed)
        "audit": audit_status(result.cohorts.get(block.cohort, {}).get("audit")),
        "value": None if headline is None else headline.value,
        "ci_low": None if headline is None else headline.ci_low,
        "ci_high": None if headline is None else headline.ci_high,
        "_resamples": block.main_resamples,
        "_bootstrap": [boot.get(k) for k in ("seed", "n_resamples", "key")],
    }


def rank_results(results: list[dict]) -> list[dict]:
    """Ranking tables per dataset x fingerprint x task x cohort x protocol on the main metric.

    The leader is the first row (best point value, then name); every other row carries its
    difference from the leader (:func:`_compare_with_leader`): a paired test on the shared
    resamples (``main_resamples``) where both have them, CI overlap otherwise.
    """
    tables: dict[tuple, dict] = {}
    for doc in results:
        result = Result.of(doc)
        for block in result.blocks():
            protocol = protocol_of(result, block.task, block.cohort)
            key = _ranking_key(result, block, protocol)
            table = tables.setdefault(key, _new_table(result, block, protocol))
            table["rows"].append(_row(result, block))
    out = []
    for key in sorted(tables):
        table = tables[key]
        sign = -1.0 if table["higher_is_better"] else 1.0
        rows = sorted(
            table["rows"],
            key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["name"]),
        )
        for i, row in enumerate(rows):
            previous = rows[i - 1] if i else None
            if previous is not None and previous["value"] == row["value"]:
                row["rank"] = previous["rank"]  # equal values share a rank
            else:
                row["rank"] = i + 1
        for row in rows:
            _compare_with_leader(row, rows[0])
        table["rows"] = [{k: r[k] for k in ROW_FIELDS} for r in rows]
        out.append(table)
    return out


def _check_min_group_size(min_group_size: int) -> None:
    if min_group_size < MIN_GROUP_SIZE:
        raise UsageError(
            f"min_group_size must be at least {MIN_GROUP_SIZE}, got {min_group_size}",
        )


def _vet(doc: dict, min_group_size: int) -> dict:
    """:func:`publishable_result`, with any unexpected failure on odd content turned into a
    rejection: one strange file never stops the leaderboard."""
    try:
        entry = publishable_result(doc, min_group_size=min_group_size, keep_private=True)
    except Rejected:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        log.debug("vetting failed", exc_info=True)
        raise Rejected("schema", f"content could not be checked ({type(exc).__name__})") from None
    if find_paths(json.dumps(entry)):
        raise Rejected("path", "an absolute path survived sanitization")
    return entry


def build_leaderboard(
    results: list[dict],
    failed: list[dict],
    rejected: list[dict] | None = None,
    *,
    min_group_size: int = MIN_GROUP_SIZE,
    vetted: bool = False,
) -> dict:
    """The leaderboard document: only publishable results are ranked (others are rejected),
    failures are reduced to category + sanitized message, and no absolute path gets through.

    ``vetted``: ``results`` are :func:`load_results`' publishable copies, already checked (they
    are not checked a second time)."""
    _check_min_group_size(min_group_size)
    entries, failures, refused = [], [], [dict(r) for r in rejected or []]
    for res in results:
        name = str(res.get("name", "?")) if isinstance(res, dict) else "?"
        if isinstance(res, dict) and res.get("status") == "failed":
            failures.append(failed_record(res))
            continue
        if vetted:
            entries.append(res)
            continue
        try:
            entry = _vet(res, min_group_size)
        except Rejected as exc:
            refused.append(exc.record(name))
            continue
        entries.append(entry)
    failures += [failed_record(item) for item in failed]
    refused = [
        rejection(r.get("entry", "?"), r.get("category", "schema"), r.get("reason", ""),
                  r.get("source"))
        for r in refused
    ]  # fmt: skip
    document = {
        "schema_version": SCHEMA_VERSION,
        "harness_version": __version__,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "higher_is_better": dict(sorted(HIGHER_IS_BETTER.items())),
        "entries": sorted((strip_private(e) for e in entries), key=lambda r: r["name"]),
        "rankings": rank_results(entries),
        "failed": failures,
        "rejected": refused,
    }
    validate(document, LEADERBOARD_SCHEMA)
    text = json.dumps(document)
    assert_publishable(text, "leaderboard.json")
    if any(f'"{field}"' in text for field in PRIVATE_BLOCK_FIELDS):  # never published
        raise RuntimeError("per-resample values reached the leaderboard document")
    return document


#: Beside the leaderboard files (local): the inputs they were built from and their hashes.
INPUTS_FILE = ".inputs.json"


def _paths(out_dir: Path) -> dict[str, Path]:
    return {kind: out_dir / f"leaderboard.{kind}" for kind in ("json", "md", "html")}


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Hash of the harness package's code and schemas."""
    return hash_files(Path(__file__).resolve().parents[1], harness_code())


def inputs_key(
    results_dir: Path, accept_unsigned: bool, key: bytes | None, min_group_size: int
) -> str:
    """Hash of everything a leaderboard is built from: every result file's bytes, the options,
    the signing key (hashed) and the harness code."""
    h = hashlib.sha256()
    options = {
        "accept_unsigned": accept_unsigned,
        "min_group_size": min_group_size,
        "key": None if key is None else hashlib.sha256(key).hexdigest(),
        "code": _code_digest(),
    }
    h.update(json.dumps(options, sort_keys=True).encode())
    tasks = config.tasks_dir()  # vetting reads the task and cohort definitions
    h.update(str(tasks.resolve()).encode())
    for path in sorted(tasks.glob("*.yaml")) if tasks.is_dir() else ():
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    if results_dir.is_dir():
        for path in result_files(results_dir):
            h.update(path.relative_to(results_dir).as_posix().encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def current_leaderboard(out_dir: Path, inputs: str) -> Leaderboard | None:
    """The written leaderboard when it was built from ``inputs`` and its files are as written
    (a second `harness leaderboard` over unchanged results rewrites nothing); else None."""
    try:
        record = json.loads((out_dir / INPUTS_FILE).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("inputs") != inputs:
            return None
        paths = _paths(out_dir)
        texts = {kind: path.read_bytes() for kind, path in paths.items()}
    except (OSError, ValueError):
        return None
    files = record.get("files") or {}
    if any(files.get(kind) != hashlib.sha256(t).hexdigest() for kind, t in texts.items()):
        return None
    return Leaderboard(json.loads(texts["json"]), paths)


def aggregate(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    accept_unsigned: bool = False,
    key: bytes | None = None,
    min_group_size: int = MIN_GROUP_SIZE,
) -> Leaderboard:
    """Read every result, rank, and write leaderboard.json / .md / .html atomically.

    All three are built and checked for absolute paths before any is written.
    ``accept_unsigned`` publishes results that carry no signature (a maintainer's override for
    results written before signing); ``key`` overrides the cache's signing key.
    """
    from harness.leaderboard.render import render_markdown
    from harness.leaderboard.site import render_html

    out_dir = Path(out_dir)
    if key is None:
        key = signing_key(create=False)
    inputs = inputs_key(Path(results_dir), accept_unsigned, key, min_group_size)
    current = current_leaderboard(out_dir, inputs)
    if current is not None:
        return current
    from harness import progress

    with progress.bar("leaderboard", total=4, unit="step") as b:
        b.doing("reading and vetting the results")
        results, failed, rejected = load_results(
            results_dir, accept_unsigned=accept_unsigned, key=key, min_group_size=min_group_size
        )
        b.advance()
        b.doing("ranking")
        document = build_leaderboard(
            results, failed, rejected, min_group_size=min_group_size, vetted=True
        )
        b.advance()
        paths = _paths(out_dir)
        b.doing("Markdown")
        texts = {
            "json": json.dumps(document, indent=2, allow_nan=False) + "\n",
            "md": render_markdown(document),
        }
        b.advance()
        b.doing("the HTML site's charts")
        texts["html"] = render_html(document)
        b.advance()
    for kind, text in texts.items():
        assert_publishable(text, paths[kind].name)
    for kind, text in texts.items():
        atomic_write_text(paths[kind], text)
    record = {
        "inputs": inputs,
        "files": {kind: hashlib.sha256(text.encode()).hexdigest() for kind, text in texts.items()},
    }
    atomic_write_text(out_dir / INPUTS_FILE, json.dumps(record, indent=1))
    log.info(
        "leaderboard: %d entries, %d failed, %d rejected -> %s",
        len(document["entries"]), len(document["failed"]), len(document["rejected"]), out_dir,
    )  # fmt: skip
    return Leaderboard(document, paths)
