"""kNN quality estimates as extra bandit features (LinUCB's ``knn_features`` option).

A linear model on raw embeddings is a weak prior: on the RouterBench subset the ridge
prior routes well below the offline kNN at the same spend. Appending each model's kNN
estimate to the bandit's features lets the per-arm ridge start from the kNN's estimates
(it learns a weight near 1 on its own arm's column) and online updates correct them.

The ridge prior is fitted on *out-of-fold* kNN estimates of the train rows (a kNN with the
parameters tuned on the whole train set, refitted on the other folds), so the prior learns
how much to trust an estimate made without the row itself, as serving makes them. Serving
uses the kNN fitted on all train rows. Columns are centred on their train mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from policies._priors import kfold

FOLDS = 5
SUBDIR = "knn_features"  # the kNN's artifact, inside the bandit's artifact directory
CENTER = "bandit_center"  # the columns' train means, in the kNN artifact's metadata


class KNNFeatures:
    """Per-model kNN quality estimates (n, m), centred, for bandit features."""

    def __init__(self, knn: Any, center: np.ndarray, cols: np.ndarray | None = None) -> None:
        self.knn = knn
        self.center = np.asarray(center, dtype=np.float64)
        # the models with train outcomes, which the kNN covers (the others: the row's mean)
        self.cols = np.arange(len(self.center)) if cols is None else np.asarray(cols, int)

    @property
    def width(self) -> int:
        return len(self.center)

    @classmethod
    def fit(cls, X: np.ndarray, quality: np.ndarray, cost: np.ndarray, models: list[str],
            tasks: list[str] | None, seed: int) -> tuple[KNNFeatures, np.ndarray]:
        """The serving kNN and the centred out-of-fold estimates of the train rows."""
        from policies.knn import KNNPolicy

        cols = np.flatnonzero(~np.isnan(quality).all(axis=0))
        quality, cost = quality[:, cols], cost[:, cols]
        knn = KNNPolicy(seed=seed).fit(X, quality, cost, [models[j] for j in cols], tasks)
        n, m = len(X), len(models)
        if n < 2 * FOLDS:  # too few rows to hold any out: in-sample estimates
            raw = _widen(_quality(knn, X), cols, m)
        else:
            raw = np.empty((n, m))
            for val in kfold(n, FOLDS, seed):
                tr = np.setdiff1d(np.arange(n), val)
                sub = _refit(knn, X, quality, cost, tasks, tr)
                raw[val] = _widen(_quality(sub, X[val]), cols, m)
        center = raw.mean(axis=0)
        return cls(knn, center, cols), raw - center

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Centred kNN estimates (n, m) for embeddings X (n, d)."""
        return _widen(_quality(self.knn, X), self.cols, self.width) - self.center

    def refit_transform(self, data: Any, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Centred estimates for train rows ``query`` of the same kNN (its tuned parameters)
        refitted on train rows ``rows`` of ``data`` (a TrainData) only."""
        sub = _refit(self.knn, data.X, data.quality[:, self.cols], data.cost[:, self.cols],
                     data.tasks, rows)
        return _widen(_quality(sub, data.X[query]), self.cols, self.width) - self.center

    def save(self, path: Path) -> None:
        """The kNN's artifact in ``path``/knn_features, the centre in its metadata."""
        self.knn.save(Path(path) / SUBDIR, meta={CENTER: self.center.tolist()})

    @classmethod
    def load(cls, path: Path, models: list[str]) -> KNNFeatures:
        """What :meth:`save` wrote in the bandit's artifact ``path`` (bandit ``models``)."""
        from policies.base import ArtifactError, Policy
        from policies.knn import KNNPolicy

        sub = Path(path) / SUBDIR
        if not sub.is_dir():
            raise ArtifactError(f"{path}: knn_features is set but {SUBDIR}/ is missing")
        knn = Policy.load(sub)
        center = knn.meta_.get(CENTER) if isinstance(knn, KNNPolicy) else None
        if center is None or len(center) != len(models) or not set(knn.models_) <= set(models):
            raise ArtifactError(f"{sub}: not a kNN over the bandit's models {models}")
        return cls(knn, np.asarray(center), np.array([models.index(m) for m in knn.models_]))


def _refit(knn: Any, X: np.ndarray, quality: np.ndarray, cost: np.ndarray,
           tasks: list[str] | None, rows: np.ndarray) -> Any:
    """``knn``'s configuration with its tuned k/alpha/temperature, fitted on ``rows``."""
    from policies.knn import KNNPolicy

    fixed = {"k": knn.k_, "alpha": knn.alpha_, "temperature": knn.temperature_,
             "weighting": knn.weighting, "prior": knn.prior, "seed": knn.seed}
    return KNNPolicy(**fixed).fit(X[rows], quality[rows], cost[rows], knn.models_,
                                  [tasks[i] for i in rows] if tasks else None)


def _quality(knn: Any, X: np.ndarray) -> np.ndarray:
    """kNN quality estimates (n, models with train outcomes), non-finite cells as 0."""
    q = np.asarray(knn.predict(np.atleast_2d(X)).quality, dtype=np.float64)
    return np.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0)


def _widen(q: np.ndarray, cols: np.ndarray, m: int) -> np.ndarray:
    """(n, m) estimates from the kNN's columns ``cols``; a model without train outcomes
    gets the row's mean over the others (an average model, as LinUCB's cold arms)."""
    if len(cols) == m:
        return q
    out = np.repeat(q.mean(axis=1, keepdims=True), m, axis=1)
    out[:, cols] = q
    return out
