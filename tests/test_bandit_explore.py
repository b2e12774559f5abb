"""Bounded exploration and honest LinUCB estimates: the gate, the posterior mean apart from
the bonus, the fitted fallback toward the best single model far from training, the replay
that picks the default share."""

from __future__ import annotations

import numpy as np
import pytest

from eval.explore import NEW_TASK, ExploreEvalError, replay_share, run_explore, summary_lines
from policies.base import Policy, choose
from policies.linucb import LinUCBPolicy
from router.dataset import RoutingDataset
from router.exploration import (
    DEFAULT_SHARE,
    ExplorationError,
    ExplorationGate,
    check_share,
    choices,
)

MODELS = ["generalist", "specialist", "cheap"]


def line_tasks(n: int = 60, d: int = 16, seed: int = 0):
    """Three tight task clusters on a line (C at -1, B at 0, A at +1 along axis 0, all at +1
    along axis 1). 'specialist' is right on B only, which a linear model fitted on two of
    the tasks extrapolates to the third as better still; 'generalist' is right on 80% of
    every task; 'cheap' on 30%."""
    rng = np.random.default_rng(seed)
    X, tasks, quality = [], [], []
    for name, pos in (("C", -1.0), ("B", 0.0), ("A", 1.0)):
        x = rng.normal(0, 0.05, (n, d))
        x[:, 0] += pos
        x[:, 1] += 1.0
        X.append(x)
        tasks += [name] * n
        q = np.column_stack([rng.random(n) < 0.8, np.full(n, name == "B"), rng.random(n) < 0.3])
        quality.append(q.astype(float))
    X = np.vstack(X).astype(np.float32)
    cost = np.tile([1e-3, 1e-3, 1e-4], (len(X), 1))
    return X, np.vstack(quality), cost, tasks


