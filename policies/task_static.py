"""Per-task static baseline: each task's train mean quality and cost per model."""

from __future__ import annotations

from typing import Any

import numpy as np

from policies._priors import TaskTable, encode_tasks, fill_cost
from policies.base import Estimate, Policy, PolicyError, TrainData


class TaskStaticPolicy(Policy):
    """Estimates are the per-task train means of quality and cost for every model.

    Needs the task label of each query at predict time; queries without a label (or with
    a task unseen in training) get the global train means. ``smoothing`` adds that many
    pseudo-rows of the global mean to each task's mean (0 = plain task means).
    """

    name = "task-static"
    uses_embeddings = False  # ignores the query embedding

    def __init__(self, smoothing: float = 0.0) -> None:
        self.smoothing = smoothing

    def _fit(self, data: TrainData) -> None:
        X, quality, cost, tasks = data.X, data.quality, data.cost, data.tasks
        smoothing = float(self.smoothing)
        if not np.isfinite(smoothing) or smoothing < 0:
            raise PolicyError(f"task-static: smoothing must be >= 0, got {self.smoothing!r}")
        if tasks is None:  # no labels: only the global means are known
            names, codes = [], np.empty(0, dtype=np.int64)
        else:
            names, codes = encode_tasks(tasks, X.shape[0])
        self.table_ = TaskTable.fit(quality, fill_cost(cost), codes, names, smoothing)

    def _predict(self, X, tasks, truth) -> Estimate:
        q, c = self.table_.lookup(tasks, X.shape[0])
        return Estimate(q, c)

    @property
    def tasks_(self) -> list[str]:
        return list(self.table_.names)

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self.table_.arrays(), {"tasks": self.table_.names}

    def _set_state(self, arrays, meta) -> None:
        self.table_ = TaskTable.from_arrays(arrays, list(meta.get("tasks", [])))
