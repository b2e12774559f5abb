"""Shared helpers for the baseline and neighbourhood policies.

Masked per-model means (missing cells are dropped, never counted as 0), per-task tables,
task-label encoding and seeded validation splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.base import PolicyError


def masked_col_mean(values: np.ndarray, fallback: np.ndarray | float = 0.0) -> np.ndarray:
    """Per-column mean over non-NaN cells; ``fallback`` where a column has none."""
    values = np.asarray(values, dtype=np.float64)
    observed = ~np.isnan(values)
    counts = observed.sum(axis=0)
    sums = np.where(observed, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    return np.where(counts > 0, mean, np.broadcast_to(fallback, mean.shape))


def fill_cost(cost: np.ndarray) -> np.ndarray:
    """Cost with missing cells replaced by the model's mean observed cost (0 if none)."""
    cost = np.asarray(cost, dtype=np.float64)
    mean = masked_col_mean(cost, 0.0)
    return np.where(np.isnan(cost), mean[None, :], cost)


def encode_tasks(tasks: Sequence[str] | None, n: int) -> tuple[list[str], np.ndarray]:
    """Sorted task names and an (n,) int code per row; a single ``""`` task when None."""
    if tasks is None:
        return [""], np.zeros(n, dtype=np.int64)
    names = sorted(set(tasks))
    lookup = {t: i for i, t in enumerate(names)}
    return names, np.fromiter((lookup[t] for t in tasks), dtype=np.int64, count=n)


@dataclass
class TaskTable:
    """Per-task masked mean quality and cost per model, plus the global means."""

    names: list[str]
    quality: np.ndarray  # (t, m)
    cost: np.ndarray  # (t, m)
    counts: np.ndarray  # (t,) training rows per task
    global_quality: np.ndarray  # (m,)
    global_cost: np.ndarray  # (m,)

    @classmethod
    def fit(
        cls,
        quality: np.ndarray,
        cost: np.ndarray,
        codes: np.ndarray,
        names: list[str],
        smoothing: float = 0.0,
    ) -> TaskTable:
        """Task means shrunk toward the global mean with ``smoothing`` pseudo-rows."""
        g_q = masked_col_mean(quality, 0.0)
        g_c = masked_col_mean(cost, 0.0)
        t, m = len(names), quality.shape[1]
        tq, tc = np.empty((t, m)), np.empty((t, m))
        counts = np.bincount(codes, minlength=t).astype(np.int64)
        for i in range(t):
            rows = codes == i
            tq[i] = _shrunk_mean(quality[rows], g_q, smoothing)
            tc[i] = _shrunk_mean(cost[rows], g_c, smoothing)
        return cls(list(names), tq, tc, counts, g_q, g_c)

    def lookup(self, tasks: Sequence[str] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, m) quality and cost per query; unknown or missing tasks get the global means."""
        if tasks is None:
            return (np.tile(self.global_quality, (n, 1)), np.tile(self.global_cost, (n, 1)))
        index = {t: i for i, t in enumerate(self.names)}
        q = np.empty((n, self.quality.shape[1]))
        c = np.empty_like(q)
        for row, task in enumerate(tasks):
            i = index.get(task)
            q[row] = self.global_quality if i is None else self.quality[i]
            c[row] = self.global_cost if i is None else self.cost[i]
        return q, c

    def arrays(self, prefix: str = "task_") -> dict[str, np.ndarray]:
        return {
            f"{prefix}quality": self.quality,
            f"{prefix}cost": self.cost,
            f"{prefix}counts": self.counts,
            f"{prefix}global_quality": self.global_quality,
            f"{prefix}global_cost": self.global_cost,
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], names: list[str], prefix: str = "task_"
    ) -> TaskTable:
        return cls(
            list(names),
            arrays[f"{prefix}quality"],
            arrays[f"{prefix}cost"],
            arrays[f"{prefix}counts"],
            arrays[f"{prefix}global_quality"],
            arrays[f"{prefix}global_cost"],
        )


def _shrunk_mean(values: np.ndarray, prior: np.ndarray, pseudo: float) -> np.ndarray:
    observed = ~np.isnan(values)
    counts = observed.sum(axis=0)
    sums = np.where(observed, values, 0.0).sum(axis=0)
    denom = counts + pseudo
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums + pseudo * prior) / denom
    return np.where(denom > 0, mean, prior)


def validation_split(
    n: int, fraction: float, seed: int, codes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train_idx, val_idx), stratified by ``codes`` when given; both non-empty."""
    if not 0 < fraction < 1:
        raise PolicyError(f"validation fraction must be in (0, 1), got {fraction!r}")
    if n < 2:
        raise PolicyError(f"need at least 2 training rows for a validation split, got {n}")
    rng = np.random.default_rng(seed)
    codes = np.zeros(n, dtype=np.int64) if codes is None else np.asarray(codes)
    val: list[np.ndarray] = []
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        rng.shuffle(rows)
        val.append(rows[: int(round(len(rows) * fraction))])
    val_idx = np.sort(np.concatenate(val))
    if val_idx.size == 0:
        val_idx = np.sort(rng.choice(n, size=1, replace=False))
    if val_idx.size == n:
        val_idx = val_idx[1:]
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def kfold(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Seeded partition of range(n) into ``min(folds, n)`` validation folds."""
    folds = max(2, min(int(folds), n))
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, folds)]


def parse_auto(value: object, what: str, kind: type) -> object:
    """``"auto"`` or a value convertible to ``kind`` (int/float), else PolicyError."""
    if isinstance(value, str) and value == "auto":
        return "auto"
    try:
        out = kind(value)
    except (TypeError, ValueError, OverflowError):
        noun = "an integer" if kind is int else "a number"
        raise PolicyError(f"{what} must be 'auto' or {noun}, got {value!r}") from None
    if kind is int and isinstance(value, float) and value != out:
        raise PolicyError(f"{what} must be an integer, got {value!r}")
    return out
