"""Behaviour shared by the baseline, kNN and MLP policies: artifacts and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies import Policy, choose, make_policy
from policies.base import ArtifactError, PolicyError

MODELS = ["big", "small"]
PRICE = np.array([0.01, 0.001])  # "big" costs 10x "small"


def two_clusters(n: int = 120, d: int = 8, seed: int = 0, missing: float = 0.0):
    """Two well separated clusters of unit vectors.

    Model "big" (expensive) is right on cluster 0 only, "small" (cheap) on cluster 1 only.
    Costs grow a little with a per-prompt "length". Returns X, quality, cost, tasks, labels.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    centres = np.eye(d)[:2] * 3.0
    X = centres[labels] + rng.normal(scale=0.4, size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    quality = np.stack([labels == 0, labels == 1], axis=1).astype(np.float64)
    length = rng.uniform(0.9, 1.1, size=(n, 1))
    cost = PRICE[None, :] * length
    if missing:
        holes = rng.random(quality.shape) < missing
        holes[:2] = False  # keep every model observed somewhere
        quality[holes] = np.nan
    tasks = [f"task{label}" for label in labels]
    return X.astype(np.float32), quality, cost, tasks, labels


#: every policy of this module's owner, with parameters that keep fitting fast
FAST = {
    "random": {},
    "cheapest": {},
    "single": {"model": "big"},
    "best-single": {},
    "task-static": {},
    "knn": {},
    "mlp": {"hidden": 16, "lr": 0.01, "max_epochs": 30, "patience": 5},
}


def fitted(name: str, X, quality, cost, tasks, **extra):
    return make_policy(name, **{**FAST[name], **extra}).fit(X, quality, cost, MODELS, tasks=tasks)


@pytest.fixture(scope="module")
def data():
    return two_clusters(missing=0.1)


@pytest.fixture(scope="module")
def queries():
    X, quality, cost, tasks, labels = two_clusters(n=40, seed=1)
    return X, tasks, (quality, cost)


@pytest.mark.parametrize("name", [*FAST, "oracle"])
def test_save_load_gives_identical_estimates_and_decisions(name, data, queries, tmp_path):
    X, quality, cost, tasks, _ = data
    Xq, tq, truth = queries
    policy = make_policy(name, **FAST.get(name, {})).fit(X, quality, cost, MODELS, tasks=tasks)
    policy.save(tmp_path / "art", meta={"note": "hi"})
    loaded = Policy.load(tmp_path / "art")
    assert type(loaded) is type(policy)
    assert loaded.get_params() == policy.get_params()
    assert loaded.meta_["note"] == "hi"
    before = policy.predict(Xq, tasks=tq, truth=truth)
    after = loaded.predict(Xq, tasks=tq, truth=truth)
    np.testing.assert_array_equal(before.quality, after.quality)
    np.testing.assert_array_equal(before.cost, after.cost)
    for lam in (0.0, 50.0, 1e5):
        np.testing.assert_array_equal(
            policy.route(Xq, lam=lam, tasks=tq, truth=truth),
            loaded.route(Xq, lam=lam, tasks=tq, truth=truth),
        )
    # artifacts are JSON + numpy only: no pickled objects anywhere
    json.loads((tmp_path / "art" / "config.json").read_text())
    with np.load(tmp_path / "art" / "arrays.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


@pytest.mark.parametrize("name", list(FAST))
def test_estimates_have_the_right_shape_and_are_finite(name, data, queries):
    X, quality, cost, tasks, _ = data
    est = fitted(name, X, quality, cost, tasks).predict(queries[0], tasks=queries[1])
    assert est.quality.shape == est.cost.shape == (len(queries[0]), len(MODELS))
    assert np.isfinite(est.quality).all() and np.isfinite(est.cost).all()
    assert (est.cost >= 0).all()


@pytest.mark.parametrize("name", list(FAST))
def test_route_one_names_the_choice_and_a_runner_up(name, data, queries):
    X, quality, cost, tasks, _ = data
    decision = fitted(name, X, quality, cost, tasks).route_one(queries[0][0], lam=0.0)
    assert decision.model in MODELS
    assert decision.runner_up in MODELS and decision.runner_up != decision.model
    assert set(decision.scores) == set(MODELS)


@pytest.mark.parametrize("name", list(FAST))
def test_bad_inputs_are_policy_errors(name, data):
    X, quality, cost, tasks, _ = data
    policy = make_policy(name, **FAST[name])
    with pytest.raises(PolicyError, match="not fitted"):
        policy.predict(X)
    with pytest.raises(PolicyError, match="unfitted"):
        policy.save("/nonexistent/never-written")
    with pytest.raises(PolicyError, match="empty"):
        policy.fit(X[:0], quality[:0], cost[:0], MODELS)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(PolicyError, match="NaN"):
        policy.fit(bad, quality, cost, MODELS)
    with pytest.raises(PolicyError, match="shape"):
        policy.fit(X, quality[:, :1], cost, MODELS)
    policy.fit(X, quality, cost, MODELS, tasks=tasks)
    with pytest.raises(PolicyError, match="dimension"):
        policy.predict(np.zeros((2, X.shape[1] + 1), dtype=np.float32))
    with pytest.raises(PolicyError, match="NaN"):
        policy.predict(bad[:5])
    for lam in (-1.0, float("nan"), float("inf")):
        with pytest.raises(PolicyError, match="lam"):
            policy.route(X[:3], lam=lam)
    with pytest.raises(PolicyError, match="budget"):
        policy.route(X[:3], budget=-0.5)


def test_unknown_policy_and_parameter_are_rejected():
    with pytest.raises(PolicyError, match="unknown policy"):
        make_policy("no-such-policy")
    with pytest.raises(PolicyError, match="unknown parameter"):
        make_policy("knn", kk=3)


def test_a_model_with_no_observed_quality_is_rejected(data):
    X, quality, cost, tasks, _ = data
    quality = quality.copy()
    quality[:, 1] = np.nan
    with pytest.raises(PolicyError, match="no observed quality"):
        make_policy("task-static").fit(X, quality, cost, MODELS, tasks=tasks)


def test_loading_a_non_artifact_or_another_version_fails(data, tmp_path):
    with pytest.raises(ArtifactError, match="no config.json"):
        Policy.load(tmp_path)
    X, quality, cost, tasks, _ = data
    make_policy("cheapest").fit(X, quality, cost, MODELS).save(tmp_path / "a")
    cfg_path = tmp_path / "a" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["artifact_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="version"):
        Policy.load(tmp_path / "a")


def test_choose_trades_quality_against_cost_for_estimates():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.tile(PRICE, (2, 1))
    assert choose(q, c, lam=0).tolist() == [0, 1]
    assert choose(q, c, lam=1e4).tolist() == [1, 1]
    assert choose(q, c, budget=0.005).tolist() == [1, 1]
