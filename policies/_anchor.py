"""Task anchoring shared by the learned policies: shrink per-prompt estimates toward the
mean of the query's *inferred* task, by an amount chosen on held-out training rows.

Within a task, a prompt embedding often says little about which model answers it, so a
learned estimate is mostly noise around the task's means. Every learned policy therefore
estimates ``quality = prior + shrunk residual``:

* the prior is the train mean of the query's inferred task (a hard vote of its nearest
  training prompts' task labels, :func:`task_vote`; never the query's own label), so a
  policy with no per-prompt signal routes exactly like ``task-static``;
* the residual is the policy's raw estimate minus the prior in logit space, scaled by
  ``shrink`` in [0, 1] (:func:`blend`): 0 is the prior, 1 the raw estimate;
* ``shrink`` is picked by realised routing utility over a lam grid on out-of-fold or
  validation rows (:func:`pick`), with the one-standard-error rule: the most shrunk
  candidate whose utility is within one paired standard error of the best. Noise in the
  held-out rows thus falls back toward the prior instead of chasing it.

Costs are blended the same way (:func:`pick_cost`), by relative squared error.

Far from the training data the inferred task is a guess: :class:`TaskPrior` also carries
a distance-aware backoff (:mod:`policies._backoff`) that moves the anchored estimate
toward the *global* prior (the best single model at each lam) as the query's familiarity
(:mod:`policies._distance`) falls, with a weight fitted by leaving training tasks out.
:meth:`TaskPrior.anchor` gives the whole estimate (prior, shrunk residual, backoff);
:meth:`TaskPrior.query` the backed-off prior alone.
"""

from __future__ import annotations

import numpy as np

from policies._backoff import Backoff, fit_backoff
from policies._distance import FAMILIARITY_K, Familiarity
from policies._priors import TaskTable, fill_cost
from policies.base import PolicyError, best_cheapest

SHRINK_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
TASK_VOTE_K = 10  # nearest training prompts that vote on a query's task
_CLIP = 1e-3


def task_vote(neighbour_codes: np.ndarray, n_tasks: int, k: int = TASK_VOTE_K) -> np.ndarray:
    """One-hot inferred task (n, t) from the task codes of each query's nearest training
    prompts (n, >= 1), best first; -1 marks a missing neighbour. Ties go to the nearer one."""
    codes = np.asarray(neighbour_codes, dtype=np.int64)[:, :k]
    n = codes.shape[0]
    valid = codes >= 0
    # votes, with a tiny bonus for rank so ties go to the nearest neighbour's task
    weight = valid * (1.0 + 1e-3 * 0.5 ** np.arange(codes.shape[1]))[None, :]
    t = max(n_tasks, 1)
    cells = (np.arange(n)[:, None] * t + np.where(valid, codes, 0)).ravel()
    votes = np.bincount(cells, weights=weight.ravel(), minlength=n * t).reshape(n, t)
    return np.eye(t)[votes.argmax(axis=1)]