def far_queries(n: int = 20, d: int = 16, seed: int = 5) -> np.ndarray:
    """Prompts far from every training cluster: further along the line than task A."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.05, (n, d))
    x[:, 0] += 3.0
    x[:, 1] += 1.0
    return x.astype(np.float32)


# ---- the gate -----------------------------------------------------------------------


def test_gate_keeps_explored_within_share_at_every_prefix():
    gate = ExplorationGate(0.05)
    took = [gate.decide(True) for _ in range(1000)]
    running = np.cumsum(took)
    assert running[-1] == 50
    assert (running <= 0.05 * np.arange(1, 1001) + 1e-9).all()
    assert gate.realised == pytest.approx(0.05)
    # decisions that do not want to explore count in the denominator but never explore
    gate = ExplorationGate(0.5)
    assert [gate.decide(w) for w in (False, False, True, True, True)] == [
        False, False, True, True, False]


def test_gate_zero_never_explores_and_bad_shares_are_refused():
    gate = ExplorationGate(0.0)
    assert not any(gate.decide(True) for _ in range(500))
    assert 0 <= DEFAULT_SHARE <= 1
    for bad in (-0.1, 1.5, float("nan"), "a lot", None):
        with pytest.raises(ExplorationError, match="in \\[0, 1\\]"):
            check_share(bad)


def test_choices_exploit_means_and_explore_with_bonus():
    mean = np.array([0.9, 0.6, 0.5])
    bonus = np.array([0.0, 0.5, 0.1])
    cost = np.array([1.0, 1.0, 0.1])
    ch = choices(mean, bonus, cost, lam=0.0)
    assert (ch.exploit, ch.optimistic, ch.differs) == (0, 1, True)
    # the same trade-off applies to both: at a high lam the cheap model wins either way
    ch = choices(mean, bonus, cost, lam=10.0)
    assert ch.exploit == ch.optimistic == 2
    # an excluded model is never the optimistic choice
    ch = choices(mean, bonus, cost, lam=0.0, allowed=np.array([True, False, True]))
    assert ch.optimistic == 0


# ---- estimates ------------------------------------------------------------------------


def test_predict_is_the_posterior_mean_in_unit_interval_and_bonus_apart():
    X, quality, cost, tasks = line_tasks()
    policy = LinUCBPolicy(alpha=3.0, reg=1.0).fit(X, quality, cost, MODELS, tasks)
    Xq = np.vstack([X[::17], far_queries()])
    est = policy.estimates(Xq)
    mean, width, _ = policy.predict_parts(Xq)
    assert est.mean.min() >= 0 and est.mean.max() <= 1
    np.testing.assert_allclose(est.bonus, 3.0 * width)
    assert (est.optimistic > 1).any()  # a large bonus: optimistic beyond 1, but only there
    np.testing.assert_allclose(policy.predict(Xq).quality, est.mean)
    # with no fallback, the mean is the ridge mean clipped to [0, 1]
    plain = LinUCBPolicy(alpha=3.0, reg=1.0, fallback=False).fit(X, quality, cost, MODELS, tasks)
    np.testing.assert_allclose(plain.estimates(Xq).mean,
                               np.clip(plain.predict_parts(Xq)[0], 0, 1))


def test_fallback_fitted_by_leaving_tasks_out_backs_off_to_best_single_model():
    X, quality, cost, tasks = line_tasks()
    policy = LinUCBPolicy(alpha=0.1, reg=1.0).fit(X, quality, cost, MODELS, tasks)
    plain = LinUCBPolicy(alpha=0.1, reg=1.0, fallback=False).fit(X, quality, cost, MODELS, tasks)
    # leaving task A (or C) out, the ridge extrapolates the specialist beyond B: the fit
    # learns that unfamiliar prompts are better served by the train means
    assert policy.fallback_.strength > 0 and policy.fallback_.threshold > 0
    far = far_queries()
    est = policy.estimates(far)
    assert (est.familiarity < 0.05).all() and (est.fallback > 0).all()
    best_single = int(np.argmax(np.nanmean(quality, axis=0)))
    assert MODELS[best_single] == "generalist"
    assert (choose(est.mean, est.cost, lam=0.0) == best_single).all()
    # every model's estimate moved toward its train mean, by the reported weight
    target = policy.fallback_target()
    raw = plain.estimates(far).mean
    np.testing.assert_allclose(est.mean - target, (1 - est.fallback[:, None]) * (raw - target))
    # familiar prompts keep (almost all of) their own estimate
    near = policy.estimates(X[::7])
    assert np.median(near.fallback) < est.fallback.min()


def test_fallback_target_follows_online_outcomes():
    X, quality, cost, tasks = line_tasks()
    policy = LinUCBPolicy(alpha=0.1, reg=1.0).fit(X, quality, cost, MODELS, tasks)
    before = policy.fallback_target().copy()
    for x in far_queries(30):
        policy.update(x, "generalist", 0.0, 1e-3)  # the generalist fails the new traffic
    after = policy.fallback_target()
    assert after[0] < before[0] and after[1:] == pytest.approx(before[1:])


def test_artifact_keeps_the_fallback(tmp_path):
    X, quality, cost, tasks = line_tasks()
    policy = LinUCBPolicy(alpha=0.2, reg=1.0).fit(X, quality, cost, MODELS, tasks)
    policy.save(tmp_path / "art")
    loaded = Policy.load(tmp_path / "art")
    assert loaded.fallback_ == policy.fallback_
    far = far_queries()
    a, b = loaded.estimates(far), policy.estimates(far)
    np.testing.assert_allclose(a.fallback, b.fallback, atol=1e-6)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-6)


def test_cold_start_has_no_fallback():
    X, quality, cost, tasks = line_tasks()
    cold = LinUCBPolicy(prior_weight=0.0).fit(X, quality, cost, MODELS, tasks)
    assert cold.familiarity_ is None
    assert (cold.estimates(far_queries()).fallback == 0).all()


# ---- the replay ----------------------------------------------------------------------


def sparse(quality: np.ndarray, seed: int = 0) -> np.ndarray:
    """The specialist observed on 10% of the rows only: its bonus is the widest."""
    quality = quality.copy()
    quality[np.random.default_rng(seed).random(len(quality)) < 0.9, 1] = np.nan
    return quality


def test_replay_keeps_exploration_within_share():
    X, quality, cost, tasks = line_tasks()
    quality = sparse(quality)
    policy = LinUCBPolicy(alpha=2.0, reg=1.0).fit(X[::2], quality[::2], cost[::2], MODELS,
                                                  tasks[::2])
    truth = np.nan_to_num(quality, nan=0.0)
    truth[:, 1] = [t == "B" for t in tasks]
    r = replay_share(policy, X[1::2], truth[1::2], cost[1::2], lam=0.0, share=0.1)
    assert 0 < r["explored"] <= 0.1
    frozen = replay_share(LinUCBPolicy(alpha=2.0, reg=1.0).fit(
        X[::2], quality[::2], cost[::2], MODELS, tasks[::2]), X[1::2], truth[1::2],
        cost[1::2], lam=0.0, share=0.0, learn=False)
    assert frozen["explored"] == 0


def test_run_explore_picks_a_share_of_the_grid_on_train_only():
    X, quality, cost, tasks = line_tasks(n=30)
    ds = RoutingDataset(prompts=[f"p{i}" for i in range(len(X))], models=MODELS,
                        quality=quality, cost=cost, tasks=tasks, name="line")
    r = run_explore(train=ds, X_train=X, shares=(0.0, 0.1), seeds=(0,), lams=[0.0],
                    conditions=(("full", 1.0, {}), ("sparse", 0.3, {"alpha": 2.0}),
                                (NEW_TASK, 1.0, {})),
                    params={"alpha": 1.0, "reg": 1.0}, progress=False)
    assert r["recommended_share"] in (0.0, 0.1)
    assert set(r["conditions"]) == {"full", "sparse", NEW_TASK}
    assert "recommended share" in summary_lines(r)[-1]
    # one task: no new-task condition to replay
    single = RoutingDataset(prompts=ds.prompts, models=MODELS, quality=quality, cost=cost,
                            tasks=["one"] * len(X), name="one task")
    one = run_explore(train=single, X_train=X, shares=(0.1,),
                      seeds=(0,), lams=[0.0], conditions=((NEW_TASK, 1.0, {}), ("full", 1, {})),
                      progress=False)
    assert set(one["conditions"]) == {"full"}
    for table in r["conditions"].values():
        row = table[0]
        assert row["shares"]["0.1"]["explored"] <= 0.1
        assert row["shares"]["0.0"]["explored"] == 0
    with pytest.raises(ExploreEvalError, match="observed"):
        run_explore(train=ds, X_train=X, conditions=(("none", 0.0, {}),), progress=False)
    with pytest.raises(ExplorationError):
        run_explore(train=ds, X_train=X, shares=(2.0,), progress=False)
    with pytest.raises(ExploreEvalError, match="size"):
        run_explore(train=ds, X_train=X[:5], progress=False)
