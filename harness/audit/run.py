"""Run the leak audit of one built cohort (and an encoder's image embeddings) and cache it.

The audit is keyed by what it reads: the cohort's fingerprint and file digests, the encoder key,
the thresholds and the audit code. It is written to
``cache/audit/<dataset>/<cohort dir>/<encoder key>/audit.json`` (every finding, with the subject
and image ids of what leaked: the cache is private) and ``audit.md`` beside it (aggregate figures
only). A rerun with the same key reads the files back; `harness evaluate` calls
:func:`ensure_audit` and refuses a cohort whose audit failed unless told to allow it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import __version__, config
from harness.audit import checks
from harness.audit.checks import FAILED, PASSED, SKIPPED, TRAIN, WARNING, Check
from harness.audit.duplicates import NEAR_THRESHOLD, content_hashes, duplicate_images
from harness.errors import HarnessError
from harness.io import atomic_write_json, atomic_write_text, exclusive_lock
from harness.progress import Bar
from harness.progress import bar as progress_bar

log = logging.getLogger(__name__)

AUDIT_VERSION = 1
#: The checks in report order.
CHECK_NAMES = (
    "subject_overlap",
    "duplicate_images",
    "time_leakage",
    "label_leakage",
    "distribution_shift",
)
#: Demographic columns models read (kinds), checked for label leakage like EHR variables.
DEMOGRAPHICS = {
    "age": "numeric",
    "gender": "categorical",
    "race_group": "categorical",
    "insurance": "categorical",
    "admission_type": "categorical",
}
ALLOW_FLAG = "--allow-leaks"


class LeakError(HarnessError):
    """A cohort whose audit failed was about to be evaluated."""

    exit_code = 3


@dataclass(frozen=True)
class Thresholds:
    """What the audit flags; part of its key."""

    near_duplicate: float = NEAR_THRESHOLD
    label_auroc: float = checks.LEAK_AUROC
    min_class: int = checks.MIN_CLASS
    shift_q: float = checks.SHIFT_Q


@dataclass
class Audit:
    """An audit's record (the content of audit.json) and where it lies."""

    record: dict[str, Any]
    path: Path
    reused: bool = False

    @property
    def report_path(self) -> Path:
        return self.path.with_name("audit.md")

    @property
    def verdict(self) -> str:
        return str(self.record["verdict"])

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def names(self, status: str) -> list[str]:
        return [n for n, c in self.record["checks"].items() if c["status"] == status]

    def one_line(self) -> str:
        """The verdict in one line: cohort, outcome, the failed checks and warnings."""
        r = self.record
        head = f"audit of {r['dataset']}/{r['cohort']} ({r['cohort_fingerprint'][:12]}): "
        failed = self.names(FAILED)
        if failed:
            parts = [f"{n}: {r['checks'][n]['summary']}" for n in failed]
            return head + "FAILED - " + "; ".join(parts) + f" (see {self.report_path})"
        notes = [f"{n} warning" for n in self.names(WARNING)]
        notes += [f"{n} skipped" for n in self.names(SKIPPED)]
        notes += [
            f"{n} partial: "
            + (
                "near-duplicate search not run"
                if c["details"].get("near", {}).get("status") == SKIPPED
                else "not every file hashed"
            )
            for n, c in r["checks"].items()
            if c["status"] == PASSED and c["details"].get("partial")
        ]
        return (
            head
            + "passed"
            + (f" ({', '.join(notes)})" if notes else "")
            + (f"; {len(r['checks'])} checks in {r['elapsed_s']:.1f} s")
        )

    def provenance(self, *, allowed: bool = False) -> dict[str, Any]:
        """What a result records of the audit of its cohort (no ids, no paths)."""
        return {
            "verdict": self.verdict,
            "key": str(self.record["key"])[:16],
            "failed": self.names(FAILED),
            "warnings": self.names(WARNING),
            "allowed": bool(allowed and not self.passed),
        }


