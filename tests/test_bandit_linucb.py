"""LinUCB policy: Sherman-Morrison == batch ridge, UCB parts, artifacts, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from policies import make_policy
from policies.base import Policy, PolicyError
from policies.linucb import LinUCBPolicy
from router.exploration import choices

MODELS = ["small", "medium", "large"]


def synthetic(n: int = 300, d: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    W = rng.standard_normal((d, len(MODELS)))
    quality = np.clip(np.array([0.4, 0.6, 0.8]) + 0.3 * (X @ W), 0, 1)
    quality[rng.random(quality.shape) < 0.05] = np.nan  # missing cells are dropped
    cost = np.tile([1e-4, 1e-3, 1e-2], (n, 1)) * rng.uniform(0.5, 1.5, (n, 1))
    return X, quality, cost


def batch_ridge(policy: LinUCBPolicy, X, quality, outcomes, arm: int) -> np.ndarray:
    """theta of one arm from scratch: prior rows (weighted) + outcomes, one solve."""
    pw, reg = policy.prior_weight, policy.reg
    obs = ~np.isnan(quality[:, arm])
    Z = policy.features(X[obs])
    A = pw * Z.T @ Z + reg * np.eye(Z.shape[1])
    b = pw * Z.T @ quality[obs, arm]
    for x, a, r, _ in outcomes:
        if a == arm:
            z = policy.features(np.asarray(x, np.float32)[None])[0]
            A += np.outer(z, z)
            b += r * z
    return np.linalg.solve(A, b)


@pytest.mark.parametrize("proj", [None, 8])
def test_sherman_morrison_equals_batch_ridge(proj):
    X, quality, cost = synthetic()
    policy = LinUCBPolicy(alpha=0.3, prior_weight=0.7, reg=0.5, proj_dim=proj, projection="pca")
    policy.fit(X[:200], quality[:200], cost[:200], MODELS)
    rng = np.random.default_rng(1)
    outcomes = []
    for i in range(200, 300):
        arm = int(rng.integers(len(MODELS)))
        reward = float(rng.integers(2))
        outcomes.append((X[i], arm, reward, float(cost[i, arm])))
        policy.update(X[i], MODELS[arm], reward, float(cost[i, arm]))
    state = policy.bandit_state()
    theta = state.theta()
    for arm in range(len(MODELS)):
        expected = batch_ridge(policy, X[:200], quality[:200], outcomes, arm)
        np.testing.assert_allclose(theta[arm], expected, rtol=1e-8, atol=1e-10)
    # counts / spend count online outcomes; predict uses the same theta
    assert state.counts.sum() == 100
    assert state.spend.sum() == pytest.approx(sum(o[3] for o in outcomes))
    mean, width, _ = policy.predict_parts(X[:5])
    np.testing.assert_allclose(mean, policy.features(X[:5]) @ theta.T, rtol=1e-10)
    assert (width > 0).all()


def test_ucb_is_mean_plus_alpha_bonus_clipped_and_cost_is_running_mean():
    X, quality, cost = synthetic()
    policy = LinUCBPolicy(alpha=2.0, prior_weight=1.0).fit(X, quality, cost, MODELS)
    mean, width, mean_cost = policy.predict_parts(X[:20])
    est = policy.predict(X[:20])
    # predict exploits: the posterior mean (backed off far from train), never the bonus
    np.testing.assert_allclose(est.quality, policy.estimates(X[:20]).mean)
    np.testing.assert_allclose(policy.estimates(X[:20]).bonus, 2.0 * width)
    np.testing.assert_allclose(policy.ucb(X[:20]), mean + 2.0 * width)
    assert policy.ucb(X[:20]).max() > 1  # alpha=2: optimistic beyond the clip
    assert est.quality.min() >= 0 and est.quality.max() <= 1
    np.testing.assert_allclose(mean_cost, cost.mean(axis=0))
    np.testing.assert_allclose(est.cost, np.tile(mean_cost, (20, 1)))
    # a new observed cost moves the running mean of that arm only
    policy.update(X[0], "large", 1.0, 1.0)
    _, _, after = policy.predict_parts(X[:1])
    n = len(X)
    assert after[2] == pytest.approx((cost[:, 2].sum() + 1.0) / (n + 1))
    np.testing.assert_allclose(after[:2], mean_cost[:2])


def test_exploration_width_shrinks_with_observations_and_prior_helps():
    X, quality, cost = synthetic()
    cold = LinUCBPolicy(prior_weight=0.0, reg=1.0).fit(X, quality, cost, MODELS)
    warm = LinUCBPolicy(prior_weight=1.0, reg=1.0).fit(X, quality, cost, MODELS)
    _, w_cold, _ = cold.predict_parts(X[:10])
    _, w_warm, _ = warm.predict_parts(X[:10])
    assert (w_warm < w_cold).all()
    # the prior already ranks models like the data does; the cold start knows nothing
    err_warm = np.nanmean(np.abs(warm.predict_parts(X)[0] - quality))
    err_cold = np.nanmean(np.abs(cold.predict_parts(X)[0] - quality))
    assert err_warm < 0.5 * err_cold
    for _ in range(50):
        cold.update(X[0], "small", 1.0, 1e-4)
    _, w_after, _ = cold.predict_parts(X[:1])
    assert w_after[0, 0] < 0.2 * w_cold[0, 0]
    assert w_after[0, 1] == pytest.approx(w_cold[0, 1])


def test_learns_online_from_bandit_feedback():
    """Cold start on a task where 'medium' is always right: the bandit finds it."""
    X, quality, cost = synthetic()
    truth = np.zeros_like(quality)
    truth[:, 1] = 1.0
    policy = LinUCBPolicy(alpha=0.5, prior_weight=0.0).fit(X, quality, cost, MODELS)
    picks = []
    for i in range(len(X)):
        # predict exploits the posterior mean; exploring is the optimistic choice (share 1)
        est = policy.estimates(X[i:i + 1])
        arm = choices(est.mean[0], est.bonus[0], est.cost[0], lam=0.0).optimistic
        picks.append(arm)
        policy.update(X[i], arm, truth[i, arm], cost[i, arm])
    assert np.mean(np.array(picks[-100:]) == 1) > 0.95


@pytest.mark.parametrize("proj,projection", [(None, "pca"), (6, "pca"), (6, "random")])
def test_artifact_round_trip(tmp_path, proj, projection):
    X, quality, cost = synthetic()
    policy = make_policy("linucb", alpha=0.4, proj_dim=proj, projection=projection, seed=3)
    policy.fit(X[:200], quality[:200], cost[:200], MODELS)
    for i in range(200, 230):
        policy.update(X[i], i % 3, float(i % 2), float(cost[i, i % 3]))
    policy.save(tmp_path / "art")
    loaded = Policy.load(tmp_path / "art")
    assert isinstance(loaded, LinUCBPolicy)
    assert loaded.get_params() == policy.get_params()
    assert loaded.bandit_state().same_params(policy.bandit_state())
    assert loaded.bandit_state().fingerprint == policy.bandit_state().fingerprint
    # the fallback's familiarity re-normalises the saved unit vectors: float32 round-off
    np.testing.assert_allclose(loaded.predict(X).quality, policy.predict(X).quality, atol=1e-6)
    # both keep learning identically
    for p in (policy, loaded):
        p.update(X[250], "large", 1.0, 0.02)
    assert loaded.bandit_state().same_params(policy.bandit_state())


def test_bad_input_gives_clear_errors():
    X, quality, cost = synthetic()
    with pytest.raises(PolicyError, match="reg"):
        LinUCBPolicy(reg=0).fit(X, quality, cost, MODELS)
    with pytest.raises(PolicyError, match="alpha"):
        LinUCBPolicy(alpha=-1).fit(X, quality, cost, MODELS)
    with pytest.raises(PolicyError, match="projection"):
        LinUCBPolicy(proj_dim=4, projection="svd").fit(X, quality, cost, MODELS)
    with pytest.raises(PolicyError, match="proj_dim"):
        LinUCBPolicy(proj_dim=0).fit(X, quality, cost, MODELS)
    with pytest.raises(PolicyError, match="not fitted"):
        LinUCBPolicy().update(X[0], "small", 1.0, 0.0)
    policy = LinUCBPolicy().fit(X, quality, cost, MODELS)
    with pytest.raises(PolicyError, match="unknown model"):
        policy.update(X[0], "nope", 1.0, 0.0)
    with pytest.raises(PolicyError, match="reward"):
        policy.update(X[0], "small", 1.5, 0.0)
    with pytest.raises(PolicyError, match="cost"):
        policy.update(X[0], "small", 1.0, -1.0)
    with pytest.raises(PolicyError, match="dimension"):
        policy.update(X[0, :5], "small", 1.0, 0.0)
    with pytest.raises(PolicyError, match="dimension"):
        policy.predict(X[:, :5])
