"""The shared choice rule (:func:`policies.base.choose`) for one query, in plain Python.

``choose`` works on (n, m) arrays; for the gateway's single query its dozen numpy calls
(masks, broadcasts, reductions) cost more than the arithmetic. :func:`choose_one` makes the
same floating-point comparisons on Python floats, so it picks the same model
(``tests/test_choose_one.py`` checks it against ``choose`` on random estimates with ties,
budgets and masks); non-finite estimates go to ``choose`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from policies.base import PolicyError, check_budget, check_lam, choose


def choose_one(quality: Sequence[float] | np.ndarray, cost: Sequence[float] | np.ndarray,
               lam: float = 0.0, budget: float | None = None,
               allowed: Sequence[bool] | np.ndarray | None = None) -> int:
    """Index of the chosen model for one query's (m,) estimates: ``choose(...)[0]``."""
    lam = check_lam(lam)
    budget = check_budget(budget)
    q = _floats(quality)
    c = _floats(cost)
    m = len(q)
    if len(c) != m:
        raise PolicyError(f"quality ({m},) and cost ({len(c)},) differ in shape")
    if allowed is None:
        ok = [True] * m
    else:
        ok = [bool(a) for a in (allowed if isinstance(allowed, list) else np.ravel(allowed))]
        if len(ok) == 1:
            ok = ok * m
        if len(ok) != m:
            raise PolicyError(f"allowed has {len(ok)} entries for {m} models")
        if not any(ok):
            raise PolicyError("no candidate model is allowed for some query")
    if not all(map(math.isfinite, q)) or not all(map(math.isfinite, c)):
        return int(choose(np.asarray(q)[None], np.asarray(c)[None], lam=lam, budget=budget,
                          allowed=None if allowed is None else np.asarray(ok))[0])
    score = [qi - lam * ci for qi, ci in zip(q, c, strict=True)]
    if budget is not None:
        fits = [o and ci <= budget for o, ci in zip(ok, c, strict=True)]
        if any(fits):
            ok = fits
        else:  # nothing fits: the cheapest allowed model
            score = [-ci for ci in c]
    masked = [s if o else -math.inf for s, o in zip(score, ok, strict=True)]
    best = max(masked)
    # ties (within relative 1e-12, as best_cheapest) go to the cheapest, then the first
    floor = best - 1e-12 * max(1.0, abs(best))
    return min((i for i in range(m) if masked[i] >= floor), key=lambda i: (c[i], i))


def runner_up(score: np.ndarray, first: int,
              allowed: Sequence[bool] | np.ndarray | None = None) -> int | None:
    """The best-scoring allowed model other than ``first`` (the first of equals), None when
    no other has a finite score: :func:`policies.base.decision_from_estimate`'s runner-up."""
    values = score.tolist()
    ok = [True] * len(values) if allowed is None else [bool(a) for a in np.ravel(allowed)]
    if len(ok) != len(values) or not all(map(math.isfinite, values)):
        masked = np.array(score, dtype=np.float64)
        masked[first] = -np.inf
        if allowed is not None:
            masked[~np.asarray(allowed, dtype=bool).reshape(-1)] = -np.inf
        return int(np.argmax(masked)) if np.isfinite(masked).any() else None
    best = None
    for i, (v, o) in enumerate(zip(values, ok, strict=True)):
        if o and i != first and (best is None or v > values[best]):
            best = i
    return best


def _floats(values: Sequence[float] | np.ndarray) -> list[float]:
    if isinstance(values, np.ndarray):
        return np.asarray(values, dtype=np.float64).ravel().tolist()
    return [float(v) for v in values]