class TaskPrior:
    """Inferred-task means for query embeddings: a hard vote of the ``k`` nearest training
    prompts (cosine) picks the task; its train mean quality and cost are the prior. The
    same search gives the query's familiarity, which sets the backoff toward the global
    means (``backoff``; None or inactive: none)."""

    def __init__(self, X: np.ndarray, codes: np.ndarray, table: TaskTable,
                 k: int = TASK_VOTE_K, backoff: Backoff | None = None,
                 familiarity_reference: np.ndarray | None = None) -> None:
        # the familiarity owns the vectors and the index (router.index.VectorIndex)
        self.familiarity = Familiarity(X, FAMILIARITY_K, familiarity_reference)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.table = table
        self.k = int(k)
        self.backoff = backoff

    @property
    def X(self) -> np.ndarray:
        return self.familiarity.X

    def _search(self, Xq: np.ndarray, k: int) -> np.ndarray:
        """Ids (n, k) of each query's nearest training prompts, best first."""
        return self.familiarity.search(Xq, k)[1]

    @classmethod
    def fit(cls, X, codes, names, quality, cost, k: int = TASK_VOTE_K,
            backoff: bool = True) -> TaskPrior:
        """The anchor; ``backoff`` also fits the distance-aware backoff by leaving tasks out
        (off for the anchors of held-out folds, which are only queried in distribution)."""
        cost = fill_cost(cost)
        prior = cls(X, codes, TaskTable.fit(quality, cost, codes, names), k)
        if backoff:
            prior.backoff = fit_backoff(prior.X, prior.codes, names, quality, cost, k)
        return prior

    def task_means(self, Xq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prior quality, prior cost) of the inferred task, each (n, m), before any
        backoff, and the familiarity (n,) of each query."""
        Xq = np.atleast_2d(np.asarray(Xq, dtype=np.float32))  # search() scales to unit rows
        if len(Xq) == 0:
            m = self.table.quality.shape[1]
            return np.zeros((0, m)), np.zeros((0, m)), np.zeros(0)
        k = min(self.k, len(self.X))
        sims, ids = self.familiarity.search(Xq, max(k, self.familiarity.k))
        post = task_vote(np.where(ids >= 0, self.codes[np.maximum(ids, 0)], -1),
                         len(self.table.names), k)
        fam = self.familiarity.from_similarities(sims)
        return post @ self.table.quality, post @ self.table.cost, fam

    def weight(self, familiarity: np.ndarray) -> np.ndarray:
        """(n,) weight of the anchored estimate against the global prior (1: no backoff)."""
        if self.backoff is None:
            return np.ones(np.shape(familiarity))
        return self.backoff.weight(familiarity)

    def query(self, Xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prior quality, prior cost), each (n, m), backed off toward the global means."""
        pq, pc, fam = self.task_means(Xq)
        if self.backoff is None:
            return pq, pc
        return self.backoff.apply(pq, pc, self.weight(fam))

    def anchor(self, Xq, raw_q, raw_c, shrink: float, cost_shrink: float):
        """The anchored estimate (quality, cost), each (n, m): the inferred task's means
        moved toward the raw estimates by the shrinkages (:func:`blend`,
        :func:`blend_cost`), then backed off toward the global means by familiarity.
        Columns past the anchor's models (added later) pass through unchanged."""
        pq, pc, fam = self.task_means(Xq)
        m = pq.shape[1]
        q = np.array(raw_q, dtype=np.float64)
        c = np.array(raw_c, dtype=np.float64)
        q[:, :m] = blend(pq, q[:, :m], shrink)
        c[:, :m] = blend_cost(pc, c[:, :m], cost_shrink)
        if self.backoff is None:
            return q, c
        return self.backoff.apply(q, c, self.weight(fam))

    def arrays(self, prefix: str = "anchor_") -> dict[str, np.ndarray]:
        out = {f"{prefix}X": self.X, f"{prefix}codes": self.codes,
               **self.table.arrays(f"{prefix}task_")}
        if self.backoff is not None:
            out |= self.backoff.arrays(f"{prefix}backoff_")
            out |= self.familiarity.arrays(f"{prefix}familiarity_", vectors=False)
        return out

    def meta(self) -> dict:
        return {} if self.backoff is None else self.backoff.meta()

    @classmethod
    def from_arrays(cls, arrays, names, prefix: str = "anchor_",
                    backoff_meta: dict | None = None) -> TaskPrior:
        """Restore :meth:`arrays`; artifacts saved before the backoff existed get none."""
        table = TaskTable.from_arrays(arrays, list(names), f"{prefix}task_")
        backoff, reference = None, None
        if f"{prefix}backoff_ab" in arrays:
            meta = dict(backoff_meta or {})
            backoff = Backoff.from_arrays(arrays, f"{prefix}backoff_",
                                          str(meta.pop("fitted", "loaded")), meta)
            reference = arrays[f"{prefix}familiarity_reference"]
        return cls(arrays[f"{prefix}X"], arrays[f"{prefix}codes"], table,
                   backoff=backoff, familiarity_reference=reference)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _CLIP, 1.0 - _CLIP)
    return np.log(p / (1.0 - p))


def blend(prior: np.ndarray, raw: np.ndarray, shrink: float) -> np.ndarray:
    """``prior`` moved toward ``raw`` by ``shrink`` in logit space; exactly ``prior`` at 0."""
    if shrink <= 0:
        return np.asarray(prior, dtype=np.float64).copy()
    lp = _logit(prior)
    moved = 1.0 / (1.0 + np.exp(-(lp + shrink * (_logit(raw) - lp))))
    # add the move to the unclipped prior so tiny/huge priors stay exact where raw agrees
    return np.clip(prior + moved - np.clip(prior, _CLIP, 1.0 - _CLIP), 0.0, 1.0)


def blend_cost(prior: np.ndarray, raw: np.ndarray, shrink: float) -> np.ndarray:
    """Linear blend of per-prompt cost estimates toward the inferred-task mean cost."""
    return np.asarray(prior, dtype=np.float64) + shrink * (np.asarray(raw) - prior)


def lam_grid(cost: np.ndarray, points: int = 12) -> np.ndarray:
    """0 plus log-spaced lam from where the dearest model's cost weighs 0.01 quality to
    where the cheapest model's cost outweighs any quality gap (the whole trade-off)."""
    means = np.nanmean(np.asarray(cost, dtype=np.float64), axis=0)
    pos = means[np.isfinite(means) & (means > 0)]
    if pos.size == 0 or np.ptp(means) <= 0:
        return np.array([0.0])
    return np.concatenate(([0.0], np.geomspace(1e-2 / pos.max(), 1.0 / pos.min(), points)))