def audit_dir(cohort: Any, encoder_key: str, thresholds: Thresholds | None = None) -> Path:
    """Where the audit of ``cohort`` with an encoder's embeddings lies; audits with other than
    the default thresholds get a folder of their own (they never replace the one evaluate reads)."""
    root = config.cache_root() / "audit" / cohort.dataset / Path(cohort.path).name
    thresholds = thresholds or Thresholds()
    if thresholds == Thresholds():
        return root / encoder_key
    digest = hashlib.sha256(json.dumps(thresholds.__dict__, sort_keys=True).encode())
    return root / f"{encoder_key}-t{digest.hexdigest()[:8]}"


def code_digest() -> str:
    """sha256 of this package's source (a change re-runs every audit)."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def image_stats(cohort: Any) -> str:
    """Digest of (path, size, mtime) of the cohort's linked image files: an image replaced after
    an audit makes that audit stale."""
    from harness.encode.run import cohort_images

    h = hashlib.sha256()
    for d, p in sorted(cohort_images(cohort).items()):
        try:
            st = p.stat() if p is not None else None
        except OSError:
            st = None
        h.update(f"{d}\0{p}\0{st and st.st_size}\0{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def store_states(cohort: Any, encoder_key: str) -> dict[str, str]:
    """Digest of the group metadata (zarr.json: committed chunks and their checksums) of the
    image-embedding store and of the EHR feature cache, "absent" where not written yet: an
    audit made before `harness encode`, or before a store was rewritten, is stale after it."""
    from harness import store

    out = {}
    for name, path in (
        ("cxr", store.cxr_store_path(encoder_key)),
        ("ehr", store.ehr_store_path(cohort)),
    ):
        meta = Path(path) / "zarr.json"
        out[name] = hashlib.sha256(meta.read_bytes()).hexdigest() if meta.is_file() else "absent"
    return out


def audit_key(cohort: Any, encoder_key: str, thresholds: Thresholds) -> str:
    source = (cohort.manifest.get("source") or {}).get("files") or {}
    meta = source.get("mimic-cxr-metadata") or {}
    meta_path = Path(meta["path"]) if meta.get("path") else None
    meta_stat = meta_path.stat() if meta_path is not None and meta_path.is_file() else None
    parts = {
        "images": image_stats(cohort),
        "stores": store_states(cohort, encoder_key),
        "metadata_table": None if meta_stat is None else [meta_stat.st_size, meta_stat.st_mtime_ns],
        "version": AUDIT_VERSION,
        "fingerprint": cohort.fingerprint,
        "files": cohort.manifest.get("files") or {},
        "encoder_key": encoder_key,
        "thresholds": thresholds.__dict__,
        "code": code_digest(),
        "harness": __version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------- inputs


def partition_table(cohort: Any, stays: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """(n stays, folds) partition codes evaluate uses, and whether they are the data source's
    own (:func:`harness.cohort.folds.given_partitions`) rather than the harness rule."""
    from harness.cohort.folds import given_partitions, rule_partitions

    given = given_partitions(cohort.path, stays["stay_id"].to_numpy())
    if given is not None:
        return given, True
    fold = stays["fold"].to_numpy()
    return rule_partitions(fold, int(fold.max()) if len(fold) else 0), False


def label_frame(stays: pd.DataFrame) -> pd.DataFrame:
    """Every task's labels as binary columns (a multiclass label one-vs-rest: ``col=class``)."""
    from harness.cohort.spec import load_tasks

    cols: dict[str, np.ndarray] = {}
    for task in load_tasks():
        for c in task.label_columns:
            if c not in stays or c in cols:
                continue
            y = pd.to_numeric(stays[c], errors="coerce").to_numpy(np.float64)
            if task.kind == "multiclass":
                for k in np.unique(y[~np.isnan(y)]):
                    cols[f"{c}={int(k)}"] = np.where(np.isnan(y), np.nan, (y == k).astype(float))
            else:
                cols[c] = y
    return pd.DataFrame(cols, index=stays.index)


