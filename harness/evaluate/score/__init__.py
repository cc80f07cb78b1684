"""Scoring: pooled out-of-fold predictions -> the task blocks of ``result.json`` (aggregates only).

The orchestration collects, per task and cohort, one pooled out-of-fold probability array per
seed (every stay predicted once per seed by the fold model that did not see it) and scores it
(:func:`~harness.evaluate.score.task.score_task_cohort`, which chooses the references and calls
:func:`~harness.evaluate.score.predictions.score_predictions`). One module per block:

- :mod:`~harness.evaluate.score.accuracy`: every metric with its CI, per label, per resample;
- :mod:`~harness.evaluate.score.deltas`: paired deltas against the reference submissions;
- :mod:`~harness.evaluate.score.fusion`: the multilabel per-label fusion gain;
- :mod:`~harness.evaluate.score.robustness`: degradation curves under the test scenarios;
- :mod:`~harness.evaluate.score.fairness`: per-group metrics at the validation threshold;
- :mod:`~harness.evaluate.score.references`: which references, chosen on validation;
- :mod:`~harness.evaluate.score.cross_cohort`: the model on the other cohorts' test stays.

Conventions: the point value of a metric is the mean over seeds of the metric on the pooled
predictions; its 95% CI is the percentile interval of the same seed-mean over the shared
patient-level resamples; ``mean``/``sd`` are over folds x seeds units (sd with ddof=1).
Fairness is computed on the seed-mean probability (one decision per stay). Every summary also
records ``undefined_fraction``, the share of resamples on which the metric is undefined (one class
present) and left out of the CI, and ``unstable`` when that share exceeds 1 %. Paired-delta
p-values use the normal approximation with the bootstrap SE (``bootstrap.p_value_method``); the
per-label fusion gains are BH-adjusted within the family named in ``bh_family``. Robustness areas
carry a percentile CI from the same shared resamples. ``main_resamples`` holds the headline
metric's seed-mean value on every shared resample (rounded, null where undefined), for the
leaderboard's paired tests against the leader; it is checked but never published.
"""

from __future__ import annotations

from harness.evaluate.score.predictions import score_predictions
from harness.evaluate.score.robustness import robustness_curve
from harness.evaluate.score.task import score_task_cohort

__all__ = ["robustness_curve", "score_predictions", "score_task_cohort"]
