"""Online policies' fallback toward the best single model far from the training data.

An online policy's per-prompt estimate extrapolates wildly on prompts unlike any it was
fitted on. Its exploiting estimate is therefore blended, per model, toward that model's
mean quality over all training rows (plus online outcomes): with those means the shared
trade-off rule picks the best single model at the request's ``lam``. The blend weight
grows as the query becomes unfamiliar, read as the :class:`policies._distance.Familiarity`
quantile ``u`` of the query (the share of training prompts less familiar than it; the same
distance notion as the prompt-only routers' backoff)::

    weight(u) = strength * clip(1 - u / threshold, 0, 1)

``threshold`` and ``strength`` are fitted on the training data (:func:`fit_fallback`), by
realised routing utility over a ``lam`` grid on held-out rows of two kinds: rows of a
*left-out task* (the estimator and the familiarity fitted on the other tasks: what new
traffic looks like) and rows of in-distribution folds (what the fallback must not spoil).
Without two task labels, k-means clusters of the embeddings stand in for tasks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from policies._anchor import lam_grid, row_utility
from policies._distance import Familiarity
from policies._priors import fill_cost

THRESHOLDS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
STRENGTHS = (0.25, 0.5, 0.75, 1.0)
FOLDS = 3
PSEUDO_TASKS = 4


@dataclass
class Fallback:
    """A fitted fallback: ``weight(u) = strength * clip(1 - u / threshold, 0, 1)``."""

    threshold: float = 0.0  # 0: never falls back
    strength: float = 0.0
    #: held-out utility of each candidate (threshold, strength, utility), for the record
    utilities: list[list[float]] = field(default_factory=list)

    def weight(self, quantile: np.ndarray) -> np.ndarray:
        u = np.asarray(quantile, dtype=np.float64)
        if self.threshold <= 0 or self.strength <= 0:
            return np.zeros(u.shape)
        return self.strength * np.clip(1.0 - u / self.threshold, 0.0, 1.0)

    def meta(self) -> dict:
        return {"threshold": self.threshold, "strength": self.strength,
                "utilities": self.utilities}

    @classmethod
    def from_meta(cls, meta: dict) -> Fallback:
        return cls(float(meta["threshold"]), float(meta["strength"]),
                   [list(map(float, u)) for u in meta.get("utilities", [])])


def blend(mean: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``mean`` (n, m) clipped to [0, 1], moved toward ``target`` (m,) by ``weight`` (n,)."""
    w = np.asarray(weight, dtype=np.float64)[:, None]
    return (1.0 - w) * np.clip(mean, 0.0, 1.0) + w * np.asarray(target, dtype=np.float64)


def groups(tasks: list[str] | None, X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Group code per row: the task labels, or k-means clusters when fewer than 2 tasks."""
    if tasks is not None and len(set(tasks)) >= 2:
        _, codes = np.unique(np.asarray(tasks, dtype=object).astype(str), return_inverse=True)
        return codes
    return kmeans(X, min(PSEUDO_TASKS, len(X)), seed)


def kmeans(X: np.ndarray, k: int, seed: int = 0, iters: int = 25) -> np.ndarray:
    """Cluster codes (n,) of a seeded spherical k-means (k-means++ start) on unit rows."""
    Z = np.asarray(X, dtype=np.float64)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    if k < 2:
        return np.zeros(len(Z), dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = [Z[rng.integers(len(Z))]]
    for _ in range(1, k):  # k-means++: far rows are likelier next centres
        d = np.clip(1.0 - np.max(Z @ np.array(centres).T, axis=1), 0.0, None)
        total = d.sum()
        centres.append(Z[rng.choice(len(Z), p=d / total) if total > 0 else rng.integers(len(Z))])
    C = np.array(centres)
    codes = np.zeros(len(Z), dtype=np.int64)
    for _ in range(iters):
        new = np.argmax(Z @ C.T, axis=1)
        if _ and np.array_equal(new, codes):
            break
        codes = new
        for j in range(k):
            members = Z[codes == j]
            if len(members):
                c = members.sum(axis=0)
                C[j] = c / max(np.linalg.norm(c), 1e-12)
    return codes


def fit_fallback(X: np.ndarray, quality: np.ndarray, cost: np.ndarray,
                 tasks: list[str] | None,
                 raw: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 seed: int = 0) -> Fallback:
    """Pick ``threshold`` x ``strength`` (or no fallback) by held-out routing utility.

    ``raw(train_idx, test_idx)`` returns the policy's own (unblended) mean quality (n_test,
    m) for rows ``test_idx`` when fitted on rows ``train_idx`` only.
    """
    n = len(X)
    codes = groups(tasks, X, seed)
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    if len(np.unique(codes)) >= 2:
        splits += [(np.flatnonzero(codes != g), np.flatnonzero(codes == g))
                   for g in np.unique(codes)]
    folds = np.random.default_rng(seed).permutation(n) % FOLDS
    splits += [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(FOLDS)]
    splits = [(tr, te) for tr, te in splits if len(tr) >= 2 and len(te)]
    if not splits:
        return Fallback()
    filled = fill_cost(cost)
    parts = []
    for tr, te in splits:
        fam = Familiarity.fit(X[tr])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column with no outcomes
            target = np.nan_to_num(np.nanmean(quality[tr], axis=0), nan=0.0)
        parts.append((raw(tr, te), target, fam.quantile(fam.score(X[te])),
                      np.broadcast_to(filled[tr].mean(axis=0), (len(te), filled.shape[1])), te))
    lams = lam_grid(cost)
    q_true = np.concatenate([quality[te] for *_, te in parts])
    q_true = np.where(np.isnan(q_true), np.concatenate(
        [np.broadcast_to(t, (len(te), len(t))) for _, t, _, _, te in parts]), q_true)
    c_true = np.concatenate([cost[te] for *_, te in parts])
    c_hat = np.concatenate([c for *_, c, _ in parts])
    candidates = [Fallback()] + [Fallback(t, s) for t in THRESHOLDS for s in STRENGTHS]
    scores = []
    for cand in candidates:
        q_hat = np.concatenate([blend(r, t, cand.weight(u)) for r, t, u, _, _ in parts])
        scores.append(float(row_utility(q_hat, c_hat, q_true, c_true, lams).mean()))
    best = candidates[int(np.argmax(scores))]  # ties: the first, i.e. no fallback
    best.utilities = [[c.threshold, c.strength, s] for c, s in zip(candidates, scores,
                                                                     strict=True)]
    return best
