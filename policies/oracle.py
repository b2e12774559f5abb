"""Oracle (evaluation only): knows every model's true quality and cost on each query."""

from __future__ import annotations

from typing import Any

import numpy as np

from policies._priors import fill_cost, masked_col_mean
from policies.base import Estimate, Policy, PolicyError, TrainData


class OraclePolicy(Policy):
    """Returns the true (quality, cost) passed as ``truth``; an upper bound, never served.

    With ``lam`` near 0 the shared ``choose`` then picks the cheapest model that answered
    correctly. Missing true quality counts as 0 and missing cost as the model's mean train
    cost, as in evaluation.
    """

    name = "oracle"
    uses_embeddings = False  # ignores the query embedding
    evaluation_only = True

    def __init__(self) -> None:
        pass

    def _fit(self, data: TrainData) -> None:
        cost = data.cost
        self.mean_cost_ = masked_col_mean(fill_cost(cost), 0.0)

    def _predict(self, X, tasks, truth) -> Estimate:
        try:
            q, c = truth
        except (TypeError, ValueError):
            raise PolicyError("oracle: truth must be a (quality, cost) pair") from None
        q = np.asarray(q, dtype=np.float64)
        c = np.asarray(c, dtype=np.float64)
        shape = (X.shape[0], len(self.models_))
        for arr, what in ((q, "quality"), (c, "cost")):
            if arr.shape != shape:
                raise PolicyError(f"oracle: true {what} has shape {arr.shape}, expected {shape}")
        q = np.nan_to_num(q, nan=0.0)
        c = np.where(np.isnan(c), self.mean_cost_[None, :], c)
        return Estimate(q, c)

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean_cost": self.mean_cost_}, {}

    def _set_state(self, arrays, meta) -> None:
        self.mean_cost_ = arrays["mean_cost"]
