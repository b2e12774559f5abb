"""The knapsack's price of a dollar: hull slopes, the dual price and the threshold rule.

Part of :mod:`router.budget` (the module docstring there describes the whole policy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from router.budget.spec import BudgetError


def zcl_threshold(z: float, L: float, U: float) -> float:
    """psi(z) = (U e / L)^z (L / e) for budget fraction z in [0, 1]."""
    z = min(max(float(z), 0.0), 1.0)
    return (U * math.e / L) ** z * (L / math.e)


def hull_threshold(z: float, L: float, U: float) -> float:
    """psi(z) = L (U / L)^z for bin fill z in [0, 1]: the dual price L at an empty bin."""
    z = min(max(float(z), 0.0), 1.0)
    return L * (U / L) ** z


def hull_slopes(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Slopes (marginal quality per dollar) of every segment of every row's cost-quality
    hull, for (n, m) estimates (``cost`` may be (m,)); NaN estimates are skipped."""
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
    out: list[float] = []
    for q, c in zip(quality, cost, strict=True):
        ok = np.isfinite(q) & np.isfinite(c)
        q, c = q[ok], np.maximum(c[ok], 1e-12)
        if q.size < 2:
            continue
        order = np.lexsort((-q, c))
        i, cur = order[0], []
        while True:  # from the current vertex, the steepest step up to a dearer model
            up = (c > c[i]) & (q > q[i])
            if not up.any():
                break
            slope = np.where(up, (q - q[i]) / np.where(up, c - c[i], 1.0), -np.inf)
            j = int(np.argmax(slope))
            cur.append(float(slope[j]))
            i = j
        out.extend(cur)
    return np.asarray(out)


def dual_price(quality: np.ndarray, cost: np.ndarray, rate: float, iters: int = 50) -> float:
    """The smallest price of a dollar at which picking ``argmax q - price * c`` on each row
    of the (n, m) estimates costs at most ``rate`` per row on average (0 when even the
    best-quality picks fit: the budget does not bind)."""
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
    rows = np.arange(len(quality))

    def spend(price: float) -> float:
        score = quality - price * cost
        best = score.max(axis=1, keepdims=True)
        tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
        return float(cost[rows, np.where(tied, cost, np.inf).argmin(axis=1)].mean())

    if len(quality) == 0 or spend(0.0) <= rate:
        return 0.0
    slopes = hull_slopes(quality, cost)
    hi = float(slopes.max()) * 2 if slopes.size else 1.0
    if spend(hi) > rate:  # not even the cheapest picks fit the rate
        return hi
    lo = hi * 1e-9
    for _ in range(iters):  # bisection on log price
        mid = math.sqrt(lo * hi)
        if spend(mid) <= rate:
            hi = mid
        else:
            lo = mid
    return hi


def price_bounds(quality: np.ndarray, cost: np.ndarray, rate: float,
                 quantile: float = 0.99) -> tuple[float, float]:
    """[L, U] for :func:`hull_threshold` from a sample of (n, m) estimates and the budget
    ``rate`` per query: L the dual price, U the ``quantile`` of the hull slopes."""
    slopes = hull_slopes(quality, cost)
    U = float(np.quantile(slopes, quantile)) if slopes.size else 1.0
    L = dual_price(quality, cost, rate)
    U = max(U, L * (1 + 1e-9), 1e-12)
    return max(L, U * 1e-9), U


class PriceCurve:
    """Average spend per query against the price of a dollar on a sample of (n, m)
    estimates, tabulated on a log grid, so the dual price of any rate is a look-up."""

    def __init__(self, quality: np.ndarray, cost: np.ndarray, points: int = 64,
                 quantile: float = 0.99) -> None:
        quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
        cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
        if quality.size == 0 or not (np.isfinite(quality).all() and np.isfinite(cost).all()):
            raise BudgetError("a price curve needs a non-empty sample of finite estimates")
        slopes = hull_slopes(quality, cost)
        top = float(slopes.max()) if slopes.size else 1.0
        self.U = max(float(np.quantile(slopes, quantile)) if slopes.size else 1.0, 1e-12)
        self.prices = np.concatenate([[0.0], np.geomspace(top * 1e-7, top * 2, points)])
        rows = np.arange(len(quality))
        spends = []
        for price in self.prices:
            score = quality - price * cost
            best = score.max(axis=1, keepdims=True)
            tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
            spends.append(cost[rows, np.where(tied, cost, np.inf).argmin(axis=1)].mean())
        self.spends = np.minimum.accumulate(np.asarray(spends))  # non-increasing in price

    def price(self, rate: float) -> float:
        """The smallest tabulated price whose spend per query is at most ``rate``."""
        ok = np.flatnonzero(self.spends <= rate)
        return float(self.prices[ok[0]]) if ok.size else float(self.prices[-1])

    def bounds(self, rate: float) -> tuple[float, float]:
        L = self.price(rate)
        U = max(self.U, L * (1 + 1e-9))
        return max(L, U * 1e-9), U


def efficiency_bounds(quality: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """[L, U] from per-model mean quality / mean cost of (n, m) matrices (NaN = missing)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.nanmean(np.asarray(quality, dtype=np.float64), axis=0)
        c = np.nanmean(np.asarray(cost, dtype=np.float64), axis=0)
        eff = q / c
    eff = eff[np.isfinite(eff) & (eff > 0)]
    if eff.size == 0:
        raise BudgetError("cannot bound efficiency: no model has positive quality and cost")
    lo, hi = float(eff.min()), float(eff.max())
    return lo, max(hi, lo * (1 + 1e-9))


@dataclass
class Choice:
    """The knapsack's pick for one query (``index`` None: nothing affordable)."""

    index: int | None
    threshold: float
    efficiency: np.ndarray
    feasible: np.ndarray


def knapsack_choice(
    quality: np.ndarray, cost: np.ndarray, reserve: np.ndarray, remaining: float, z: float,
    L: float, U: float, allowed: np.ndarray | None = None, request_cap: float | None = None,
) -> Choice:
    """Pure decision rule (see the module docstring): among the feasible models, the
    best ``quality - psi(z) * cost``, a vertex of the estimates' hull; ties go to the
    cheaper model."""
    quality = np.asarray(quality, dtype=np.float64).reshape(-1)
    cost = np.asarray(cost, dtype=np.float64).reshape(-1)
    reserve = np.asarray(reserve, dtype=np.float64).reshape(-1)
    feasible = reserve <= remaining
    if allowed is not None:
        feasible &= np.asarray(allowed, dtype=bool).reshape(-1)
    if request_cap is not None:
        feasible &= reserve <= request_cap
    eff = quality / np.maximum(cost, 1e-12)
    psi = hull_threshold(z, L, U)
    if not feasible.any():
        return Choice(None, psi, eff, feasible)
    score = np.where(feasible, quality - psi * cost, -np.inf)
    best = score.max()
    tied = score >= best - 1e-12 * max(1.0, abs(best))
    return Choice(int(np.where(tied, cost, np.inf).argmin()), psi, eff, feasible)
