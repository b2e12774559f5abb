"""The one in-memory routing dataset type shared by loaders, policies and evaluation.

Missing cells
-------------
Real routing data has holes (a model was not run on a prompt, or its grade is absent).
They are stored as NaN in ``quality`` (and ``cost``). The documented policy is:

* training: a missing cell is *dropped* for that (prompt, model) pair; ``mask`` says which
  cells are observed, and policies fit per-model estimates on observed cells only;
* evaluation: a missing quality counts as 0 (the model gave no usable answer) and a
  missing cost as that model's mean observed cost (see :meth:`RoutingDataset.eval_matrices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RoutingDataset:
    """Prompts x models table of quality in [0, 1] and cost in USD per call."""

    name: str
    prompts: list[str]
    tasks: list[str]
    models: list[str]
    quality: np.ndarray  # (n, m) float64, NaN where missing
    cost: np.ndarray  # (n, m) float64 USD per call, NaN where missing
    ids: list[str] = field(default_factory=list)
    responses: list[list[str | None]] | None = None  # (n, m) or None

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        self.quality = np.asarray(self.quality, dtype=np.float64).reshape(n, m)
        self.cost = np.asarray(self.cost, dtype=np.float64).reshape(n, m)
        if not self.ids:
            self.ids = [str(i) for i in range(n)]
        if len(self.tasks) != n or len(self.ids) != n:
            raise ValueError(f"{self.name}: prompts, tasks and ids must have the same length")
        if len(set(self.models)) != m:
            raise ValueError(f"{self.name}: duplicate model names")
        if self.responses is not None and len(self.responses) != n:
            raise ValueError(f"{self.name}: responses must have one row per prompt")
        q = self.quality[~np.isnan(self.quality)]
        if q.size and (q.min() < 0 or q.max() > 1):
            raise ValueError(f"{self.name}: quality must lie in [0, 1]")
        c = self.cost[~np.isnan(self.cost)]
        if c.size and c.min() < 0:
            raise ValueError(f"{self.name}: cost must be >= 0")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def mask(self) -> np.ndarray:
        """Boolean (n, m): True where the quality cell is observed."""
        return ~np.isnan(self.quality)

    @property
    def task_names(self) -> list[str]:
        return sorted(set(self.tasks))

    def model_mean_cost(self) -> np.ndarray:
        """Mean observed cost per model (0 where a model has no observed cost)."""
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.where(np.isnan(self.cost), np.nan, self.cost), axis=0)
        return np.nan_to_num(mean, nan=0.0)

    def eval_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """Quality and cost with missing cells filled by the evaluation policy."""
        quality = np.nan_to_num(self.quality, nan=0.0)
        cost = np.where(np.isnan(self.cost), self.model_mean_cost()[None, :], self.cost)
        return quality, cost

    def subset(self, idx: Sequence[int] | np.ndarray) -> RoutingDataset:
        idx = np.asarray(idx, dtype=np.int64)
        return RoutingDataset(
            name=self.name,
            prompts=[self.prompts[i] for i in idx],
            tasks=[self.tasks[i] for i in idx],
            models=list(self.models),
            quality=self.quality[idx],
            cost=self.cost[idx],
            ids=[self.ids[i] for i in idx],
            responses=None if self.responses is None else [self.responses[i] for i in idx],
        )

    def split(self, test_fraction: float = 0.3, seed: int = 0) -> tuple[RoutingDataset, RoutingDataset]:
        """Seeded, deterministic split, stratified by task."""
        if not 0 < test_fraction < 1:
            raise ValueError("test_fraction must be in (0, 1)")
        rng = np.random.default_rng(seed)
        tasks = np.asarray(self.tasks)
        train_idx: list[int] = []
        test_idx: list[int] = []
        for task in self.task_names:
            rows = np.flatnonzero(tasks == task)
            rng.shuffle(rows)
            n_test = int(round(len(rows) * test_fraction))
            test_idx.extend(rows[:n_test].tolist())
            train_idx.extend(rows[n_test:].tolist())
        return self.subset(sorted(train_idx)), self.subset(sorted(test_idx))


@dataclass
class DatasetSplit:
    """A train/test pair (from ``*_train``/``*_test`` files or a seeded split)."""

    train: RoutingDataset
    test: RoutingDataset
