"""Where an entry's results live in the cache.

``cache/results/<dataset>/<name>/`` holds ``result.json`` (the same submission evaluated on two
datasets keeps two results), ``owner.json`` (the folder that owns the entry name, local only)
and ``predictions/<task>/<cohort build>/<run key>/fold<k>_seed<s>.parquet``, one file of
per-stay predictions per finished unit (local only, never published).
"""

from __future__ import annotations

from pathlib import Path

from harness import config

#: The file recording which submission folder owns an entry name.
OWNER_FILE = "owner.json"


def result_dir(name: str, dataset: str | None = None) -> Path:
    """``cache/results/<dataset>/<name>``: one folder per dataset and submission."""
    return config.results_dir() / (dataset or config.DEFAULT_DATASET) / name


def result_path(name: str, dataset: str | None = None) -> Path:
    return result_dir(name, dataset) / "result.json"


def predictions_dir(
    name: str, task: str, cohort_dir_name: str, key: str, dataset: str | None = None
) -> Path:
    """The unit files of one entry, task and cohort build under one run key."""
    return result_dir(name, dataset) / "predictions" / task / cohort_dir_name / key


def unit_path(base: Path, fold: int, seed: int) -> Path:
    """The unit file of (``fold``, ``seed``) in the predictions folder ``base``."""
    return base / f"fold{fold}_seed{seed}.parquet"
