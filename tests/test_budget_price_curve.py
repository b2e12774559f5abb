"""The knapsack's price curve (router.budget.pricing.PriceCurve) is exact.

Its spend at any price of a dollar must be what picking ``argmax q - price * c`` (ties to
the cheaper model) on every sample row spends, and the dual price of a rate the smallest
price whose spend fits it. The 64-point price grid it replaces failed the second where a
big step of the estimates' hull fell between two grid points (the RouterBench subset at
25% of gpt-4's spend: the price sat where the sample spent 0.6 against a rate of 1.5).
"""

from __future__ import annotations

import numpy as np
import pytest

from router.budget.pricing import PriceCurve


def spend_at(quality: np.ndarray, cost: np.ndarray, price: float) -> float:
    score = quality - price * cost
    best = score.max(axis=1, keepdims=True)
    tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    return float(cost[np.arange(len(quality)), np.where(tied, cost, np.inf).argmin(axis=1)]
                 .mean())


def sample(seed: int, rounded: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    quality = rng.random((150, 6))
    if rounded:  # ties: equal qualities, so equal slopes across rows
        quality = np.round(quality, 1)
    return quality, np.broadcast_to(rng.random(6) * 3 + 0.01, quality.shape).copy()


@pytest.mark.parametrize("seed", range(6))
def test_spend_at_every_price_is_the_rows_picks(seed):
    quality, cost = sample(seed, rounded=seed % 2 == 1)
    curve = PriceCurve(quality, cost)
    assert np.all(np.diff(curve.prices) > 0) and np.all(np.diff(curve.spends) <= 1e-15)
    probes = np.concatenate([curve.prices, curve.prices * (1 + 1e-6), curve.prices * 0.999])
    for price in probes:
        i = np.searchsorted(curve.prices, price, side="right") - 1
        assert curve.spends[i] == pytest.approx(spend_at(quality, cost, price), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_dual_price_is_the_smallest_price_that_fits_the_rate(seed):
    quality, cost = sample(seed, rounded=seed % 2 == 0)
    curve = PriceCurve(quality, cost)
    cheapest, dearest = spend_at(quality, cost, 1e9), spend_at(quality, cost, 0.0)
    for rate in np.linspace(cheapest, dearest, 23)[1:-1]:
        price = curve.price(rate)
        assert spend_at(quality, cost, price) <= rate + 1e-12
        assert spend_at(quality, cost, price * (1 - 1e-6)) > rate  # any lower overspends
    assert curve.price(dearest) == 0.0  # the best-quality picks fit: no price
    assert curve.price(cheapest / 2) == curve.prices[-1]  # nothing fits: the top price


def test_a_step_between_grid_points_is_found():
    """Two models, one big hull step at slope 10 for half the rows and 13 for the rest:
    a rate between the two spends needs a price between the slopes, not below 10."""
    n = 200
    cost = np.tile([1.0, 3.0], (n, 1))
    slope = np.where(np.arange(n) < n // 2, 10.0, 13.0)
    quality = np.stack([np.full(n, 0.1), 0.1 + slope * 2.0], axis=1) / 100
    curve = PriceCurve(quality, cost)
    # at a price in (0.10, 0.13) half the rows buy the dear model: spend 2.0
    assert curve.price(2.0) == pytest.approx(0.10)
    assert spend_at(quality, cost, curve.price(2.0)) == pytest.approx(2.0)
    assert curve.price(1.5) == pytest.approx(0.13)
