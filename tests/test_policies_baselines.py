"""Known-answer tests for the baseline policies (random, cheapest, single, task-static, oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import make_policy
from policies.base import PolicyError
from tests.test_policies_common import MODELS, PRICE, two_clusters


@pytest.fixture(scope="module")
def data():
    return two_clusters(n=100)


def test_random_is_seeded_per_query_and_costs_are_train_means(data):
    X, quality, cost, tasks, _ = data
    a = make_policy("random", seed=3).fit(X, quality, cost, MODELS)
    b = make_policy("random", seed=3).fit(X, quality, cost, MODELS)
    c = make_policy("random", seed=4).fit(X, quality, cost, MODELS)
    ea, eb, ec = (p.predict(X) for p in (a, b, c))
    np.testing.assert_array_equal(ea.quality, eb.quality)
    assert not np.array_equal(ea.quality, ec.quality)
    # a query's scores do not depend on the batch it comes in
    np.testing.assert_array_equal(a.predict(X[5:6]).quality[0], ea.quality[5])
    assert ((ea.quality >= 0) & (ea.quality < 1)).all()
    assert len({tuple(r) for r in ea.quality.round(6)}) == len(X)  # independent draws
    np.testing.assert_allclose(ea.cost[0], cost.mean(axis=0))
    # it routes to both models, roughly half and half
    share = a.route(X).mean()
    assert 0.3 < share < 0.7


def test_cheapest_always_picks_the_cheapest_model(data):
    X, quality, cost, tasks, _ = data
    policy = make_policy("cheapest").fit(X, quality, cost, MODELS)
    for lam in (0.0, 1.0, 1e6):
        assert (policy.route(X, lam=lam) == 1).all()
    assert (policy.route(X, budget=1.0) == 1).all()
    np.testing.assert_allclose(policy.predict(X[:1]).cost[0], cost.mean(axis=0))


def test_single_routes_to_its_model_whatever_lam_or_budget(data):
    X, quality, cost, tasks, _ = data
    policy = make_policy("single", model="big").fit(X, quality, cost, MODELS)
    for lam in (0.0, 100.0, 1e9):
        assert (policy.route(X, lam=lam) == 0).all()
    for budget in (0.0, 0.005, 1.0):
        assert (policy.route(X, budget=budget) == 0).all()
    decision = policy.route_one(X[0])
    assert decision.model == "big"
    assert decision.quality == pytest.approx(0.5)
    assert decision.cost == pytest.approx(cost[:, 0].mean())
    # with "big" unavailable the shared choose falls back to another model
    est = policy.predict(X[:1])
    from policies import choose

    assert choose(est.quality, est.cost, allowed=np.array([False, True]))[0] == 1


def test_single_needs_a_known_model(data):
    X, quality, cost, tasks, _ = data
    with pytest.raises(PolicyError, match="required"):
        make_policy("single").fit(X, quality, cost, MODELS)
    with pytest.raises(PolicyError, match="unknown model 'gpt-9'"):
        make_policy("single", model="gpt-9").fit(X, quality, cost, MODELS)


def test_best_single_picks_best_mean_quality_and_breaks_ties_by_cost(data):
    X, quality, cost, tasks, labels = data
    q = quality.copy()
    q[labels == 1, 1] = 0.0
    q[:10, 1] = 1.0  # "small" is right on 10 extra prompts of cluster 0
    policy = make_policy("best-single").fit(X, q, cost, MODELS)
    assert policy.chosen_model_ == "big"
    q[:20, 1] = 1.0
    q[labels == 1, 1] = 1.0
    assert make_policy("best-single").fit(X, q, cost, MODELS).chosen_model_ == "small"
    tie = np.ones_like(q)  # equal quality: the cheaper model
    assert make_policy("best-single").fit(X, tie, cost, MODELS).chosen_model_ == "small"
    assert make_policy("best-single").get_params() == {}


def test_task_static_uses_per_task_means_and_falls_back_to_global(data):
    X, quality, cost, tasks, labels = data
    policy = make_policy("task-static").fit(X, quality, cost, MODELS, tasks=tasks)
    est = policy.predict(X[:2], tasks=["task0", "task1"])
    np.testing.assert_allclose(est.quality, [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(est.cost[0], cost[labels == 0].mean(axis=0))
    assert policy.route(X[:2], tasks=["task0", "task1"]).tolist() == [0, 1]
    # large lam: the cheap model for every task; budget below "big" excludes it
    assert policy.route(X[:2], lam=1e4, tasks=["task0", "task1"]).tolist() == [1, 1]
    assert policy.route(X[:2], budget=0.005, tasks=["task0", "task1"]).tolist() == [1, 1]
    # no label, or a task never seen in training: the global means
    for t in (None, ["unseen", "unseen"]):
        est = policy.predict(X[:2], tasks=t)
        np.testing.assert_allclose(est.quality, [[0.5, 0.5], [0.5, 0.5]])
        np.testing.assert_allclose(est.cost[0], cost.mean(axis=0))
    # fitted without labels it is the global mean for everyone
    plain = make_policy("task-static").fit(X, quality, cost, MODELS)
    np.testing.assert_allclose(plain.predict(X[:1], tasks=["task0"]).quality, [[0.5, 0.5]])


def test_task_static_ignores_missing_cells(data):
    X, quality, cost, tasks, labels = data
    q = quality.copy()
    rows0 = np.flatnonzero(labels == 0)
    q[rows0[::3], 0] = np.nan  # a third of "big"'s cluster-0 grades are missing
    policy = make_policy("task-static").fit(X, q, cost, MODELS, tasks=tasks)
    assert policy.predict(X[:1], tasks=["task0"]).quality[0, 0] == 1.0  # not 2/3


def test_task_static_smoothing_shrinks_toward_global(data):
    X, quality, cost, tasks, _ = data
    policy = make_policy("task-static", smoothing=50).fit(X, quality, cost, MODELS, tasks=tasks)
    q = policy.predict(X[:1], tasks=["task0"]).quality[0, 0]
    assert q == pytest.approx((50 * 1.0 + 50 * 0.5) / 100)
    with pytest.raises(PolicyError, match="smoothing"):
        make_policy("task-static", smoothing=-1).fit(X, quality, cost, MODELS, tasks=tasks)


def test_oracle_picks_the_cheapest_correct_model(data):
    X, quality, cost, tasks, _ = data
    oracle = make_policy("oracle").fit(X, quality, cost, MODELS)
    truth_q = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]])
    truth_c = np.tile(PRICE, (4, 1))
    picks = oracle.route(X[:4], lam=1e-6, truth=(truth_q, truth_c))
    assert picks.tolist() == [1, 0, 1, 1]  # both right -> cheap; none right -> cheapest
    assert oracle.evaluation_only
    with pytest.raises(PolicyError, match="evaluation-only"):
        oracle.predict(X[:4])
    with pytest.raises(PolicyError, match="shape"):
        oracle.predict(X[:4], truth=(truth_q[:3], truth_c[:3]))
