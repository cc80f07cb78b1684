"""`harness audit`: leak checks of a built cohort and its feature caches before anything is scored.

:mod:`~harness.audit.checks` holds the checks on plain arrays (subject overlap, time leakage,
label leakage, distribution shift), :mod:`~harness.audit.duplicates` the duplicate-image search
(content hashes, faiss over centred embeddings), :mod:`~harness.audit.run` reads a cohort, runs
them, and caches ``audit.json`` + ``audit.md``.
"""

from harness.audit.run import Audit, LeakError, Thresholds, ensure_audit, run_audit

__all__ = ["Audit", "LeakError", "Thresholds", "ensure_audit", "run_audit"]