def row_utility(q_hat, c_hat, q_true, c_true, lams) -> np.ndarray:
    """(n,) realised quality - lam * cost of the chosen models, averaged over ``lams``,
    each lam's term scaled by 1 / (1 + lam * median model cost) so no lam dominates.
    Missing truth counts as quality 0 and the model's mean cost (as in evaluation)."""
    q_true = np.nan_to_num(q_true, nan=0.0)
    c_true = np.where(np.isnan(c_true), np.nanmean(c_true, axis=0)[None, :], c_true)
    c_true = np.nan_to_num(c_true, nan=0.0)
    scale = float(np.median(np.nanmean(c_true, axis=0)))
    lams = np.asarray(lams, dtype=np.float64)
    q_hat, c_hat = np.asarray(q_hat, np.float64), np.asarray(c_hat, np.float64)
    # choose()'s rule (argmax of q - lam * c, ties to the cheaper model) for all lams at once
    pick = best_cheapest(q_hat[None] - lams[:, None, None] * c_hat[None], c_hat[None])  # (L, n)
    rows = np.arange(q_true.shape[0])[None, :]
    gain = q_true[rows, pick] - lams[:, None] * c_true[rows, pick]
    return (gain / (1.0 + lams[:, None] * scale)).mean(axis=0)


def one_se(utilities: np.ndarray) -> int:
    """Index of the first column (candidates ordered most-shrunk first) whose mean row
    utility is within one paired standard error of the best column's."""
    U = np.asarray(utilities, dtype=np.float64)
    best = int(np.argmax(U.mean(axis=0)))
    n = U.shape[0]
    for j in range(U.shape[1]):
        diff = U[:, best] - U[:, j]
        se = diff.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
        if diff.mean() <= se + 1e-12:
            return j
    return best


def pick(prior, raw, cost_hat, q_true, c_true, grid=SHRINK_GRID) -> tuple[float, list[float]]:
    """Quality shrink from ``grid`` (ascending) by held-out utility with the 1-SE rule;
    returns it with each candidate's mean utility."""
    lams = lam_grid(c_true)
    q_true = np.where(np.isnan(q_true), prior, q_true)  # unobserved: the task mean, not 0
    U = np.column_stack([row_utility(blend(prior, raw, s), cost_hat, q_true, c_true, lams)
                         for s in grid])
    return float(grid[one_se(U)]), U.mean(axis=0).tolist()


def pick_cost(prior, raw, c_true, grid=SHRINK_GRID) -> float:
    """Cost shrink from ``grid`` minimising squared error relative to each model's mean."""
    obs = ~np.isnan(c_true)
    scale = np.maximum(np.nanmean(np.where(obs, c_true, np.nan), axis=0), 1e-12)
    errs = [np.sum(np.where(obs, (blend_cost(prior, raw, s) - np.nan_to_num(c_true)) / scale,
                            0.0) ** 2) for s in grid]
    return float(grid[int(np.argmin(errs))])


def check_shrink(policy: str, what: str, value: object) -> None:
    """``"auto"`` or a number in [0, 1], else a PolicyError naming the parameter."""
    if isinstance(value, str) and value == "auto":
        return
    try:
        ok = 0.0 <= float(value) <= 1.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PolicyError(f"{policy}: {what} must be 'auto' or a number in [0, 1], got {value!r}")


def pick_anchor(shrink, cost_shrink, prior_q, raw_q, prior_c, raw_c, quality, cost):
    """(shrink, cost_shrink, utilities): the given values, or ``"auto"`` ones picked on
    held-out estimates (cost first, by squared error; then quality, by utility). With no
    held-out estimates (``prior_q`` None), ``"auto"`` means the task means (0)."""
    auto_q, auto_c = shrink == "auto", cost_shrink == "auto"
    if prior_q is None:
        return (0.0 if auto_q else float(shrink)), (0.0 if auto_c else float(cost_shrink)), []
    cs = pick_cost(prior_c, raw_c, cost) if auto_c else float(cost_shrink)
    if not auto_q:
        return float(shrink), cs, []
    s, utility = pick(prior_q, raw_q, blend_cost(prior_c, raw_c, cs), quality, cost)
    return s, cs, utility


def anchor_meta(policy) -> dict:
    """The fitted anchor's JSON state (with the arrays of ``policy.anchor_.arrays()``)."""
    return {"tasks": policy.anchor_.table.names, "shrink": policy.shrink_,
            "cost_shrink": policy.cost_shrink_, "shrink_utility": policy.shrink_utility_,
            "backoff": policy.anchor_.meta()}


def set_anchor_state(policy, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Restore what :func:`anchor_meta` and ``TaskPrior.arrays`` saved (KeyError if absent)."""
    policy.anchor_ = TaskPrior.from_arrays(arrays, meta["tasks"],
                                           backoff_meta=meta.get("backoff"))
    policy.shrink_ = float(meta["shrink"])
    policy.cost_shrink_ = float(meta["cost_shrink"])
    policy.shrink_utility_ = list(meta.get("shrink_utility", []))
