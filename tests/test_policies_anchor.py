"""Task anchoring (policies._anchor): with no per-prompt signal every learned policy routes
like task-static; with a planted per-prompt signal it beats task-static."""

from __future__ import annotations

import numpy as np
import pytest

from policies import choose, make_policy
from policies._anchor import blend, one_se, task_vote

MODELS = ["dear", "mid", "cheap"]
PRICE = np.array([0.01, 0.002, 0.0005])
#: per task: each model's chance of a correct answer (task-static's whole knowledge)
TASK_P = np.array([[0.90, 0.60, 0.30], [0.80, 0.60, 0.45]])
LAMS = (0.0, 20.0, 60.0, 150.0)
LEARNED = {
    "knn": {},
    "mlp": {"hidden": 32, "lr": 0.01, "max_epochs": 40, "patience": 6},
    "routerdc": {"epochs": 20, "lr": 3e-3, "threads": 1, "finetune": False},
    "cscr": {"epochs": 20, "lr": 3e-3, "threads": 1},
}


def tasks_data(n: int, seed: int, signal: bool, d: int = 16):
    """Two tasks, told apart by embedding dim 0. Without ``signal`` each answer is a coin
    flip with the task's odds, independent of the prompt; with it, on task 0 "mid" is right
    exactly when dim 1 > 0 and "cheap" exactly otherwise. Cost grows with a "length"."""
    rng = np.random.default_rng(seed)
    task = np.arange(n) % 2
    X = rng.normal(scale=0.5, size=(n, d))
    X[:, 0] += np.where(task == 0, 3.0, -3.0)
    quality = (rng.random((n, 3)) < TASK_P[task]).astype(np.float64)
    if signal:
        side = X[:, 1] > 0
        t0 = task == 0
        quality[t0, 1] = side[t0]
        quality[t0, 2] = ~side[t0]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    cost = PRICE[None, :] * rng.uniform(0.8, 1.2, size=(n, 1))
    return X.astype(np.float32), quality, cost, [f"t{t}" for t in task]


def utility(policy, X, quality, cost, tasks, lam: float) -> float:
    est = policy.predict(X, tasks=tasks)
    pick = choose(est.quality, est.cost, lam=lam)
    rows = np.arange(len(X))
    return float(np.mean(quality[rows, pick] - lam * cost[rows, pick]))


@pytest.fixture(scope="module", params=[False, True], ids=["noise", "signal"])
def world(request):
    signal = request.param
    train = tasks_data(600, 0, signal)
    test = tasks_data(2000, 1, signal)
    static = make_policy("task-static").fit(*train[:3], MODELS, tasks=train[3])
    return signal, train, test, static


@pytest.mark.parametrize("name", list(LEARNED))
def test_anchored_policy_matches_task_static_without_signal_and_beats_it_with(name, world):
    signal, train, test, static = world
    policy = make_policy(name, **LEARNED[name]).fit(*train[:3], MODELS, tasks=train[3])
    Xt, Qt, Ct, Tt = test
    gaps = [utility(policy, Xt, Qt, Ct, None, lam) - utility(static, Xt, Qt, Ct, Tt, lam)
            for lam in LAMS]
    if not signal:  # nothing to learn: it routes (about) like task-static at every lam
        assert max(abs(g) for g in gaps) < 0.01, gaps
    elif name == "cscr":  # its shared calibrator picks up little of this signal: no loss
        assert np.mean(gaps) > 0 and min(gaps) > -0.01, gaps
    else:  # task-static cannot see which of mid/cheap is right on task 0 (~0.5 vs 1.0)
        assert max(gaps) > 0.1 and np.mean(gaps) > 0.02, gaps


def test_blend_is_exactly_the_prior_at_zero_and_the_raw_estimate_at_one():
    rng = np.random.default_rng(0)
    prior, raw = rng.random((20, 3)), rng.uniform(0.05, 0.95, (20, 3))
    prior[0, 0] = 0.0  # a model that never succeeded on the task
    np.testing.assert_array_equal(blend(prior, raw, 0.0), prior)
    inner = (prior > 0.01) & (prior < 0.99)
    np.testing.assert_allclose(blend(prior, raw, 1.0)[inner], raw[inner], atol=1e-9)
    half = blend(prior, raw, 0.5)
    assert ((half - prior) * (raw - prior) >= -1e-12).all()  # moves toward raw


def test_one_se_rule_prefers_shrinkage_unless_clearly_worse():
    rng = np.random.default_rng(0)
    base = rng.normal(size=500)
    noisy = np.column_stack([base, base + rng.normal(scale=0.5, size=500) + 0.01])
    assert one_se(noisy) == 0  # a gain far inside one standard error: keep the prior
    clear = np.column_stack([base, base + 0.5])
    assert one_se(clear) == 1


def test_task_vote_is_a_hard_majority_with_ties_to_the_nearest():
    codes = np.array([[1, 0, 0, 1], [1, 0, -1, -1], [2, 2, 0, -1]])
    np.testing.assert_array_equal(task_vote(codes, 3).argmax(axis=1), [1, 1, 2])
    assert task_vote(codes, 3).sum(axis=1).tolist() == [1.0, 1.0, 1.0]


# ---- familiarity (policies._distance) ---------------------------------------------------
def test_familiarity_scores_far_queries_lower_and_excludes_self_on_train_rows():
    from policies._distance import Familiarity

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8)) + np.array([4.0] + [0.0] * 7)  # a cloud around +e0
    fam = Familiarity.fit(X, k=5)
    near = X[:10] + 0.01 * rng.normal(size=(10, 8))
    far = -X[:10]  # the opposite side of the sphere
    assert fam.score(near).min() > fam.score(far).max()
    # a train row scored against the train set without excluding itself counts itself
    own = fam.score(X, exclude_self=True)
    assert np.all(fam.score(X) >= own) and np.all(own < 1.0 - 1e-6)
    assert fam.quantile(fam.score(far)).max() == 0.0
    assert 0.3 < np.median(fam.quantile(own)) < 0.7
    back = Familiarity.from_arrays(fam.arrays())
    np.testing.assert_allclose(back.score(far), fam.score(far), rtol=1e-6)
    with pytest.raises(ValueError, match="training rows"):
        fam.score(X[:5], exclude_self=True)
