"""Re-pricing after a detected change: the knapsack's fixed price sample re-derived from the
policy's current estimates (OnlineKnapsack.resample, eval.stream.replay's ``resample``)."""

from __future__ import annotations

import numpy as np
import pytest

from eval.online import DEFAULT_PARAMS
from eval.scenarios import build_world
from eval.stream import decision_values, replay, resets
from policies.linucb import LinUCBPolicy
from router.budget import BudgetError, BudgetSpec, EmbeddedLedger, OnlineKnapsack, auto_bins
from tests.test_bandit_drift import MODELS, make


@pytest.fixture(scope="module")
def splits():
    return make(500, 1), make(400, 2)


def test_resample_moves_the_price_to_the_remaining_models():
    """Sample: 0.5 @ $1, 0.6 @ $2, 0.9 @ $10 on every row, a rate of $3 per query: the dual
    price is the 0.6 -> 0.9 slope (0.0375). Once the $10 model is known to answer nothing,
    even the best picks fit the rate, so the price falls to the floor and a query that
    was priced onto the cheapest model goes to the middle one."""
    q = np.tile([0.5, 0.6, 0.9], (20, 1))
    c = np.tile([1.0, 2.0, 10.0], (20, 1))
    spec = BudgetSpec(3.0 * 20, horizon=20, n_bins=1)
    ks = OnlineKnapsack(EmbeddedLedger(), spec, price_sample=(q, c))
    est_q, est_c = np.array([0.5, 0.53, 0.0]), np.array([1.0, 2.0, 10.0])
    before = ks.decide(est_q, est_c, est_c, now=0.0)
    assert before.threshold == pytest.approx(0.0375)
    assert before.index == 0
    ks.release(before)
    dead = q.copy()
    dead[:, 2] = 0.0
    ks.resample(dead, c)
    after = ks.decide(est_q, est_c, est_c, now=1.0)
    assert after.threshold < 1e-6 and after.index == 1
    with pytest.raises(BudgetError):
        ks.resample(np.full((2, 3), np.nan), c[:2])


def _run(world, B: float, learn: bool, again: bool):
    pr = world.prior
    pol = LinUCBPolicy(**DEFAULT_PARAMS).fit(pr.X, pr.quality, pr.cost, MODELS, pr.tasks)
    sample = decision_values(pol, pr.X)
    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(
        B, horizon=world.T, n_bins=auto_bins(B, float(np.nanmax(pr.cost)), world.T)),
        price_sample=sample)
    calls: list[int] = []

    def resample(p):
        calls.append(resets(p))
        return decision_values(p, pr.X)

    rep = replay(pol, world.X, world.quality, world.cost, ks, learn=learn,
                 allowed=world.allowed, resample=resample if again else None)
    return rep, pol, calls


def test_replay_reprices_once_per_detected_change(splits):
    train, test = splits
    world = build_world("degrade", {"model": "big"}, train, test, MODELS, seed=3)
    B = 0.5 * float(world.cost[:, 3].sum())
    rep, pol, calls = _run(world, B, learn=True, again=True)
    fired = resets(pol)
    assert fired > 0 and calls == list(range(1, fired + 1))  # each firing, in order
    assert rep.cost.sum() <= B * (1 + 1e-9)
    plain, _, none = _run(world, B, learn=True, again=False)
    assert none == [] and not np.array_equal(plain.chosen, rep.chosen)  # the price moved
    frozen, _, still = _run(world, B, learn=False, again=True)
    assert still == []  # a policy that does not learn never fires


def test_no_change_no_repricing(splits):
    """A stationary stream: the detectors stay quiet, the replay is the one without it."""
    train, test = splits
    world = build_world("stationary", {}, train, test, MODELS, seed=3)
    B = 0.25 * float(world.cost[:, 3].sum())
    rep, pol, calls = _run(world, B, learn=True, again=True)
    plain, _, _ = _run(world, B, learn=True, again=False)
    assert resets(pol) == 0 and calls == []
    assert np.array_equal(rep.chosen, plain.chosen)
