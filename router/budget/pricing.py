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


def hull_segments(quality: np.ndarray, cost: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every segment of every row's cost-quality hull, for (n, m) estimates (``cost`` may
    be (m,)); NaN estimates are skipped. Returns the segments' slopes (marginal quality per
    dollar), their cost steps, and each row's cheapest vertex cost ((n,), NaN for a row
    without a finite estimate): at a price of a dollar ``p`` a row picks the vertex reached
    by taking its segments steeper than ``p``."""
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
    slopes: list[float] = []
    steps: list[float] = []
    base = np.full(len(quality), np.nan)
    for r, (q, c) in enumerate(zip(quality, cost, strict=True)):
        ok = np.isfinite(q) & np.isfinite(c)
        q, c = q[ok], np.maximum(c[ok], 1e-12)
        if q.size == 0:
            continue
        order = np.lexsort((-q, c))
        i = order[0]
        base[r] = c[i]
        while True:  # from the current vertex, the steepest step up to a dearer model
            up = (c > c[i]) & (q > q[i])
            if not up.any():
                break
            slope = np.where(up, (q - q[i]) / np.where(up, c - c[i], 1.0), -np.inf)
            j = int(np.argmax(slope))
            slopes.append(float(slope[j]))
            steps.append(float(c[j] - c[i]))
            i = j
    return np.asarray(slopes), np.asarray(steps), base


def hull_slopes(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Slopes (marginal quality per dollar) of every segment of every row's cost-quality
    hull, for (n, m) estimates (``cost`` may be (m,)); NaN estimates are skipped."""
    return hull_segments(quality, cost)[0]


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
    estimates, exact: the spend is a step function of the price that steps at the hull
    slopes (:func:`hull_segments`), so the dual price of any rate is a look-up among them.

    (A 64-point log grid of prices used to stand in for it: its steps, 30% apart, could lie
    across the estimates' one big step, so on the RouterBench subset at 25% of gpt-4's
    spend the price sat where the sample spent 0.6 against a rate of 1.5 and the budget
    was spent at the end of the stream instead, whatever a price change did.)
    """

    def __init__(self, quality: np.ndarray, cost: np.ndarray, quantile: float = 0.99) -> None:
        quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
        cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
        ok = np.isfinite(quality) & np.isfinite(cost)
        if (quality.size == 0 or np.isinf(quality).any() or np.isinf(cost).any()
                or not ok.any(axis=1).all()):  # NaN: a model missing from a row
            raise BudgetError("a price curve needs a non-empty sample of finite estimates "
                              "(NaN for a missing model, at least one model per row)")
        slopes, steps, base = hull_segments(quality, cost)
        top = float(slopes.max()) if slopes.size else 1.0
        self.U = max(float(np.quantile(slopes, quantile)) if slopes.size else 1.0, 1e-12)
        s = np.sort(slopes)[::-1]  # steepest first: taken as the price falls
        if s.size:  # slopes equal up to round-off are one price (the decisions' tie rule)
            start = np.flatnonzero(np.concatenate([[True], s[1:] < s[:-1] * (1 - 1e-9)]))
            s = np.repeat(np.minimum.reduceat(s, start), np.diff(np.append(start, s.size)))
        spend = base.mean() + np.concatenate([[0.0], np.cumsum(steps[np.argsort(-slopes)])]
                                             ) / len(base)
        # prices ascending; at each, the segments strictly steeper are taken (a tie at the
        # price goes to the cheaper vertex); the highest, twice the steepest slope, takes none
        self.prices = np.unique(np.concatenate([[0.0], s, [top * 2]]))
        taken = np.searchsorted(-s, -self.prices, side="left")  # slopes > each price
        self.spends = spend[taken]

    def price(self, rate: float) -> float:
        """The smallest price of a dollar whose spend per query on the sample is at most
        ``rate`` (a hull slope, where the marginal rows are indifferent; 0 when even the
        best-quality picks fit)."""
        ok = np.flatnonzero(self.spends <= rate * (1 + 1e-12))  # summation round-off
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
