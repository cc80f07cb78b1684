"""Cohorts: task and cohort definitions, the cohort builders, folds and fingerprints.

Builders: MIMIC-IV (:mod:`harness.cohort.build`), CLIF (:mod:`harness.cohort.clif`) and CareBench
folders (:mod:`harness.cohort.carebench`), the last two through the shared writer of
:mod:`harness.cohort.external`; :mod:`harness.cohort.datasources` registers all three.

``load_cohort`` reads a built cohort; ``harness.cohort.build.build_cohorts`` builds one.
"""

from __future__ import annotations

from harness.cohort.load import Cohort, load_cohort

__all__ = ["Cohort", "load_cohort"]
