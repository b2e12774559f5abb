"""Vectorised cascade simulation on recorded responses and the train-split plan search.

:func:`simulate` replays one :class:`~policies.cascade.CascadePlan` over a table of
answer codes exactly as :meth:`CascadePlan.step` decides (tests check the two agree), in
numpy over all rows at once: cost is the sum of every call made, quality that of the
returned answer. :func:`search_plans` scores a family of candidate plans per answer kind
on the train rows and keeps, for every ``lam`` of a fine grid, the plan of best train
utility ``quality - lam * cost``, within the plan family (single models; two stages;
three stages) that K-fold cross-validation of that selection prefers for the kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from policies import answers as A
from policies._priors import kfold

#: plan families, smallest first: 1 = single models, 2 = + two-stage and voting plans,
#: 3 = + three-stage plans
LEVELS = (1, 2, 3)
GRID_POINTS = 160
#: agreement thresholds searched for code and free text (answers.similarity)
THRESHOLDS = (1.0, 0.7, 0.5, 0.35)


@dataclass
class Table:
    """Answer codes of recorded responses: equal codes in a row = agreeing answers."""

    codes: np.ndarray  # (n, m) int64; a missing key is negative and unique in its row
    alive: np.ndarray  # (n, m) bool: a response exists (the call did not fail)
    quality: np.ndarray  # (n, m) in [0, 1]
    cost: np.ndarray  # (n, m) USD
    #: (n, m, m) answers.similarity of two cells' keys (0 where either has none; 1 on the
    #: diagonal of live cells, so a keyless response agrees with itself only)
    same: np.ndarray

    @classmethod
    def build(cls, kinds: Sequence[str], responses: Sequence[Sequence[str | None]],
              quality: np.ndarray, cost: np.ndarray) -> Table:
        keys = [[A.extract(r, k) for r in row] for k, row in zip(kinds, responses, strict=True)]
        codes = np.array(A.key_codes(keys), dtype=np.int64).reshape(quality.shape)
        alive = np.array([[r is not None for r in row] for row in responses],
                         dtype=bool).reshape(quality.shape)
        valid = codes >= 0
        same = ((codes[:, :, None] == codes[:, None, :]) & valid[:, :, None]
                & valid[:, None, :]).astype(np.float32)
        for i, kind in enumerate(kinds):
            if kind in A.GRADED_KINDS:
                row = keys[i]
                for j, k in combinations(range(len(row)), 2):
                    same[i, j, k] = same[i, k, j] = A.similarity(row[j], row[k], kind)
        idx = np.arange(codes.shape[1])
        same[:, idx, idx] = alive
        return cls(codes, alive, np.asarray(quality, float), np.asarray(cost, float), same)

    def rows(self, idx: np.ndarray) -> Table:
        return Table(self.codes[idx], self.alive[idx], self.quality[idx], self.cost[idx],
                     self.same[idx])


def vote(t: Table, cols: Sequence[int], rank: np.ndarray, final: bool,
         threshold: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(most agreements, the preferred such member's column) per row over ``cols``: a
    member's agreements count the members whose similarity to it reaches ``threshold``,
    itself included.

    ``final``: every live response is a member (one without a key agrees only with
    itself); otherwise only responses with an answer key. 0 (column -1) when nobody is.
    """
    cols = np.asarray(cols, dtype=np.int64)
    member = t.alive[:, cols] if final else (t.codes[:, cols] >= 0)
    eq = ((t.same[:, cols][:, :, cols] >= np.float32(threshold) - 1e-6)
          & member[:, :, None] & member[:, None, :])
    size = eq.sum(axis=2)
    top = size.max(axis=1)
    best = (size == top[:, None]) & member
    pick = np.where(best, rank[cols][None, :], np.iinfo(np.int64).max).argmin(axis=1)
    rep = np.where(top > 0, cols[pick], -1)
    return top, rep


