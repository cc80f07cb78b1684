"""The numeric layer of scoring: metrics, the shared bootstrap, comparisons and fairness tables.

- :mod:`harness.metrics.registry`: every metric, its direction and batched form (:data:`METRICS`),
  and the task ``main_metric`` spellings;
- :mod:`harness.metrics.bootstrap`: patient-level resamples, CIs and paired deltas;
- :mod:`harness.metrics.comparisons`: multiple-comparison control and per-label fusion gain;
- :mod:`harness.metrics.fairness`: group fairness tables and tests of their gaps.

Cohort specs, training, the sandbox worker, `harness.evaluate` and the leaderboard all read these
modules, so they import nothing of the harness but the neutral `harness.registry` and
`harness.errors`: a package below them cannot close an import cycle.
"""
