"""kNN policy: known-answer routing, shrinkage, missing cells, tuning and parameters."""

from __future__ import annotations

import numpy as np
import pytest

from policies import make_policy
from policies.base import PolicyError
from tests.test_policies_common import MODELS, two_clusters


@pytest.fixture(scope="module")
def data():
    return two_clusters(n=160)


@pytest.fixture(scope="module")
def test_data():
    return two_clusters(n=60, seed=7)


@pytest.mark.parametrize("weighting", ["uniform", "distance"])
def test_routes_each_cluster_to_its_model_and_to_the_cheap_one_at_large_lam(
    weighting, data, test_data
):
    X, quality, cost, tasks, _ = data
    Xt, _, _, _, labels = test_data
    policy = make_policy("knn", weighting=weighting).fit(X, quality, cost, MODELS)
    picks = policy.route(Xt, lam=0.0)
    assert (picks == np.where(labels == 0, 0, 1)).all()
    assert (policy.route(Xt, lam=1e4) == 1).all()
    # a budget below "big"'s cost excludes it; a generous one changes nothing
    assert (policy.route(Xt, budget=0.005) == 1).all()
    assert (policy.route(Xt, budget=1.0) == picks).all()
    # cost follows the neighbours: "big" costs about 10x "small"
    est = policy.predict(Xt)
    assert np.allclose(est.cost[:, 0] / est.cost[:, 1], 10, rtol=0.15)


def test_auto_tuning_stores_chosen_values_and_cv_losses(data):
    X, quality, cost, tasks, _ = data
    policy = make_policy("knn", seed=1).fit(X, quality, cost, MODELS, tasks=tasks)
    assert isinstance(policy.k_, int) and 1 <= policy.k_ <= len(X)
    assert policy.alpha_ >= 0 and policy.alpha_cost_ >= 0 and policy.temperature_ > 0
    assert policy.cv_["metric"] == "utility"
    assert np.isfinite(np.asarray(policy.cv_["loss"])).all()
    # fixed values are kept as given
    fixed = make_policy("knn", k=7, alpha=3.0, temperature=0.1).fit(X, quality, cost, MODELS)
    assert (fixed.k_, fixed.alpha_, fixed.temperature_) == (7, 3.0, 0.1)
    again = make_policy("knn", seed=1).fit(X, quality, cost, MODELS, tasks=tasks)
    assert (again.k_, again.alpha_, again.temperature_) == (
        policy.k_, policy.alpha_, policy.temperature_)


def test_alpha_shrinks_toward_the_inferred_task_prior(data):
    X, quality, cost, tasks, labels = data
    q = quality.copy()
    # inside task0, "big" is right on 80% of prompts: its task mean is 0.8
    rows0 = np.flatnonzero(labels == 0)
    q[rows0[::5], 0] = 0.0
    common = dict(k=5, weighting="uniform")
    strong = make_policy("knn", alpha=1e6, **common).fit(X, q, cost, MODELS, tasks=tasks)
    est = strong.predict(X[rows0[1:2]])  # no task label given: it is inferred
    assert est.quality[0, 0] == pytest.approx(0.8, abs=1e-3)
    assert est.quality[0, 1] == pytest.approx(0.0, abs=1e-3)
    none = make_policy("knn", alpha=0.0, **common).fit(X, q, cost, MODELS, tasks=tasks)
    sims, ids = none.neighbours(X[rows0[1:2]])
    manual = np.nanmean(q[ids[0], 0])
    assert none.predict(X[rows0[1:2]]).quality[0, 0] == pytest.approx(manual)
    # the global prior ignores the labels
    glob = make_policy("knn", alpha=1e6, prior="global", **common).fit(
        X, q, cost, MODELS, tasks=tasks)
    assert glob.predict(X[rows0[1:2]]).quality[0, 0] == pytest.approx(np.mean(q[:, 0]), abs=1e-3)


def test_missing_cells_are_ignored_not_counted_as_zero(data, test_data):
    X, quality, cost, tasks, labels = data
    q = quality.copy()
    q[np.flatnonzero(labels == 0)[::2], 0] = np.nan  # half of "big"'s good grades missing
    policy = make_policy("knn", k=10, alpha=0.0, weighting="uniform").fit(X, q, cost, MODELS)
    Xt, _, _, _, lt = test_data
    est = policy.predict(Xt[lt == 0])
    assert np.allclose(est.quality[:, 0], 1.0)  # observed neighbours of "big" are all 1


def test_bad_parameters_are_clear_errors(data):
    X, quality, cost, tasks, _ = data
    for params, match in (
        ({"k": 0}, "k must be >= 1"),
        ({"k": "many"}, "k must be 'auto' or an integer"),
        ({"alpha": -1}, "alpha must be >= 0"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"weighting": "cosine"}, "weighting must be one of"),
        ({"prior": "oracle"}, "prior must be one of"),
        ({"tune_metric": "auc"}, "tune_metric must be one of"),
        ({"cv_folds": 1}, "cv_folds must be >= 2"),
    ):
        with pytest.raises(PolicyError, match=match):
            make_policy("knn", **params).fit(X, quality, cost, MODELS)


def test_k_larger_than_train_set_and_tiny_train_sets_work(data):
    X, quality, cost, tasks, _ = data
    policy = make_policy("knn", k=1000, alpha=1.0).fit(X[:6], quality[:6], cost[:6], MODELS)
    assert policy.k_ == 6
    assert policy.predict(X[:3]).quality.shape == (3, 2)
    tiny = make_policy("knn").fit(X[:3], quality[:3], cost[:3], MODELS)
    assert np.isfinite(tiny.predict(X[:2]).quality).all()


def test_brier_tuning_routes_correctly_too(data, test_data):
    X, quality, cost, tasks, _ = data
    Xt, _, _, _, labels = test_data
    policy = make_policy("knn", tune_metric="brier").fit(X, quality, cost, MODELS, tasks=tasks)
    assert policy.cv_["metric"] == "brier"
    assert (policy.route(Xt) == np.where(labels == 0, 0, 1)).all()
