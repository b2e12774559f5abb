"""MLP policy: known-answer routing, masked loss, early stopping, seeding, parameters."""

from __future__ import annotations

import numpy as np
import pytest

from policies import make_policy
from policies.base import PolicyError
from tests.test_policies_common import MODELS, two_clusters

FAST = {"hidden": 16, "lr": 0.01, "max_epochs": 60, "patience": 8}


@pytest.fixture(scope="module")
def data():
    return two_clusters(n=200)


@pytest.fixture(scope="module")
def test_data():
    return two_clusters(n=60, seed=7)


@pytest.fixture(scope="module")
def fitted(data):
    X, quality, cost, tasks, _ = data
    return make_policy("mlp", **FAST).fit(X, quality, cost, MODELS)


def test_routes_each_cluster_to_its_model_and_to_the_cheap_one_at_large_lam(fitted, test_data):
    Xt, _, cost_t, _, labels = test_data
    assert (fitted.route(Xt) == np.where(labels == 0, 0, 1)).all()
    assert (fitted.route(Xt, lam=1e4) == 1).all()
    assert (fitted.route(Xt, budget=0.005) == 1).all()
    est = fitted.predict(Xt)
    assert (est.quality[labels == 0, 0] > 0.8).all() and (est.quality[labels == 0, 1] < 0.2).all()
    # the ridge cost model tracks each prompt's cost, within the observed range
    np.testing.assert_allclose(est.cost, cost_t, rtol=0.12)


def test_early_stopping_keeps_the_best_validation_epoch(fitted):
    assert fitted.best_epoch_ == int(np.argmin(fitted.history_)) + 1
    assert len(fitted.history_) <= FAST["max_epochs"]


def test_training_is_seeded(data, fitted):
    X, quality, cost, tasks, _ = data
    again = make_policy("mlp", **FAST).fit(X, quality, cost, MODELS)
    for a, b in zip(fitted.weights_, again.weights_, strict=True):
        np.testing.assert_array_equal(a, b)
    other = make_policy("mlp", **FAST, seed=1).fit(X, quality, cost, MODELS)
    assert not np.array_equal(fitted.weights_[0], other.weights_[0])


def test_missing_cells_are_masked_out_of_the_loss(data, test_data):
    X, quality, cost, tasks, labels = data
    q = quality.copy()
    # hide every grade of "big" on cluster 1 (where it is wrong) but a few: unmasked, the
    # NaN->0 cells would teach it nothing new; masked, big's cluster-0 estimate stays high
    rows0 = np.flatnonzero(labels == 0)
    q[rows0[: len(rows0) * 3 // 4], 0] = np.nan
    # shrink=1: the network's own estimates, not anchored on the (global) prior
    policy = make_policy("mlp", **FAST, shrink=1).fit(X, q, cost, MODELS)
    Xt, _, _, _, lt = test_data
    assert (policy.predict(Xt[lt == 0]).quality[:, 0] > 0.7).all()


def test_mse_loss_and_mean_cost_model(data, test_data):
    X, quality, cost, tasks, _ = data
    Xt, _, _, _, labels = test_data
    policy = make_policy("mlp", **FAST, loss="mse", cost_model="mean").fit(X, quality, cost, MODELS)
    assert (policy.route(Xt) == np.where(labels == 0, 0, 1)).all()
    np.testing.assert_allclose(policy.predict(Xt[:1]).cost[0], cost.mean(axis=0))


def test_hidden_layers_from_strings_and_lists(data):
    X, quality, cost, tasks, _ = data
    for hidden, n_arrays in (("8,4", 6), ([8, 4], 6), (8, 4)):
        policy = make_policy("mlp", hidden=hidden, max_epochs=2).fit(X, quality, cost, MODELS)
        assert len(policy.weights_) == n_arrays


@pytest.mark.parametrize(
    "params,match",
    [
        ({"hidden": "wide"}, "hidden must be sizes"),
        ({"hidden": 0}, "hidden sizes must be >= 1"),
        ({"dropout": 1.5}, "dropout"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"max_epochs": 2.5}, "max_epochs must be an integer"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"cost_model": "gbm"}, "cost_model must be one of"),
    ],
)
def test_bad_parameters_are_clear_errors(params, match, data):
    X, quality, cost, tasks, _ = data
    with pytest.raises(PolicyError, match=match):
        make_policy("mlp", **params).fit(X, quality, cost, MODELS)
