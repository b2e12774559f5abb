"""kNN single-query fast path (policies._knn_one): the same figures as the block path."""

from __future__ import annotations

import numpy as np
import pytest

import policies._knn_one as knn_one
from policies.knn import KNNPolicy


def _random_policy(rng: np.random.Generator, trial: int) -> KNNPolicy:
    """A fitted kNN on random data: missing cells, several tasks, varied parameters."""
    n, d, m = int(rng.integers(12, 250)), int(rng.integers(2, 20)), int(rng.integers(1, 6))
    X = rng.normal(size=(n, d)).astype(np.float32)
    quality = rng.random((n, m))
    quality[rng.random((n, m)) < 0.3] = np.nan
    quality[0] = 0.5  # every model observed at least once
    cost = rng.random((n, m)) * 1e-3
    if trial % 2:
        cost[rng.random((n, m)) < 0.2] = np.nan
    tasks = [f"t{t}" for t in rng.integers(0, 1 + trial % 4, n)]
    params: dict = {"weighting": ("distance", "uniform")[trial % 2], "seed": trial}
    if trial % 3 == 0:  # fixed parameters, including no shrinkage at all (alpha 0)
        params.update(k=int(rng.integers(1, 40)), alpha=float(rng.choice([0.0, 0.5, 5.0])),
                      temperature=float(rng.choice([0.02, 0.1])))
    return KNNPolicy(**params).fit(X, quality, cost, [f"m{j}" for j in range(m)], tasks)


def _block(policy: KNNPolicy, x: np.ndarray, monkeypatch: pytest.MonkeyPatch):
    """The block path's estimate of one query (the fast path turned off)."""
    with monkeypatch.context() as mp:
        mp.setattr(knn_one.OneQuery, "estimate", lambda self, policy, x: None)
        return policy.predict(x)


@pytest.mark.parametrize("trial", range(24))
def test_single_query_estimates_are_bit_identical_to_the_block_path(trial, monkeypatch):
    rng = np.random.default_rng(100 + trial)
    policy = _random_policy(rng, trial)
    queries = rng.normal(size=(25, policy.dim_)).astype(np.float32)
    queries[:3] = policy.X_[:3]  # exact duplicates of training prompts
    batch = policy.predict(queries)
    fast_taken = 0
    for i in range(len(queries)):
        one = policy.predict(queries[i : i + 1])
        block = _block(policy, queries[i : i + 1], monkeypatch)
        assert np.array_equal(one.quality, block.quality), (trial, i)
        assert np.array_equal(one.cost, block.cost), (trial, i)
        assert np.array_equal(one.quality, batch.quality[i : i + 1])
        assert np.array_equal(one.cost, batch.cost[i : i + 1])
        fast_taken += policy._one.estimate(policy, queries[i : i + 1]) is not None
    if len(policy.models_) > 1:  # one model: the block path on purpose
        assert fast_taken == len(queries)


def test_fast_path_with_the_distance_backoff_active(monkeypatch):
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 8)) * 3
    codes = rng.integers(0, 4, 300)
    X = (centres[codes] + rng.normal(size=(300, 8))).astype(np.float32)
    quality = (rng.random((300, 3)) < np.array([[0.9, 0.5, 0.2], [0.2, 0.9, 0.5],
                                                 [0.5, 0.2, 0.9], [0.9, 0.9, 0.1]])[codes])
    quality = quality.astype(float)
    cost = np.tile([1e-4, 1e-3, 1e-2], (300, 1))
    policy = KNNPolicy(seed=1).fit(X, quality, cost, ["a", "b", "c"],
                                   [f"t{c}" for c in codes])
    assert policy.backoff_ is not None and policy.backoff_.active
    far = rng.normal(size=(20, 8)).astype(np.float32) * 10  # unfamiliar prompts
    policy.predict(far[:1])  # prepares the single-query arrays
    weights = []
    for q in far:
        sims, ids = policy._search(q[None], 10)
        weights.append(float(policy._one.backoff_weight(q[None], sims[0], ids[0])[0]))
    assert min(weights) < 0.99  # the backoff moves these estimates
    for q in np.vstack([X[:10], far]):
        one = policy.predict(q[None])
        block = _block(policy, q[None], monkeypatch)
        assert np.array_equal(one.quality, block.quality)
        assert np.array_equal(one.cost, block.cost)


def test_prepared_arrays_follow_a_refit(monkeypatch):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(80, 6)).astype(np.float32)
    quality, cost = rng.random((80, 2)), rng.random((80, 2)) * 1e-3
    policy = KNNPolicy(k=5, alpha=1.0, temperature=0.1).fit(X, quality, cost, ["a", "b"])
    q = X[:1]
    first = policy.predict(q)
    prepared = policy._one
    policy.fit(X, 1.0 - quality, cost, ["a", "b"])  # new outcomes: new prepared arrays
    second = policy.predict(q)
    assert policy._one is not prepared
    assert np.array_equal(second.quality, _block(policy, q, monkeypatch).quality)
    assert not np.array_equal(first.quality, second.quality)
    policy.alpha_ = 50.0  # a parameter changed in place is seen too
    assert np.array_equal(policy.predict(q).quality, _block(policy, q, monkeypatch).quality)


def test_saved_and_loaded_policy_takes_the_fast_path(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    policy = KNNPolicy(k=5).fit(X, rng.random((60, 3)), rng.random((60, 3)) * 1e-3,
                                ["a", "b", "c"], [f"t{i % 3}" for i in range(60)])
    loaded = KNNPolicy.load(policy.save(tmp_path / "knn"))
    for x in rng.normal(size=(10, 5)).astype(np.float32):
        est = loaded.predict(x[None])
        assert loaded._one.estimate(loaded, x[None]) is not None
        assert np.array_equal(est.quality, policy.predict(x[None]).quality)
        assert np.array_equal(est.quality, _block(loaded, x[None], monkeypatch).quality)
