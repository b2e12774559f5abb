"""The informed replay (eval.drift's ``ridge-paced`` yardstick) and settle_near against a
reference series, on the synthetic data of tests/test_bandit_drift.py."""

from __future__ import annotations

import numpy as np
import pytest

from eval.drift import replay_world
from eval.online import DEFAULT_PARAMS
from eval.scenarios import build_world, settle_near
from policies.linucb import LinUCBPolicy
from tests.test_bandit_drift import MODELS, make, scenario


@pytest.fixture(scope="module")
def splits():
    return make(500, 1), make(400, 2)


def test_settle_near_holds_each_tail_to_the_reference_tail():
    ref = np.r_[np.ones(100), np.zeros(200)]  # the reference leaves the arm after 100
    assert settle_near(ref.copy(), ref, 0.05) == 0
    late = np.r_[np.ones(160), np.zeros(140)]  # follows 60 queries late
    got = settle_near(late, ref, 0.05)
    assert got is not None and 100 < got <= 160
    # against the reference's overall share (0.33) the lagging series settles only where
    # its tail happens to cross it, not where it starts to follow
    assert settle_near(np.ones(300), ref, 0.05) is None  # never follows
    with pytest.raises(ValueError, match="300 values"):
        settle_near(late, ref[:10], 0.05)


def test_replay_switches_policy_at_the_change(splits):
    """From the change on the informed replay decides with the refit: in the degrade
    world it never sends the dead backend anything, the frozen prior keeps doing so."""
    train, test = splits
    world = build_world("degrade", {"model": "big"}, train, test, MODELS, seed=3)
    refit = LinUCBPolicy(**{**DEFAULT_PARAMS, "alpha": 0.0}).fit(
        world.refit.X, world.refit.quality, world.refit.cost, MODELS, world.refit.tasks)
    B = 0.5 * float(world.cost[:, 3].sum())
    frozen = replay_world(world, MODELS, dict(DEFAULT_PARAMS), B, learn=False)
    informed = replay_world(world, MODELS, dict(DEFAULT_PARAMS), B, learn=False, after=refit)
    k = world.change
    assert np.array_equal(frozen.chosen[:k], informed.chosen[:k])  # the same until the change
    big = MODELS.index("big")
    assert (frozen.chosen[k:] == big).mean() > 0.2
    assert (informed.chosen[k:] == big).mean() == 0.0
    assert informed.reward[k:].mean() > frozen.reward[k:].mean() + 0.1
    assert informed.cost.sum() <= B * (1 + 1e-9)


def test_price_adaptation_is_measured_against_the_informed_replay(splits):
    res = scenario("price", splits, fractions=(0.5,))
    entry = res["budgets"][0]
    paced = entry["refit"]["ridge-paced"]  # the refit through the same knapsack
    pilot, frozen = entry["runs"]["pilot"], entry["runs"]["prior-only"]
    assert paced["affected_share"] < frozen["after"]["affected_share"]  # it knows the price
    assert pilot["adapt_queries"] is not None and pilot["adapt_queries"] <= 200
    assert "adapt_matched" in pilot  # the matched refit's reading is kept beside it
    assert abs(pilot["after"]["affected_share"] - paced["affected_share"]) < 0.1
