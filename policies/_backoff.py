"""Distance-aware backoff: far from the training data, trust the global prior.

The anchored policies (:mod:`policies._anchor`) lean on the query's *inferred* task: the
nearest training task's means. For a query from a task the router never saw, that borrows
the wrong task's best model. The backoff moves every estimate toward the *global* prior
(the training set's per-model mean quality and cost, i.e. the best single model at each
``lam``) by a weight that falls with the query's familiarity ``f``
(:class:`policies._distance.Familiarity`, mean similarity to its nearest train prompts)::

    estimate = global + w(f) * (anchored - global),   w(f) = sigmoid(a + b * f)

``(a, b)`` is fitted on the training data by **leaving tasks out** (:func:`fit_backoff`):

* off-distribution rows: for each training task, the anchor is fitted on the *other*
  tasks and queried on that task's rows (their familiarity to the other tasks, their
  inferred-task prior, the other tasks' global prior);
* in-distribution rows: the same with seeded folds stratified by task (every task seen);
* the weight is chosen by realised routing utility (quality - lam * cost over the anchor's
  lam grid, as the shrinkage is) over both sets, each weighing half, among logistic
  curves (centre at a quantile of ``f``, slope in units of its spread) plus "always
  anchored" (w = 1) and "always global" (w = 0). Ties go to the least backoff.

The fitted backoff records its evidence in ``info["left_out_tasks"]``: per training task,
the utility of the anchor and of the chosen backoff minus the global prior's when that task
was left out (:func:`left_out_gains`; shown by ``router eval --leave-one-task-out``). When
every training task gains from the anchor, the fit keeps it, whatever a new task holds.

Fallback: with fewer than two training tasks there is nothing to leave out; then w = 1
(no backoff). With a single task the inferred-task prior *is* the global prior already,
so only the policy's per-prompt residual (its shrinkage chosen on held-out rows) moves an
estimate away from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies._priors import fill_cost, masked_col_mean

BACKOFF_FOLDS = 5
CENTRE_QUANTILES = np.linspace(0.0, 1.0, 21)
SLOPES = (2.0, 4.0, 8.0, 16.0, 32.0)  # in units of 1 / (spread of the familiarity scores)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Backoff:
    """``w(f) = sigmoid(a + b f)`` toward the global means; ``a = +inf`` is no backoff."""

    global_quality: np.ndarray  # (m,)
    global_cost: np.ndarray  # (m,)
    a: float = float("inf")
    b: float = 0.0
    fitted: str = "none"  # how (a, b) was chosen, for the artifact's metadata
    info: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return not (np.isposinf(self.a) and self.b == 0.0)

    def weight(self, familiarity: np.ndarray) -> np.ndarray:
        """(n,) weight of the anchored estimate, in [0, 1]."""
        f = np.asarray(familiarity, dtype=np.float64)
        if not self.active:
            return np.ones(f.shape)
        if np.isneginf(self.a):
            return np.zeros(f.shape)
        return _sigmoid(self.a + self.b * f)

    def apply(self, quality: np.ndarray, cost: np.ndarray,
              w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``global + w (estimate - global)`` for (n, m) quality and cost; the first
        ``len(global_quality)`` columns only (models added later have no global prior)."""
        m = len(self.global_quality)
        q = np.array(quality, dtype=np.float64)
        c = np.array(cost, dtype=np.float64)
        if not self.active or q.size == 0:
            return q, c
        w = np.asarray(w, dtype=np.float64)[:, None]
        q[:, :m] = self.global_quality[None, :] + w * (q[:, :m] - self.global_quality[None, :])
        c[:, :m] = self.global_cost[None, :] + w * (c[:, :m] - self.global_cost[None, :])
        return q, c

    def arrays(self, prefix: str = "backoff_") -> dict[str, np.ndarray]:
        return {f"{prefix}ab": np.array([self.a, self.b], dtype=np.float64),
                f"{prefix}global_quality": self.global_quality,
                f"{prefix}global_cost": self.global_cost}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "backoff_", fitted: str = "loaded",
                    info: dict | None = None) -> Backoff:
        a, b = (float(v) for v in arrays[f"{prefix}ab"])
        return cls(np.asarray(arrays[f"{prefix}global_quality"], np.float64),
                   np.asarray(arrays[f"{prefix}global_cost"], np.float64), a, b, fitted,
                   dict(info or {}))

    def meta(self) -> dict:
        return {"fitted": self.fitted, "a": _json_float(self.a), "b": self.b, **self.info}


def _json_float(v: float) -> float | str:
    return v if np.isfinite(v) else ("inf" if v > 0 else "-inf")


def global_backoff(quality: np.ndarray, cost: np.ndarray, why: str) -> Backoff:
    """No backoff (w = 1), with the global means recorded."""
    cost = fill_cost(cost)
    return Backoff(masked_col_mean(quality, 0.0), masked_col_mean(cost, 0.0), fitted=why)


