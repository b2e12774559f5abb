"""Single-model baselines: a fixed model, or the model with the best mean train quality."""

from __future__ import annotations

from typing import Any

import numpy as np

from policies._priors import fill_cost, masked_col_mean
from policies.base import Estimate, Policy, PolicyError, TrainData

#: quality estimate given to the models a single-model policy never picks
EXCLUDED_QUALITY = -1.0


class SingleModelPolicy(Policy):
    """Always route to ``model``, whatever ``lam`` or ``budget``.

    The chosen model's estimates are its train mean quality and cost. Every other model
    gets quality ``-1`` and a cost above the chosen model's, so it is dominated for any
    ``lam >= 0`` and any budget; if the chosen model is excluded by ``allowed`` (a backend
    on cooldown), ``choose`` falls back to the cheapest allowed model.
    """

    name = "single"
    uses_embeddings = False  # ignores the query embedding

    def __init__(self, model: str | None = None) -> None:
        self.model = model

    def _check_params(self) -> None:
        if self.model is None or str(self.model).strip() == "":
            raise PolicyError("single: the parameter 'model' is required (--param model=NAME)")

    def _target(self, quality: np.ndarray, cost: np.ndarray) -> int:
        self._check_params()
        if str(self.model) not in self.models_:
            raise PolicyError(f"single: unknown model {self.model!r}; known: {self.models_}")
        return self.models_.index(str(self.model))

    def _fit(self, data: TrainData) -> None:
        quality, cost = data.quality, data.cost
        self.mean_quality_ = masked_col_mean(quality, 0.0)
        self.mean_cost_ = masked_col_mean(fill_cost(cost), 0.0)
        self.index_ = self._target(quality, cost)
        self.chosen_model_ = self.models_[self.index_]

    def _predict(self, X, tasks, truth) -> Estimate:
        n, j = X.shape[0], self.index_
        q = np.full(len(self.models_), EXCLUDED_QUALITY)
        q[j] = self.mean_quality_[j]
        c = self.mean_cost_[j] + self.mean_cost_ + 1e-12
        c[j] = self.mean_cost_[j]
        return Estimate(np.tile(q, (n, 1)), np.tile(c, (n, 1)))

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"mean_quality": self.mean_quality_, "mean_cost": self.mean_cost_}
        return arrays, {"chosen_model": self.chosen_model_}

    def _set_state(self, arrays, meta) -> None:
        self.mean_quality_ = arrays["mean_quality"]
        self.mean_cost_ = arrays["mean_cost"]
        self.chosen_model_ = str(meta["chosen_model"])
        if self.chosen_model_ not in self.models_:
            raise PolicyError(f"{self.name}: artifact names unknown model {self.chosen_model_!r}")
        self.index_ = self.models_.index(self.chosen_model_)


class BestSinglePolicy(SingleModelPolicy):
    """Always the model with the best mean train quality (ties: the cheaper one)."""

    name = "best-single"

    def __init__(self) -> None:
        self.model = None

    def _check_params(self) -> None:
        pass

    def _target(self, quality: np.ndarray, cost: np.ndarray) -> int:
        mean_q = masked_col_mean(quality, 0.0)
        best = np.flatnonzero(mean_q >= mean_q.max() - 1e-12)
        return int(best[np.argmin(masked_col_mean(fill_cost(cost), 0.0)[best])])
