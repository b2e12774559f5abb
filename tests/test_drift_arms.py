"""Re-pricing when the set of available models changes: the knapsack's price sample leaves
out a removed model and takes in an added one (OnlineKnapsack.resample ``allowed``, the
replay re-deriving it when ``allowed`` changes), and the gateway's recent-estimates curve
takes decisions among any number of candidates."""

from __future__ import annotations

import numpy as np
import pytest

from eval.online import DEFAULT_PARAMS
from eval.scenarios import build_world
from eval.stream import decision_values, replay
from policies.linucb import LinUCBPolicy
from router.budget import BudgetError, BudgetSpec, EmbeddedLedger, OnlineKnapsack, auto_bins
from router.budget.pricing import PriceCurve
from tests.test_bandit_drift import MODELS, make

KEEP = np.array([True, True, False])  # the $10 model removed


def three_models(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 0.5 @ $1, 0.5-0.6 @ $2 and 0.5-1.0 @ $10: at a rate of $3 the dual price
    sends some rows to the $10 model and the rows where the $2 model is little better to
    the $1 one; without the $10 model the whole rate is free for the $2 model."""
    rng = np.random.default_rng(seed)
    q = np.column_stack([np.full(n, 0.5), 0.5 + 0.1 * rng.random(n), 0.5 + 0.5 * rng.random(n)])
    return q, np.tile([1.0, 2.0, 10.0], (n, 1))


def stream(ks: OnlineKnapsack, q: np.ndarray, c: np.ndarray) -> float:
    """Spend of streaming the rows (estimates = the sample) with the $10 model removed."""
    total = 0.0
    for t in range(len(q)):
        d = ks.decide(q[t], c[t], c[t], now=float(t), allowed=KEEP)
        assert d.index != 2
        ks.commit(d, c[t, d.index], now=float(t))
        total += c[t, d.index]
    return total


def test_removed_model_leaves_the_price_sample_and_spend_rises_toward_the_rate():
    q, c = three_models()
    n, rate = len(q), 3.0

    def knapsack() -> OnlineKnapsack:
        return OnlineKnapsack(EmbeddedLedger(), BudgetSpec(rate * n, horizon=n, n_bins=1),
                              price_sample=(q, c))

    stale, fresh = knapsack(), knapsack()
    fresh.resample(q, c, allowed=KEEP)
    # the price is the dual price of the two models left, as if the third never existed
    first = fresh.decide(q[0], c[0], c[0], now=0.0, allowed=KEEP)
    fresh.release(first)
    assert first.threshold == pytest.approx(PriceCurve(q[:, :2], c[:, :2]).bounds(rate)[0])
    assert stale.decide(q[0], c[0], c[0], now=0.0).threshold > 0.01  # priced on the $10 one
    fresh = knapsack()
    fresh.resample(q, c, allowed=KEEP)
    spent_stale, spent_fresh = stream(stale, q, c), stream(fresh, q, c)
    best = float(c[np.arange(n), np.where(q[:, 1] > q[:, 0], 1, 0)].sum())  # rate not binding
    assert spent_stale < 0.9 * best  # the stale sample prices the $2 model out of rows
    assert spent_fresh == pytest.approx(best) and spent_fresh <= rate * n
    with pytest.raises(BudgetError):
        fresh.resample(q, c, allowed=[True, False])  # one entry per model
    with pytest.raises(BudgetError):
        fresh.resample(q, c, allowed=[False, False, False])  # nothing left to price


def test_gateway_curve_takes_any_number_of_candidates():
    """Regression: the recent-estimates curve stacked rows of different lengths (a backend
    removed, a fallback retry with fewer candidates) and raised ValueError. Padded with
    missing entries, once the window holds only two-candidate decisions the price is that
    of a knapsack that only ever saw two."""
    q, c = three_models(64, seed=1)
    spec = BudgetSpec(3.0 * 400, horizon=400, n_bins=1)
    mixed = OnlineKnapsack(EmbeddedLedger(), global_budget=spec, window=32, recalibrate=4)
    two = OnlineKnapsack(EmbeddedLedger(), global_budget=spec, window=32, recalibrate=4)
    for t in range(20):  # three candidates
        mixed.release(mixed.decide(q[t], c[t], now=float(t)))
    for t in range(20, 64):  # the $10 backend gone
        d = mixed.decide(q[t, :2], c[t, :2], now=float(t))
        mixed.release(d)
        e = two.decide(q[t, :2], c[t, :2], now=float(t))
        two.release(e)
    assert d.threshold == pytest.approx(e.threshold) and d.index == e.index


def test_replay_reprices_when_the_available_models_change():
    """The swap world: the new model is left out of the pilot's price sample until it
    appears, the removed one from the change on; a stationary world never re-prices."""
    train, test = make(500, 1), make(400, 2)
    calls: list[np.ndarray | None] = []

    class Recording(OnlineKnapsack):
        def resample(self, quality, cost, allowed=None):
            calls.append(None if allowed is None else np.array(allowed))
            super().resample(quality, cost, allowed)

    for name, params in (("swap", {"model": "big", "new": "mid"}), ("stationary", {})):
        world = build_world(name, params, train, test, MODELS, seed=3)
        pr = world.prior
        pol = LinUCBPolicy(**DEFAULT_PARAMS).fit(pr.X, pr.quality, pr.cost, MODELS, pr.tasks)
        B = 0.5 * float(world.cost[:, MODELS.index("big")].sum())
        ks = Recording(EmbeddedLedger(), BudgetSpec(
            B, horizon=world.T, n_bins=auto_bins(B, float(np.nanmax(pr.cost)), world.T)),
            price_sample=decision_values(pol, pr.X))
        calls.clear()
        rep = replay(pol, world.X, world.quality, world.cost, ks, allowed=world.allowed,
                     resample=lambda p, X=pr.X: decision_values(p, X))
        assert rep.cost.sum() <= B * (1 + 1e-9)
        masks = [m for m in calls if m is not None]
        if name == "stationary":
            assert masks == []
            continue
        big, mid = MODELS.index("big"), MODELS.index("mid")
        assert np.array_equal(masks[0], world.allowed[0]) and not masks[0][mid]
        assert any(np.array_equal(m, world.allowed[-1]) for m in masks)
        assert not masks[-1][big] and masks[-1][mid]  # the removed model left the sample
