"""Cohorts: task and cohort definitions, the MIMIC cohort builder, folds and fingerprints.

``load_cohort`` reads a built cohort; ``harness.cohort.build.build_cohorts`` builds one.
"""

from __future__ import annotations

from harness.cohort.load import Cohort, load_cohort

__all__ = ["Cohort", "load_cohort"]
