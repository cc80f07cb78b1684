"""HAIM-style estimator: gradient boosting (or logistic regression) on flat fused features."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


class TabularGBM:
    def __init__(
        self,
        spec,
        model: str = "hgb",
        max_iter: int = 100,
        learning_rate: float = 0.1,
        max_leaf_nodes: int = 15,
        l2_regularization: float = 1.0,
        C: float = 1.0,
    ):
        if model not in ("hgb", "logistic"):
            raise ValueError(f"params.model must be 'hgb' or 'logistic', not {model!r}")
        self.spec = spec
        self.model = model
        self.options = dict(
            max_iter=max_iter,
            learning_rate=learning_rate,
            max_leaf_nodes=max_leaf_nodes,
            l2_regularization=l2_regularization,
        )
        self.C = C

    def _make(self):
        if self.model == "logistic":
            return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000))
        return HistGradientBoostingClassifier(random_state=self.spec.seed, **self.options)

    def _fit_one(self, x, y):
        if len(np.unique(y)) < 2:  # a label absent from training: predict its constant rate
            return float(np.mean(y))
        return self._make().fit(x, y)

    def fit(self, x, y):
        if self.spec.task_kind == "multilabel":
            self.models_ = [self._fit_one(x, y[:, j]) for j in range(y.shape[1])]
        else:
            self.models_ = [self._make().fit(x, y)]
        return self

    @staticmethod
    def _positive(model, x):
        if isinstance(model, float):
            return np.full(len(x), model)
        return model.predict_proba(x)[:, 1]

    def predict_proba(self, x):
        if self.spec.task_kind == "multilabel":
            return np.stack([self._positive(m, x) for m in self.models_], axis=1)
        model = self.models_[0]
        proba = model.predict_proba(x)
        if self.spec.task_kind == "binary":
            return proba[:, 1]
        full = np.zeros((len(x), self.spec.n_outputs))
        full[:, model.classes_.astype(int)] = proba  # classes unseen in training get 0
        return full