def source_image_times(cohort: Any) -> tuple[pd.Series | None, str | None]:
    """dicom_id -> study time re-read from the MIMIC-CXR metadata the cohort was built from, or
    (None, why not)."""
    source = cohort.manifest.get("source") or {}
    meta = (source.get("files") or {}).get("mimic-cxr-metadata")
    if not meta:
        return None, "the source has no MIMIC-CXR metadata table"
    path = Path(meta["path"])
    if not path.is_file():
        return None, f"the metadata table is no longer at {path}"
    st = path.stat()
    if [st.st_size, st.st_mtime_ns] != [meta.get("size"), meta.get("mtime_ns")]:
        return None, "the metadata table changed since the build"
    wanted = set(cohort.stays["dicom_id"].dropna().astype(str))
    columns = ["dicom_id", "StudyDate", "StudyTime"]
    try:
        if path.name.endswith(".parquet"):
            frame = pd.read_parquet(path, columns=columns)
        else:
            frame = pd.read_csv(path, usecols=columns, dtype=str)
    except (ValueError, OSError) as exc:
        return None, f"the metadata table could not be read ({type(exc).__name__})"
    frame = frame.astype(str)
    frame = frame[frame["dicom_id"].isin(wanted)]
    # parsed as text (YYYYMMDD + HHMMSS[.ffffff], zero-padded), not with the builder's
    # arithmetic on numbers: a slip in either shows up as a mismatch
    clock = frame["StudyTime"].str.split(".", n=1)
    whole = clock.str[0].str.zfill(6)
    fraction = clock.str[1].fillna("0").str.ljust(6, "0").str[:6]
    times = pd.to_datetime(
        frame["StudyDate"].str[:8] + whole + fraction, format="%Y%m%d%H%M%S%f", errors="coerce"
    )
    return pd.Series(times.to_numpy(), index=frame["dicom_id"].to_numpy()), None


def _ehr_features(cohort: Any, stays: pd.DataFrame, hourly: pd.DataFrame) -> tuple[Any, bool]:
    """The cohort's EHR features aligned with ``stays``: the verified cache when it exists (what
    models read), else computed from the hourly series. Returns (features, from_cache)."""
    from harness import store
    from harness.encode.ehr import N_HOURS, build_ehr_tensors

    if store.ehr_store_exists(cohort):
        ehr = store.read_ehr(cohort)
        pos = pd.Index(np.asarray(ehr.stay_id)).get_indexer(stays["stay_id"].to_numpy())
        if (pos >= 0).all():
            ehr.stay_id = np.asarray(ehr.stay_id)[pos]
            ehr.values = np.asarray(ehr.values)[pos]
            ehr.observed = np.asarray(ehr.observed)[pos]
            ehr.summary = np.asarray(ehr.summary)[pos]
            return ehr, True
    inside = hourly[(hourly["hour"] >= 0) & (hourly["hour"] < N_HOURS)]
    return build_ehr_tensors(inside, stays["stay_id"].to_numpy(), cohort.variables), False


