"""Cheapest-model baseline."""

from __future__ import annotations

from typing import Any

import numpy as np

from policies._priors import fill_cost, masked_col_mean
from policies.base import Estimate, Policy, TrainData


class CheapestPolicy(Policy):
    """Always the model with the lowest mean train cost.

    Every model gets the same quality estimate (the overall train mean quality), so the
    shared ``choose`` picks the cheapest model for any ``lam`` (ties go to the cheaper
    model) and the cheapest fitting model under a ``budget``.
    """

    name = "cheapest"
    uses_embeddings = False  # ignores the query embedding

    def __init__(self) -> None:
        pass

    def _fit(self, data: TrainData) -> None:
        quality, cost = data.quality, data.cost
        self.mean_cost_ = masked_col_mean(fill_cost(cost), 0.0)
        self.mean_quality_ = float(np.nanmean(quality))

    def _predict(self, X, tasks, truth) -> Estimate:
        n, m = X.shape[0], len(self.models_)
        return Estimate(np.full((n, m), self.mean_quality_), np.tile(self.mean_cost_, (n, 1)))

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean_cost": self.mean_cost_}, {"mean_quality": self.mean_quality_}

    def _set_state(self, arrays, meta) -> None:
        self.mean_cost_ = arrays["mean_cost"]
        self.mean_quality_ = float(meta["mean_quality"])
