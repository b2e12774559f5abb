"""Random baseline: uniform random quality scores, train-mean costs."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from policies._priors import fill_cost, masked_col_mean
from policies.base import Estimate, Policy, TrainData


class RandomPolicy(Policy):
    """Scores every model with a uniform random number; cost is the train mean per model.

    The draw is seeded by ``seed`` and the query embedding itself, so one query always gets
    the same scores (reproducible evaluation, identical decisions after save/load) while
    different queries get independent draws.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _fit(self, data: TrainData) -> None:
        cost = data.cost
        self.mean_cost_ = masked_col_mean(fill_cost(cost), 0.0)

    def _predict(self, X, tasks, truth) -> Estimate:
        m = len(self.models_)
        q = np.empty((X.shape[0], m))
        for i, row in enumerate(np.ascontiguousarray(X, dtype=np.float32)):
            rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, zlib.crc32(row.tobytes())])
            q[i] = rng.random(m)
        return Estimate(q, np.tile(self.mean_cost_, (X.shape[0], 1)))

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean_cost": self.mean_cost_}, {}

    def _set_state(self, arrays, meta) -> None:
        self.mean_cost_ = arrays["mean_cost"]