def _embeddings(encoder_key: str, dicom: list[str]) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(embeddings of the usable images, their mask over ``dicom``, note)."""
    from harness import store

    if not dicom:
        return None, np.zeros(0, bool), "no linked images"
    if not (store.cxr_store_path(encoder_key) / "zarr.json").is_file():
        return None, np.zeros(len(dicom), bool), "not encoded yet (run `harness encode`)"
    feats = store.read_cxr(encoder_key, dicom)
    ok = np.asarray(feats.ok, dtype=bool)
    return np.asarray(feats.embedding, np.float32)[ok], ok, f"{int(ok.sum())} embeddings"


# ---------------------------------------------------------------------------------- the audit


def _timed(name: str, fn: Callable[[], Check], seconds: dict[str, float], bar: Bar) -> Check:
    bar.doing(name)
    t0 = time.perf_counter()
    out = fn()
    seconds[name] = round(time.perf_counter() - t0, 3)
    bar.advance()
    return out


def audit_cohort(
    cohort: Any, encoder: str = "default", *, thresholds: Thresholds | None = None
) -> tuple[list[Check], dict[str, Any]]:
    """Run every check on a loaded cohort; returns the checks and facts about the inputs."""
    with progress_bar(f"audit {cohort.name}", len(CHECK_NAMES), unit="check") as bar:
        found, facts = _audit_cohort(cohort, encoder, thresholds, bar)
        bar.doing(None)
    return found, facts


def _audit_cohort(
    cohort: Any, encoder: str, thresholds: Thresholds | None, bar: Bar
) -> tuple[list[Check], dict[str, Any]]:
    """:func:`audit_cohort`, each check counted on ``bar``."""
    from harness.encode.registry import encoder_key_for
    from harness.encode.run import cohort_images

    thresholds = thresholds or Thresholds()
    stays = cohort.stays.reset_index(drop=True)
    rules = cohort.manifest.get("rules") or {}
    prediction_hours = float(rules.get("prediction_hours", 48))
    seconds: dict[str, float] = {}
    partitions, given = partition_table(cohort, stays)
    fold = stays["fold"].to_numpy()
    out: list[Check] = []
    out.append(
        _timed(
            "subject_overlap",
            lambda: checks.subject_overlap(stays["subject_id"].to_numpy(), partitions, given=given),
            seconds,
            bar,
        )
    )

    linked = (stays["has_cxr"].fillna(0).astype(bool) & stays["dicom_id"].notna()).to_numpy()
    rows = np.flatnonzero(linked)
    dicom = [str(d) for d in stays.loc[linked, "dicom_id"]]
    key = encoder_key_for(encoder)
    emb, ok, emb_note = _embeddings(key, dicom)

    def dup() -> Check:
        paths = cohort_images(cohort) if dicom else {}
        return duplicate_images(
            np.asarray(dicom, object),
            partitions[rows],
            fold[rows],
            hashes=content_hashes([paths.get(d) for d in dicom]),
            embedding=emb,
            embedded=ok,
            threshold=thresholds.near_duplicate,
            no_embedding=emb_note,
        )

    out.append(_timed("duplicate_images", dup, seconds, bar))
    hourly = cohort.hourly()
    ehr, from_cache = _ehr_features(cohort, stays, hourly)
    times, times_note = source_image_times(cohort)
    out.append(
        _timed(
            "time_leakage",
            lambda: checks.time_leakage(
                stays,
                hourly,
                prediction_hours=prediction_hours,
                lookback_hours=float(rules.get("cxr_lookback_hours", 0.0)),
                observed=np.asarray(ehr.observed) if from_cache else None,
                observed_stay_ids=np.asarray(ehr.stay_id),
                observed_variables=list(ehr.variables),
                source_image_times=times,
            ),
            seconds,
            bar,
        )
    )
    if times_note:
        out[-1].details["source_image_times"] = times_note

    labels = label_frame(stays)
    train = partitions[:, 0] == TRAIN if partitions.shape[1] else np.ones(len(stays), bool)
    features = pd.concat(
        [
            pd.DataFrame(np.asarray(ehr.summary, np.float64), columns=list(ehr.summary_names)),
            checks.demographic_features(stays, DEMOGRAPHICS),
            pd.DataFrame(
                {
                    "has_cxr": linked.astype(np.float64),
                    "cxr_time_hours": np.where(
                        linked, stays["cxr_time_hours"].astype(float), np.nan
                    ),
                }
            ),
        ],
        axis=1,
    )
    if emb is not None:
        img_rows = rows[ok]
        in_train = train[img_rows]
        pos_in_train = np.cumsum(train) - 1
        emb_args = {
            "embedding": emb[in_train],
            "embedding_rows": pos_in_train[img_rows[in_train]],
            "groups": stays["subject_id"].to_numpy()[img_rows[in_train]],
        }
    else:
        emb_args = {}
    out.append(
        _timed(
            "label_leakage",
            lambda: checks.label_leakage(
                features.loc[train].reset_index(drop=True),
                labels.loc[train].reset_index(drop=True),
                threshold=thresholds.label_auroc,
                min_class=thresholds.min_class,
                **emb_args,
            ),
            seconds,
            bar,
        )
    )
    out[-1].details["rows"] = "training partition of fold 1"
    keyvars = checks.key_variables(np.asarray(ehr.summary), list(ehr.summary_names), stays)
    out.append(
        _timed(
            "distribution_shift",
            lambda: checks.distribution_shift(fold, labels, keyvars, q=thresholds.shift_q),
            seconds,
            bar,
        )
    )
    facts = {
        "n_stays": int(len(stays)),
        "n_subjects": int(stays["subject_id"].nunique()),
        "n_folds": int(partitions.shape[1]),
        "partitions": "given by the source" if given else "harness subject folds",
        "n_linked_images": int(len(dicom)),
        "embeddings": emb_note,
        "ehr_features": "feature cache" if from_cache else "computed from hourly.parquet",
        "seconds": seconds,
    }
    return out, facts


def run_audit(
    cohort: str = "base",
    dataset: str | None = None,
    encoder: str = "default",
    *,
    force: bool = False,
    thresholds: Thresholds | None = None,
    loaded: Any = None,
) -> Audit:
    """Audit a built cohort (by name, or ``loaded``), reusing a current audit unless ``force``."""
    from harness.cohort import load_cohort
    from harness.encode.registry import encoder_key_for

    thresholds = thresholds or Thresholds()
    c = loaded if loaded is not None else load_cohort(cohort, dataset)
    key_enc = encoder_key_for(encoder)
    key = audit_key(c, key_enc, thresholds)
    directory = audit_dir(c, key_enc, thresholds)
    path = directory / "audit.json"
    if not force and (record := _read(path)) is not None and record.get("key") == key:
        return Audit(record, path, reused=True)  # a current audit: read without locking
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path):  # audit.json.lock
        if not force and (record := _read(path)) is not None and record.get("key") == key:
            return Audit(record, path, reused=True)  # another process has just written it
        t0 = time.perf_counter()
        found, facts = audit_cohort(c, encoder, thresholds=thresholds)
        record = {
            "audit_version": AUDIT_VERSION,
            "key": key,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "harness_version": __version__,
            "dataset": c.dataset,
            "cohort": c.name,
            "cohort_fingerprint": c.fingerprint,
            "encoder": encoder,
            "encoder_key": key_enc,
            "thresholds": thresholds.__dict__,
            "verdict": FAILED if any(x.status == FAILED for x in found) else PASSED,
            "inputs": facts,
            "elapsed_s": round(time.perf_counter() - t0, 3),
            "checks": {x.name: x.record() for x in found},
        }
        audit = Audit(record, path)
        atomic_write_json(path, record)
        atomic_write_text(audit.report_path, render_report(record))
    return audit


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ensure_audit(cohort: Any, encoder: str, *, allow_leaks: bool = False) -> Audit:
    """The current audit of a loaded cohort (run now when there is none); a failed audit raises
    :class:`LeakError` unless ``allow_leaks``."""
    audit = run_audit(loaded=cohort, encoder=encoder)
    if not audit.passed and not allow_leaks:
        raise LeakError(
            f"the audit of cohort {cohort.name!r} ({cohort.fingerprint[:12]}) found leaks: "
            + "; ".join(f"{n}: {audit.record['checks'][n]['summary']}" for n in audit.names(FAILED))
            + f"\nReport: {audit.report_path}\nFix: remove the leak from the data source and "
            f"rebuild the cohort, or pass {ALLOW_FLAG} to evaluate anyway (the result and the "
            "leaderboard then say so)"
        )
    if not audit.passed:
        log.warning("%s (evaluated anyway: %s)", audit.one_line(), ALLOW_FLAG)
    return audit


# ------------------------------------------------------------------------------------- report


def render_report(record: dict[str, Any]) -> str:
    """audit.md: the verdict, each check's status, threshold and aggregate findings (no ids)."""
    lines = [
        f"# Leak audit: {record['dataset']} / {record['cohort']}",
        "",
        f"- verdict: **{record['verdict']}**",
        f"- cohort fingerprint: `{record['cohort_fingerprint']}`",
        f"- encoder: `{record['encoder']}` (`{record['encoder_key']}`)",
        f"- audited: {record['created_at']} by harness {record['harness_version']} "
        f"in {record['elapsed_s']:.1f} s",
        "- inputs: " + ", ".join(f"{k} {v}" for k, v in record["inputs"].items() if k != "seconds"),
        "",
        "| check | status | threshold | finding |",
        "|---|---|---|---|",
    ]
    for name, c in record["checks"].items():
        lines.append(f"| {name} | {c['status']} | {c['threshold']} | {c['summary']} |")
    lines.append("")
    for name, c in record["checks"].items():
        lines += [
            f"## {name}",
            "",
            f"{c['summary']}",
            "",
            "```json",
            json.dumps(c["details"], indent=1, sort_keys=True, default=str)[:20000],
            "```",
            "",
        ]
    lines.append(
        "Subject and image ids of the findings are in audit.json beside this file (private: it "
        "never leaves the cache)."
    )
    return "\n".join(lines) + "\n"
