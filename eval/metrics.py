"""Cost-quality metrics for routers (pure numpy). Definitions: eval/README.md.

A router evaluated at several operating points (one per ``lam``) gives (cost, quality)
points, cost being the mean USD per query and quality the mean quality per query.

* :func:`pareto_hull` - RouterBench's non-decreasing convex hull of those points;
* :func:`aiq` - RouterBench's Average Improvement in Quality: area under the hull over a
  cost range, divided by the range (ours: the single models' range);
* :func:`aiq_routerbench` - AIQ as RouterBench's own evaluation code computes it (from the
  hull's cheapest point to the largest cost of all curves, divided by that cost);
* :func:`apgr` / :func:`cpt` - RouteLLM's Average Performance Gap Recovered and Call
  (cost) Percentage Threshold, on a cost axis normalised between a weak and a strong model;
* :func:`cost_to_reach`, :func:`quality_at_cost` - read the hull at a quality or a cost;
* :func:`comparison_costs`, :func:`hull_difference` - two hulls at matched costs;
* :func:`bootstrap_counts`, :func:`percentile_ci` - paired bootstrap over test queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


def pareto_hull(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Non-decreasing upper convex hull of (cost, quality) points, as (k, 2) sorted by cost.

    Dominated points (another point is at most as expensive and at least as good) are
    dropped, then points under the segment joining their neighbours (a random mix of the
    two neighbouring operating points does better for the same cost). The result starts
    at the cheapest point (best quality among equally cheap ones) and ends at the
    cheapest point of maximum quality; quality strictly increases along it.
    """
    cost = np.asarray(cost, dtype=np.float64).reshape(-1)
    quality = np.asarray(quality, dtype=np.float64).reshape(-1)
    if cost.shape != quality.shape:
        raise ValueError(f"cost {cost.shape} and quality {quality.shape} differ in shape")
    ok = np.isfinite(cost) & np.isfinite(quality)
    if not ok.any():
        raise ValueError("no finite (cost, quality) point")
    cost, quality = cost[ok], quality[ok]
    order = np.lexsort((-quality, cost))  # by cost, then best quality first
    hull: list[tuple[float, float]] = []
    best = -np.inf
    for c, q in zip(cost[order].tolist(), quality[order].tolist(), strict=True):
        if q <= best + _EPS:  # dominated by a cheaper (or equally cheap) point
            continue
        best = q
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord (x1,y1)-(c,q)
            if (y2 - y1) * (c - x1) <= (q - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append((c, q))
    return np.asarray(hull, dtype=np.float64)


def hull_value(hull: np.ndarray, cost: float | np.ndarray, below: float = 0.0) -> np.ndarray:
    """The hull as a function of cost: linear between its points, flat after its last
    point, and ``below`` (default 0, RouterBench's convention) before its first point."""
    x, y = hull[:, 0], hull[:, 1]
    cost = np.asarray(cost, dtype=np.float64)
    value = np.interp(cost, x, y)  # flat on both sides
    return np.where(cost < x[0] - _EPS * max(1.0, abs(x[0])), below, value)


def area_under_hull(hull: np.ndarray, lo: float, hi: float, below: float = 0.0) -> float:
    """Exact integral of :func:`hull_value` over [lo, hi]."""
    if hi <= lo:
        return 0.0
    x, y = hull[:, 0], hull[:, 1]
    total = 0.0
    if x[0] > lo:  # before the first operating point
        total += below * (min(hi, x[0]) - lo)
    if hi > x[-1]:  # flat after the last point
        total += y[-1] * (hi - max(lo, x[-1]))
    a, b = max(lo, x[0]), min(hi, x[-1])
    if b > a:
        inner = x[(x > a) & (x < b)]
        grid = np.concatenate(([a], inner, [b]))
        vals = np.interp(grid, x, y)
        total += float(np.sum((vals[1:] + vals[:-1]) * np.diff(grid)) / 2.0)
    return float(total)


def aiq(hull: np.ndarray, c_min: float, c_max: float) -> float:
    """Area under the hull over [c_min, c_max] divided by (c_max - c_min).

    ``c_min``/``c_max`` are the cheapest and the most expensive single model's mean cost.
    Quality counts 0 below the hull's cheapest point and stays flat after its last one.
    A zero-width range gives the hull's value at ``c_min``.
    """
    if c_max - c_min <= _EPS * max(1.0, abs(c_max)):
        return float(hull_value(hull, c_min))
    return area_under_hull(hull, c_min, c_max) / (c_max - c_min)


def aiq_routerbench(hull: np.ndarray, c_top: float) -> float:
    """AIQ as in RouterBench's published evaluation code (``evaluation/AIQ.py``).

    The hull is integrated from its own cheapest point to ``c_top``, the largest cost of
    all curves (and single models) of the evaluation, flat after its last point, and the
    area is divided by ``c_top``: the stretch from cost 0 to the hull's cheapest point
    counts as quality 0. :func:`aiq` instead averages over the single models' cost range
    ``[c_min, c_max]``, so the two differ by the (0, c_min) stretch and by ``c_top`` versus
    ``c_max``. Use this one to set figures beside published RouterBench numbers. A zero
    ``c_top`` (free models) gives the hull's value there.
    """
    if c_top <= _EPS:
        return float(hull_value(hull, c_top))
    if c_top < hull[0, 0] - _EPS * max(1.0, abs(c_top)):
        raise ValueError(f"c_top {c_top} is below the hull's cheapest point {hull[0, 0]}")
    return area_under_hull(hull, float(hull[0, 0]), c_top) / c_top


def cost_to_reach(hull: np.ndarray, target: float) -> float | None:
    """Smallest cost at which the hull reaches ``target`` quality (None if it never does)."""
    x, y = hull[:, 0], hull[:, 1]
    tol = 1e-9
    if y[-1] < target - tol:
        return None
    if y[0] >= target - tol:
        return float(x[0])
    i = int(np.searchsorted(y, target - tol))  # y strictly increases along the hull
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def quality_at_cost(hull: np.ndarray, cost: float) -> float | None:
    """Hull quality at ``cost``; None when ``cost`` is below the router's cheapest point."""
    if cost < hull[0, 0] - _EPS * max(1.0, abs(hull[0, 0])):
        return None
    return float(hull_value(hull, cost))


def comparison_costs(hull: np.ndarray, base: np.ndarray, n_grid: int = 20) -> np.ndarray:
    """Costs at which to compare ``hull`` with the baseline hull ``base``, sorted.

    The common cost range runs from the later of the two hulls' cheapest points (below
    it one of them has no operating point) to the later of their last points (beyond it
    both are flat). The costs are ``base``'s vertices inside that range plus ``n_grid``
    costs spread geometrically over it (linearly when it starts at 0); one cost when the
    range is a single point.
    """
    lo = max(float(hull[0, 0]), float(base[0, 0]))
    hi = max(float(hull[-1, 0]), float(base[-1, 0]), lo)
    tol = _EPS * max(1.0, abs(hi))
    if hi - lo <= tol:
        return np.array([lo])
    grid = np.geomspace(lo, hi, n_grid) if lo > 0 else np.linspace(lo, hi, n_grid)
    inside = base[:, 0][(base[:, 0] >= lo - tol) & (base[:, 0] <= hi + tol)]
    costs = np.sort(np.concatenate(([lo, hi], grid[1:-1], np.clip(inside, lo, hi))))
    keep = np.concatenate(([True], np.diff(costs) > 1e-9 * np.maximum(1.0, costs[1:])))
    return costs[keep]


def hull_difference(hull: np.ndarray, base: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """``H(c) - H_base(c)`` at each cost; NaN where ``c`` is below either hull's cheapest
    point (a quality that cheap is not on offer, so there is nothing to match)."""
    costs = np.asarray(costs, dtype=np.float64)
    nan = float("nan")
    return hull_value(hull, costs, below=nan) - hull_value(base, costs, below=nan)


def aiq_difference_by_segment(hull: np.ndarray, base: np.ndarray,
                              edges: np.ndarray) -> np.ndarray:
    """Where along the cost axis ``hull`` gains or loses AIQ against ``base``: per
    segment ``[edges[i], edges[i+1]]``, the area between the two hulls divided by the
    whole range ``edges[-1] - edges[0]`` (as :func:`aiq`). With edges running from
    ``c_min`` to ``c_max`` the segments sum to ``aiq(hull) - aiq(base)``."""
    edges = np.asarray(edges, dtype=np.float64).reshape(-1)
    if edges.size < 2 or (np.diff(edges) < 0).any():
        raise ValueError("edges must be at least two non-decreasing costs")
    width = float(edges[-1] - edges[0])
    if width <= _EPS * max(1.0, abs(float(edges[-1]))):
        return np.zeros(edges.size - 1)
    return np.array([(area_under_hull(hull, a, b) - area_under_hull(base, a, b)) / width
                     for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)])


def max_quality(cost: np.ndarray, quality: np.ndarray) -> tuple[float, float]:
    """Best quality among the points, and the lowest cost at which it is reached."""
    hull = pareto_hull(cost, quality)
    return float(hull[-1, 1]), float(hull[-1, 0])


@dataclass(frozen=True)
class Anchor:
    """A weak or strong reference model: its mean cost and quality."""

    cost: float
    quality: float


def pgr(quality: float | np.ndarray, weak: Anchor, strong: Anchor) -> np.ndarray:
    """Performance Gap Recovered: (q - q_weak) / (q_strong - q_weak)."""
    return (np.asarray(quality, dtype=np.float64) - weak.quality) / (strong.quality - weak.quality)


def gap_defined(weak: Anchor, strong: Anchor) -> str | None:
    """Why APGR/CPT are undefined for this pair (None when they are defined)."""
    if strong.quality - weak.quality <= _EPS:
        return "the strong model is not better than the weak model"
    if strong.cost - weak.cost <= _EPS * max(1.0, abs(strong.cost)):
        return "the strong model is not more expensive than the weak model"
    return None


def _normalised(hull: np.ndarray, weak: Anchor, strong: Anchor) -> tuple[np.ndarray, np.ndarray]:
    xs = (hull[:, 0] - weak.cost) / (strong.cost - weak.cost)
    return xs, pgr(hull[:, 1], weak, strong)


def apgr(hull: np.ndarray, weak: Anchor, strong: Anchor) -> tuple[float | None, float]:
    """Average PGR over the normalised cost axis x = (c - c_weak) / (c_strong - c_weak).

    x plays the role of RouteLLM's share of calls to the strong model (exactly so for a
    two-model router with constant per-call costs). The average runs over [0, 1] where
    the router can operate, i.e. from max(0, x of its cheapest point); the hull is flat
    after its last point. Returns (APGR, coverage) with coverage the share of [0, 1]
    averaged over; a router that starts at or above the strong model's cost gets the PGR
    of its cheapest point (coverage 0). (None, 0) when the pair leaves PGR undefined.
    """
    if gap_defined(weak, strong) is not None:
        return None, 0.0
    xs, ps = _normalised(hull, weak, strong)
    lo = max(0.0, float(xs[0]))
    if lo >= 1.0 - _EPS:
        return float(ps[0]), 0.0
    area = area_under_hull(np.column_stack([xs, ps]), lo, 1.0)
    return area / (1.0 - lo), 1.0 - lo


def cpt(hull: np.ndarray, weak: Anchor, strong: Anchor, fraction: float) -> float | None:
    """Normalised cost x (>= 0) at which the router first recovers ``fraction`` of the gap.

    RouteLLM's CPT(50%) is ``cpt(..., 0.5)``: the share of strong-model calls needed; here
    the cost-equivalent share. May exceed 1 (needs more than the strong model's cost);
    None when never reached or undefined.
    """
    if gap_defined(weak, strong) is not None:
        return None
    xs, ps = _normalised(hull, weak, strong)
    x = cost_to_reach(np.column_stack([xs, ps]), fraction)
    return None if x is None else max(0.0, x)


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) resampling counts: row b says how often each query is drawn."""
    if n <= 0 or n_boot <= 0:
        return np.zeros((0, max(n, 0)), dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.reshape(-1), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of the finite bootstrap samples (None if there are none)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]
