"""The single-query choice rule (policies._choose_one) picks what policies.base.choose picks."""

from __future__ import annotations

import numpy as np
import pytest

from policies._choose_one import choose_one, runner_up
from policies.base import Estimate, PolicyError, choose, decision_from_estimate


def _case(rng: np.random.Generator, t: int):
    m = int(rng.integers(1, 8))
    # coarse values make exact ties (and ties within 1e-12) common
    quality = rng.choice([0.0, 0.25, 0.5, 1.0], m) if t % 3 == 0 else rng.random(m)
    cost = rng.choice([0.0, 1e-3, 2e-3], m) if t % 5 == 0 else rng.random(m) * 1e-2
    if t % 7 == 0:
        quality[0] = quality[-1] + 1e-13
    lam = (0.0, 1.0, 10.0, 100.0)[t % 4]
    budget = None if t % 2 else float(rng.choice([0.0, 1e-3, 5e-3, 1.0]))
    allowed = None if t % 3 == 1 else rng.random(m) < 0.7
    if allowed is not None and not allowed.any():
        allowed[rng.integers(m)] = True
    return quality, cost, lam, budget, allowed


def test_choose_one_agrees_with_choose_on_random_estimates():
    rng = np.random.default_rng(0)
    for t in range(5000):
        quality, cost, lam, budget, allowed = _case(rng, t)
        expected = int(choose(quality[None], cost[None], lam=lam, budget=budget,
                              allowed=allowed)[0])
        assert choose_one(quality, cost, lam, budget, allowed) == expected, t
        # plain lists (the gateway's form) give the same
        mask = None if allowed is None else allowed.tolist()
        assert choose_one(quality.tolist(), cost.tolist(), lam, budget, mask) == expected


def test_choose_one_non_finite_estimates_and_errors():
    q, c = np.array([np.nan, 0.5, np.inf]), np.array([1e-3, 1e-3, 1e-2])
    assert choose_one(q, c, 1.0) == int(choose(q[None], c[None], lam=1.0)[0])
    with pytest.raises(PolicyError, match="no candidate"):
        choose_one([0.5, 0.6], [1e-3, 1e-3], allowed=[False, False])
    with pytest.raises(PolicyError):
        choose_one([0.5], [1e-3, 1e-3])
    with pytest.raises(PolicyError, match="lam"):
        choose_one([0.5], [1e-3], lam=-1.0)


def test_runner_up_and_decision_match_the_array_rule():
    rng = np.random.default_rng(1)
    for t in range(3000):
        quality, cost, lam, budget, allowed = _case(rng, t)
        d = decision_from_estimate(Estimate(quality[None], cost[None]), list("abcdefg")[:len(
            quality)], lam=lam, budget=budget, allowed=allowed)
        score = quality - lam * cost
        masked = score.copy()
        masked[d.index] = -np.inf
        if allowed is not None:
            masked[~allowed] = -np.inf
        expected = int(np.argmax(masked)) if np.isfinite(masked).any() else None
        assert runner_up(score, d.index, allowed) == expected
        assert d.runner_up == (None if expected is None else "abcdefg"[expected])
        assert d.scores == {m: float(s) for m, s in zip("abcdefg", score, strict=False)}
