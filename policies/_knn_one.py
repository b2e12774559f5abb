"""The kNN policy's estimate for one query, in a handful of numpy calls.

:meth:`policies.knn.KNNPolicy._predict` works on blocks of queries; for the gateway's
single query its ~40 small numpy calls cost more than the search. :class:`OneQuery` gives
the same estimate (bit-identical: the same floating-point operations in the same order,
``tests/test_policies_knn_one.py`` checks it on random data) from arrays prepared once:

* quality and cost side by side with their unobserved (NaN) cells as 0, (n, 2m), and the
  observed masks (boolean, (n, 2m)), so two gathers and two weighted column sums give the
  four neighbour sums (numerators and weights of quality and cost);
* the task vote of the nearest neighbours in plain Python (at most ``TASK_VOTE_K`` codes);
* the priors of quality and cost, the shrinkage strengths and the backoff's global means
  concatenated, so each of the combine and backoff steps is one vector expression;
* the train prompts' norms, so the familiarity (and the backoff's weight) of the query is
  computed on its one row of the search's similarities.

Cases it does not handle return None and the caller takes the block path: a missing
neighbour id, a non-finite task table, models beyond the backoff's global means, and a
single model (the block path's einsum then sums the neighbours pairwise, not in order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from policies._anchor import TASK_VOTE_K
from policies._distance import FAMILIARITY_K

if TYPE_CHECKING:
    from policies.knn import KNNPolicy

_ARRAYS = 5  # the leading entries of _state compared by identity

#: the task-vote weight of each rank (as policies._anchor.task_vote: a tiny bonus per rank)
_RANK_WEIGHT = [1.0 + 1e-3 * 0.5**r for r in range(TASK_VOTE_K)]


class OneQuery:
    """Arrays prepared from a fitted :class:`KNNPolicy` for single-query estimates."""

    def __init__(self, policy: KNNPolicy) -> None:
        self.source = _state(policy)
        q, c = policy.quality_, policy.cost_
        self.m = m = q.shape[1]
        self.observed = np.ascontiguousarray(np.hstack([~np.isnan(q), ~np.isnan(c)]))
        self.values = np.ascontiguousarray(np.where(self.observed, np.hstack([q, c]), 0.0),
                                           dtype=np.float64)
        self.codes = np.asarray(policy.codes_, dtype=np.int64).tolist()
        table = policy.table_
        # a one-hot row times the task table is that task's row when the table is finite
        self.priors = (np.hstack([table.quality, table.cost])
                       if np.isfinite(table.quality).all() and np.isfinite(table.cost).all()
                       else None)
        self.alpha = np.array([policy.alpha_] * m + [policy.alpha_cost_] * m)
        self.alpha_positive = bool((self.alpha > 0).all())
        self.temperature = policy.temperature_
        self.uniform = policy.weighting == "uniform"
        bo = policy.backoff_
        self.backoff = bo if bo is not None and bo.active else None
        self.glob = self.norms = None
        if self.backoff is not None and len(bo.global_quality) == m:
            self.glob = np.concatenate([bo.global_quality, bo.global_cost])
            # the train prompts' norms, as KNNPolicy._familiarity computes them
            self.norms = np.maximum(np.linalg.norm(policy.X_, axis=1), 1e-12)
        n = q.shape[0]
        self.k = min(policy.k_, n)
        self.search_k = max(self.k, min(FAMILIARITY_K, n))

    def fresh(self, policy: KNNPolicy) -> bool:
        """Whether these arrays were prepared from ``policy``'s current state."""
        cur = _state(policy)
        return (all(a is b for a, b in zip(cur[:_ARRAYS], self.source[:_ARRAYS], strict=True))
                and cur[_ARRAYS:] == self.source[_ARRAYS:])

    def backoff_weight(self, x: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The backoff's weight (1,) at the query's familiarity: ``KNNPolicy._familiarity``
        (mean cosine to the nearest ``FAMILIARITY_K``) and ``Backoff.weight``, on one row."""
        bo = self.backoff
        kf = min(FAMILIARITY_K, len(sims))
        q = x[0].astype(np.float64)
        qn = max(np.sqrt(np.add.reduce(q * q)), 1e-12)
        fam = np.add.reduce(sims[:kf] / (qn * self.norms[ids[:kf]])) / kf
        z = bo.a + bo.b * np.array([fam])
        if np.isneginf(bo.a) or not -z[0] < 700.0:  # no backoff, or exp overflows
            return bo.weight(np.array([fam]))
        return 1.0 / (1.0 + np.exp(-z))

    def vote(self, ids: list[int]) -> int:
        """The inferred task: a hard vote of the nearest ``TASK_VOTE_K`` neighbours' codes
        (rank bonus for ties, then the lowest code: ``task_vote``'s argmax)."""
        votes: dict[int, float] = {}
        for r, i in enumerate(ids[:TASK_VOTE_K]):
            code = self.codes[i]
            votes[code] = votes.get(code, 0.0) + _RANK_WEIGHT[r]
        return min(votes, key=lambda t: (-votes[t], t))

    def estimate(self, policy: KNNPolicy, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(quality, cost), each (1, m), for one query ``x`` (1, d); None: use the block path."""
        if (self.priors is None or self.m == 1
                or (self.backoff is not None and self.glob is None)):
            return None
        sims, ids = policy._index.search_checked(x, self.search_k)
        sims, ids = sims[0], ids[0]
        k = self.k
        id_list = ids.tolist()
        if min(id_list) < 0:
            return None
        if self.uniform:
            w = np.ones(k)
        else:
            s = sims[:k].astype(np.float64)
            w = np.exp((s - s.max()) / self.temperature)
            w *= k / max(w.sum(), 1e-300)
        # sequential sums over the neighbours, as the block path's einsum and sum
        w = w[:, None]
        near = ids[:k]
        num = np.add.reduce(w * self.values[near], axis=0)
        den = np.add.reduce(w * self.observed[near], axis=0)
        task = self.vote(id_list[:k])
        prior = self.priors[task]
        total = den + self.alpha
        if self.alpha_positive:  # total > 0: the block path's where() keeps the ratio
            est = (num + self.alpha * prior) / total
        else:
            est = np.where(total > 0,
                           (num + self.alpha * prior) / np.where(total > 0, total, 1.0), prior)
        if self.backoff is not None:
            est = self.glob + self.backoff_weight(x, sims, ids) * (est - self.glob)
        return est[None, : self.m], est[None, self.m :]


def _state(policy: KNNPolicy) -> tuple:
    """What the prepared arrays derive from: the arrays (compared by identity), then the
    scalars (by value)."""
    return (policy.quality_, policy.cost_, policy.codes_, policy.table_, policy.backoff_,
            policy.k_, policy.alpha_, policy.alpha_cost_, policy.temperature_,
            policy.weighting)