def _prefix_run(t: Table, stages: Sequence[tuple[Sequence[int], int]], rank: np.ndarray,
                threshold: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The non-final ``stages`` over every row, as :meth:`CascadePlan.step` runs them:
    (accepted, returned column or -1, cost, called (n, m)). A row stops calling them once
    none of the remaining stages can reach its ``min_agree`` (it goes to the last stage)."""
    n, m = t.codes.shape
    done = np.zeros(n, dtype=bool)
    jumped = np.zeros(n, dtype=bool)
    rep = np.full(n, -1, dtype=np.int64)
    cost = np.zeros(n)
    called = np.zeros((n, m), dtype=bool)
    base = np.zeros(n, dtype=np.int64)  # the most agreements any answer can build on
    gathered: list[int] = []
    for k, (cols, need) in enumerate(stages):
        cols = list(cols)
        reach = np.zeros(n, dtype=bool)
        calls = 0
        for later, later_need in stages[k:]:
            calls += len(later)
            reach |= base + calls >= later_need
        jumped |= ~done & ~reach
        live = ~done & ~jumped
        cost += np.where(live, t.cost[:, cols].sum(axis=1), 0.0)
        called[:, cols] |= live[:, None]
        gathered += cols
        size, r = vote(t, gathered, rank, False, threshold)
        accept = live & (size >= need)
        rep = np.where(accept, r, rep)
        done |= accept
        base = size if threshold >= 1.0 else (t.codes[:, gathered] >= 0).sum(axis=1)
    return done, rep, cost, called


def _fallback(t: Table, cols: Sequence[int], called: np.ndarray, rank: np.ndarray,
              threshold: float) -> np.ndarray:
    """Per row, the final-stage vote over the responses of ``cols`` the row called."""
    seen = Table(t.codes, t.alive & called, t.quality, t.cost, t.same)
    return vote(seen, cols, rank, True, threshold)[1]


def simulate(t: Table, stages: Sequence[tuple[Sequence[int], int]], rank: np.ndarray,
             threshold: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (quality, cost, returned column or -1) of a plan given as column stages."""
    n = t.codes.shape[0]
    *head, (last, _) = [(list(cols), need) for cols, need in stages]
    done, rep, cost, called = _prefix_run(t, head, rank, threshold)
    cost += np.where(done, 0.0, t.cost[:, last].sum(axis=1))
    called[:, last] |= ~done[:, None]
    size_l, rep_l = vote(t, last, rank, True, threshold)
    gathered = [c for cols, _ in head for c in cols] + last
    rep_a = _fallback(t, gathered, called, rank, threshold)
    rep = np.where(done, rep, np.where(size_l > 0, rep_l, rep_a))
    rows = np.arange(n)
    quality = np.where(rep >= 0, t.quality[rows, np.maximum(rep, 0)], 0.0)
    return quality, cost, rep


@dataclass
class Candidates:
    """Candidate plans (column stages) with per-fold quality and cost sums."""

    stages: list[tuple[tuple[tuple[int, ...], int], ...]]
    level: np.ndarray  # (p,) plan family of each candidate
    q_fold: np.ndarray  # (p, K) quality sums per fold
    c_fold: np.ndarray  # (p, K) cost sums per fold
    threshold: np.ndarray  # (p,) agreement threshold of each candidate

    @staticmethod
    def merge(parts: Sequence[Candidates]) -> Candidates:
        return Candidates([s for p in parts for s in p.stages],
                          np.concatenate([p.level for p in parts]),
                          np.concatenate([p.q_fold for p in parts]),
                          np.concatenate([p.c_fold for p in parts]),
                          np.concatenate([p.threshold for p in parts]))


def _prefixes(m: int, max_first: int,
              lazy: bool = True) -> list[tuple[tuple[tuple[int, ...], int], ...]]:
    """Every non-final stage list: one model needing an answer key, 2-3 models needing
    2 (or 3) equal answers, a pair then one more needing 2 of the 3, and (``lazy``) a pair
    then one more needing 3 of 3 (called only when the pair agrees)."""
    out: list[tuple[tuple[tuple[int, ...], int], ...]] = [()]
    out += [(((j,), 1),) for j in range(m)]
    if max_first >= 2:
        pairs = list(combinations(range(m), 2))
        out += [((p, 2),) for p in pairs]
        out += [((p, 2), ((x,), 2)) for p in pairs for x in range(m) if x not in p]
    if max_first >= 3:
        for tri in combinations(range(m), 3):
            out += [((tri, 2),), ((tri, 3),)]
    if max_first >= 3 and lazy:
        # three equal answers, the third model called only when the pair agrees
        out += [((p, 3), ((x,), 3)) for p in pairs for x in range(m) if x not in p]
    return out


def _level(prefix: tuple) -> int:
    return 1 if not prefix else (2 if len(prefix) == 1 else 3)


def score_candidates(t: Table, rank: np.ndarray, folds: list[np.ndarray],
                     max_first: int, threshold: float = 1.0, lazy: bool = True) -> Candidates:
    """Every candidate plan: a prefix of non-final stages, then one final model (or, for
    the 2-3 model voting plans, the vote itself as the final stage)."""
    n, m = t.codes.shape
    onehot = np.zeros((n, len(folds)))
    for f, idx in enumerate(folds):
        onehot[idx, f] = 1.0
    rows = np.arange(n)
    q_live = np.where(t.alive, t.quality, 0.0)
    stages, levels, qs, cs = [], [], [], []
    for prefix in _prefixes(m, max_first, lazy):
        done, rep, cost, called = _prefix_run(t, prefix, rank, threshold)
        gathered = [c for cols, _ in prefix for c in cols]
        q_done = np.where(rep >= 0, t.quality[rows, np.maximum(rep, 0)], 0.0)
        finals = [e for e in range(m) if e not in gathered]
        # fold sums: accepted rows keep the prefix's answer, the others the final model's
        # (or, where the final model failed, the vote over the answers gathered)
        q_fin = q_live
        if gathered and not t.alive[:, finals].all():
            rep_a = _fallback(t, gathered, called, rank, threshold)
            q_fall = np.where(rep_a >= 0, t.quality[rows, np.maximum(rep_a, 0)], 0.0)
            q_fin = q_live + np.where(t.alive, 0.0, q_fall[:, None])
        open_rows = onehot * ~done[:, None]  # (n, K)
        qs.append((onehot.T @ (q_done * done))[:, None] + (open_rows.T @ q_fin)[:, finals])
        cs.append((onehot.T @ cost)[:, None] + (open_rows.T @ t.cost)[:, finals])
        lvl = _level(prefix)
        for e in finals:
            stages.append(prefix + (((e,), 1),))
            levels.append(lvl)
        if len(prefix) == 1 and len(prefix[0][0]) == 3 and prefix[0][1] == 2:
            # majority vote of three as a one-stage plan
            q_v, c_v, _ = simulate(t, [(prefix[0][0], 1)], rank, threshold)
            qs.append((onehot.T @ q_v)[:, None])
            cs.append((onehot.T @ c_v)[:, None])
            stages.append(((prefix[0][0], 1),))
            levels.append(2)
    return Candidates(stages, np.array(levels), np.concatenate(qs, axis=1).T,
                      np.concatenate(cs, axis=1).T, np.full(len(stages), float(threshold)))


def lam_grid(cost: np.ndarray, points: int = GRID_POINTS) -> np.ndarray:
    """0 plus log-spaced lams from 0.01 / dearest to 100 / cheapest model mean cost."""
    means = cost.mean(axis=0)
    means = means[means > 0]
    if means.size == 0:
        return np.array([0.0])
    return np.concatenate(([0.0], np.geomspace(1e-2 / means.max(), 1e2 / means.min(), points)))


def select(cand: Candidates, sizes: np.ndarray, lams: np.ndarray,
           level: int | None = None) -> tuple[np.ndarray, dict]:
    """Chosen candidate per lam, plus the cross-validated utility of each plan family.

    For each lam and family level L, fold f's plan is the best of level <= L on the other
    folds, scored on f. The level with the best held-out utility summed over the lam grid
    (ties: the smaller family) is then searched on all train rows at every lam: one family
    per answer kind, so the plans do not flip between families from one lam to the next.
    ``level`` forces the family instead.
    """
    q_all, c_all = cand.q_fold.sum(axis=1), cand.c_fold.sum(axis=1)
    n = sizes.sum()
    cv = np.zeros((len(lams), len(LEVELS)))
    for i, lam in enumerate(lams):
        u_fold = cand.q_fold - lam * cand.c_fold  # (p, K)
        u_rest = (q_all - lam * c_all)[:, None] - u_fold  # utility without fold f
        for li, lvl in enumerate(LEVELS):
            rest = np.where((cand.level <= lvl)[:, None], u_rest, -np.inf)
            best = rest.argmax(axis=0)
            cv[i, li] = u_fold[best, np.arange(u_fold.shape[1])].sum() / n
    total = cv.sum(axis=0)
    if level is None:
        level = LEVELS[int(np.flatnonzero(total >= total.max() - 1e-9)[0])]
    chosen = np.empty(len(lams), dtype=np.int64)
    for i, lam in enumerate(lams):
        u = np.where(cand.level <= level, q_all - lam * c_all, -np.inf)
        top = np.flatnonzero(u >= u.max() - 1e-12)
        chosen[i] = top[np.argmin(c_all[top])]
    return chosen, {"cv_utility": cv.tolist(), "levels": list(LEVELS), "level": level,
                    "cv_gain_over_single": float((total - total[0]).max() / len(lams))}


def search_plans(kinds: Sequence[str], responses: Sequence[Sequence[str | None]],
                 quality: np.ndarray, cost: np.ndarray, models: Sequence[str], *,
                 folds: int = 5, max_first: int = 3, seed: int = 0, lazy: bool = True
                 ) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Learned plans per inferred kind, plus ``"*"`` (every family) and ``"*1"`` (single
    models) over all rows for kinds the train split lacks, and the search figures."""
    from policies.cascade import ALL_KINDS, ALL_SINGLE

    table = Table.build(kinds, responses, quality, cost)
    kinds_arr = np.asarray(kinds)
    lams = lam_grid(cost)
    plans: dict[str, list[Any]] = {}
    info: dict[str, Any] = {"lams": lams.tolist(), "kinds": {}}
    groups = {k: np.flatnonzero(kinds_arr == k) for k in sorted(set(kinds))}
    groups[ALL_KINDS] = np.arange(len(kinds))
    for kind, idx in groups.items():
        if len(idx) < folds:
            continue
        cand, prefer, parts = kind_candidates(table.rows(idx), kind, folds=folds,
                                              max_first=max_first, seed=seed, lazy=lazy)
        sizes = np.array([len(p) for p in parts])
        chosen, sel = select(cand, sizes, lams)
        prefer_names = tuple(models[j] for j in prefer)
        plans[kind] = _choices(cand, chosen, lams, kind, prefer_names, models, len(idx))
        info["kinds"][kind] = {"rows": int(len(idx)), "candidates": len(cand.stages), **sel}
        if kind == ALL_KINDS:  # unseen code / free text: agreement was never learned
            single, _ = select(cand, sizes, lams, level=1)
            plans[ALL_SINGLE] = _choices(cand, single, lams, kind, prefer_names, models,
                                         len(idx))
    return plans, info


def kind_candidates(t: Table, kind: str, *, folds: int = 5, max_first: int = 3,
                    seed: int = 0, lazy: bool = True
                    ) -> tuple[Candidates, np.ndarray, list[np.ndarray]]:
    """Every candidate plan of one kind's train rows ``t``, scored per fold, with the
    model preference order (columns, best first) and the folds."""
    prefer = _preference(t.quality, t.cost)
    rank = np.empty(t.codes.shape[1], dtype=np.int64)
    rank[prefer] = np.arange(t.codes.shape[1])
    parts = kfold(t.codes.shape[0], folds, seed)
    graded = kind in A.GRADED_KINDS  # the all-kinds fallback keeps exact agreement
    cand = Candidates.merge([score_candidates(t, rank, parts, max_first, tau, lazy)
                             for tau in (THRESHOLDS if graded else (1.0,))])
    return cand, prefer, parts


def _choices(cand: Candidates, chosen: np.ndarray, lams: np.ndarray, kind: str,
             prefer_names: tuple[str, ...], models: Sequence[str], n: int) -> list[Any]:
    """PlanChoice per distinct chosen plan, in lam order."""
    from policies.cascade import CascadePlan, PlanChoice

    plan_kind = kind if kind in A.KINDS else "text"
    out: list[PlanChoice] = []
    for lam, p in zip(lams, chosen, strict=True):
        stages = _named(cand.stages[p], models)
        used = {x for s in stages for x in s.models}
        plan = CascadePlan(plan_kind, stages, tuple(m for m in prefer_names if m in used),
                           float(cand.threshold[p]) if _agrees(stages) else 1.0)
        if out and out[-1].plan == plan:
            continue
        out.append(PlanChoice(plan, float(lam), float(cand.q_fold[p].sum() / n),
                              float(cand.c_fold[p].sum() / n)))
    return out


def _named(stages, models: Sequence[str]):
    from policies.cascade import CascadeStage

    return tuple(CascadeStage(tuple(models[j] for j in cols), int(need))
                 for cols, need in stages)


def _agrees(stages) -> bool:
    """Whether the threshold matters: some stage compares two or more answers."""
    return len(stages) > 1 or len(stages[0].models) > 1


def _preference(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Model columns by train mean quality, best first (ties: cheaper first)."""
    mq, mc = quality.mean(axis=0), cost.mean(axis=0)
    return np.lexsort((mc, -mq))