def _folds(codes: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Seeded folds stratified by task code (each row in exactly one)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        rng.shuffle(rows)
        for i, chunk in enumerate(np.array_split(rows, folds)):
            parts[i].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts if p]


def held_out_priors(X, codes, names, quality, cost, rest, held, k):
    """(prior quality, prior cost, global quality, global cost, familiarity) of the ``held``
    rows from an anchor fitted on the ``rest`` rows."""
    from policies._anchor import TaskPrior

    tp = TaskPrior.fit(X[rest], codes[rest], names, quality[rest], cost[rest], k,
                       backoff=False)
    pq, pc, fam = tp.task_means(X[held])
    gq = np.broadcast_to(tp.table.global_quality, pq.shape)
    gc = np.broadcast_to(tp.table.global_cost, pc.shape)
    return pq, pc, gq, gc, fam


def left_out_gains(row_codes, names, anchored, global_, chosen) -> dict[str, dict]:
    """Per training task left out: its rows' mean utility with the anchor (w = 1) and with
    the fitted backoff, each minus the global prior's (w = 0), and its row count. The
    evidence the backoff was fitted on: a task whose anchored gain is negative is one where
    borrowing the nearest other task's means lost to the best single model."""
    out = {}
    for c in np.unique(row_codes):
        m = row_codes == c
        out[str(names[int(c)])] = {
            "anchored_minus_global": float(anchored[m].mean() - global_[m].mean()),
            "backoff_minus_global": float(chosen[m].mean() - global_[m].mean()),
            "n": int(m.sum())}
    return out


def fit_backoff(X, codes, names, quality, cost, k: int, seed: int = 0) -> Backoff:
    """The backoff weight chosen by leaving tasks out (module docstring)."""
    from policies._anchor import lam_grid, row_utility

    codes = np.asarray(codes, dtype=np.int64)
    cost = fill_cost(cost)
    present = np.unique(codes)
    if len(present) < 2:
        return global_backoff(quality, cost, "none: fewer than 2 training tasks, nothing to "
                              "leave out")
    n = len(codes)
    sets = []
    for held_sets in ([codes == t for t in present],
                      [np.isin(np.arange(n), f) for f in _folds(codes, BACKOFF_FOLDS, seed)]):
        parts = [held_out_priors(X, codes, names, quality, cost, ~h, h, k)
                 for h in held_sets if h.any() and (~h).any()]
        rows = np.concatenate([np.flatnonzero(h) for h in held_sets if h.any() and (~h).any()])
        sets.append((*(np.concatenate([p[i] for p in parts]) for i in range(5)), rows))
    fam_all = np.concatenate([s[4] for s in sets])
    spread = float(np.std(fam_all)) or 1.0
    centres = np.unique(np.quantile(fam_all, CENTRE_QUANTILES))
    # candidates: (a, b); no backoff first so that ties keep the anchor
    cands = [(float("inf"), 0.0), (float("-inf"), 0.0)]
    cands += [(-s / spread * c, s / spread) for s in SLOPES for c in centres]
    lams = lam_grid(cost)
    totals = np.zeros(len(cands))
    per_set = np.zeros((2, len(cands)))
    row_u = []  # per candidate, the left-out rows' utilities (for the per-task record)
    for j, (pq, pc, gq, gc, fam, rows) in enumerate(sets):
        q_true = np.where(np.isnan(quality[rows]), gq, quality[rows])
        c_true = cost[rows]
        for i, (a, b) in enumerate(cands):
            bo = Backoff(np.zeros(0), np.zeros(0), a, b)
            w = bo.weight(fam)[:, None]
            u = row_utility(gq + w * (pq - gq), gc + w * (pc - gc), q_true, c_true, lams)
            per_set[j, i] = u.mean()
            if j == 0:
                row_u.append(u)
        totals += per_set[j] / 2.0
    best = int(np.argmax(totals))  # first maximum: the least backoff among ties
    if totals[best] <= totals[0] + 1e-12:
        best = 0
    a, b = cands[best]
    g_q, g_c = masked_col_mean(quality, 0.0), masked_col_mean(cost, 0.0)
    info = {"utility_left_out": float(per_set[0, best]), "utility_in": float(per_set[1, best]),
            "utility_left_out_no_backoff": float(per_set[0, 0]),
            "utility_in_no_backoff": float(per_set[1, 0]),
            "familiarity_quantiles": np.quantile(fam_all, [0.05, 0.5, 0.95]).tolist(),
            "left_out_tasks": left_out_gains(codes[sets[0][5]], names, row_u[0], row_u[1],
                                             row_u[best])}
    return Backoff(g_q, g_c, a, b, f"leave-one-task-out over {len(present)} tasks", info)
