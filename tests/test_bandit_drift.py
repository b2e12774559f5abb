"""Drift scenarios (eval.scenarios / eval.drift) and the confidence gate, on synthetic data.

The data: four models over 16-d embeddings whose quality is a seeded logistic function of
the query, prices 1e-5 .. 6e-3 (tests/test_bandit_online.py's generator). The
bandit runs with the replay's defaults (eval.online.DEFAULT_PARAMS), so the figures test
what `router eval --online --scenario` reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from eval.drift import run_scenario, summary_lines
from eval.online import DEFAULT_PARAMS
from eval.scenarios import Split
from policies.base import PolicyError
from policies.linucb import LinUCBPolicy
from tests.test_bandit_online import MODELS, PRICES
from tests.test_bandit_online import make as make_dataset


def make(n: int, seed: int) -> Split:
    ds, X = make_dataset(n, seed)
    return Split(X, ds.quality, ds.cost, list(ds.tasks))


@pytest.fixture(scope="module")
def splits() -> tuple[Split, Split]:
    return make(500, 1), make(400, 2)


def scenario(name: str, splits, fractions=(0.25,), **params: str):
    train, test = splits
    return run_scenario(name, params, train, test, MODELS, list(fractions), 3,
                        dict(DEFAULT_PARAMS), seed=3)


def test_swap_runs_with_a_model_held_out_of_the_prior(splits):
    """Regression: the swap scenario's prior has an arm without train outcomes; fitting
    it raised 'no observed quality' and the scenario crashed."""
    res = scenario("swap", splits, model="big", new="mid")
    entry = res["budgets"][0]
    assert entry["affected"] == "big" and entry["new"] == "mid"
    for name in ("pilot", "prior-only"):
        run = entry["runs"][name]
        assert run["before"]["new_share"] == 0.0  # not available before the change
        assert run["after"]["affected_share"] == 0.0  # removed after it
        assert not run["over_budget"]
    assert any("swap" in line for line in summary_lines(res))


def test_a_policy_needs_one_observed_model():
    train = make(50, 0)
    q = train.quality.copy()
    q[:, 2] = np.nan
    LinUCBPolicy().fit(train.X, q, train.cost, MODELS)  # a cold arm is fine for linucb
    with pytest.raises(PolicyError, match="no observed quality"):
        LinUCBPolicy().fit(train.X, np.full_like(q, np.nan), train.cost, MODELS)
    from policies.knn import KNNPolicy

    with pytest.raises(PolicyError, match=r"no observed quality for models \['mid'\]"):
        KNNPolicy().fit(train.X, q, train.cost, MODELS)


def test_degraded_backend_loses_its_traffic_within_100_queries(splits):
    """The default affected model: the one the frozen prior sends most of the first half to."""
    res = scenario("degrade", splits, fractions=(0.1, 0.25, 0.5))
    train, test = splits
    for entry in res["budgets"]:
        pilot, frozen = entry["runs"]["pilot"], entry["runs"]["prior-only"]
        assert pilot["before"]["affected_share"] > 0.3  # it mattered before the change
        assert pilot["adapt_queries"] is not None and pilot["adapt_queries"] <= 100
        k, T = entry["change"], len(test.X)
        # the share of the affected model over every tail after k + 100 (what adapt means)
        curve = np.asarray(pilot["share_curve"])
        assert len(curve) == T and curve[k - 1] > 0.2
        assert frozen["after"]["affected_share"] > 0.3  # the frozen prior keeps sending it
        assert pilot["after"]["affected_share"] < 0.1
        assert pilot["after"]["quality"] > frozen["after"]["quality"] + 0.1
        assert not pilot["over_budget"]


def test_price_change_is_followed_within_200_queries(splits):
    """'big' (the busiest model at half of always-big's spend) triples its price."""
    res = scenario("price", splits, fractions=(0.5,))
    entry = res["budgets"][0]
    pilot, frozen = entry["runs"]["pilot"], entry["runs"]["prior-only"]
    ridge = entry["refit"]["ridge"]  # refitted on the new prices, at the pilot's spend
    assert entry["affected"] == "big" and pilot["before"]["affected_share"] > 0.3
    assert pilot["adapt_queries"] is not None and pilot["adapt_queries"] <= 200
    assert not pilot["over_budget"]
    # fewer calls of the dearer backend, about as many as the refit makes
    assert pilot["after"]["affected_share"] < pilot["before"]["affected_share"] / 2
    assert abs(pilot["after"]["affected_share"] - ridge["affected_share"]) < 0.1
    # the pacing follows the new price: the money buys quality, unlike the frozen prior's
    assert pilot["after"]["quality"] > frozen["after"]["quality"] + 0.02
    assert pilot["after"]["cost_per_1k"] <= entry["budget_per_1k"] * 1.05


def test_a_quicker_cost_detector_buys_more_after_a_price_change(splits):
    """The replay's cost_threshold (4, eval.online_tune on train: at 2 the detector fired in a
    stationary replay) trades some of the after-change quality of a lower threshold."""
    train, test = splits
    quick = run_scenario("price", {}, train, test, MODELS, [0.5], 3,
                         {**DEFAULT_PARAMS, "cost_threshold": 2.0}, seed=3)["budgets"][0]
    default = scenario("price", splits, fractions=(0.5,))["budgets"][0]
    frozen = quick["runs"]["prior-only"]["after"]["quality"]
    assert quick["runs"]["pilot"]["after"]["quality"] > frozen + 0.05
    assert quick["runs"]["pilot"]["adapt_queries"] <= default["runs"]["pilot"]["adapt_queries"]


def test_confidence_gate_keeps_the_prior_until_the_change_is_established():
    train, stream = make(300, 0), make(200, 5)
    kw = {"fallback": False, "drift_threshold": 3.0, "drift_slack": 0.3, "drift_shrink": 0.1}
    gated = LinUCBPolicy(confidence=1.0, **kw).fit(train.X, train.quality, train.cost, MODELS)
    plain = LinUCBPolicy(**kw).fit(train.X, train.quality, train.cost, MODELS)
    frozen = LinUCBPolicy(**kw).fit(train.X, train.quality, train.cost, MODELS)
    for pol in (gated, plain):  # a few outcomes of the same world: nothing changed
        for t in range(10):
            pol.update(stream.X[t], 3, stream.quality[t, 3], stream.cost[t, 3])
    X = stream.X[100:]
    assert np.allclose(gated.estimates(X).mean, frozen.estimates(X).mean, atol=1e-9)
    assert not np.allclose(plain.estimates(X).mean, frozen.estimates(X).mean, atol=1e-6)
    assert gated.bandit_state().resets[3] == 0
    for t in range(40):  # now 'big' always fails: the change detector fires, the gate opens
        for pol in (gated, plain):
            pol.update(stream.X[t], 3, 0.0, stream.cost[t, 3])
    assert gated.bandit_state().resets[3] >= 1
    assert np.allclose(gated.estimates(X).mean, plain.estimates(X).mean)
    drop = frozen.estimates(X).mean[:, 3] - gated.estimates(X).mean[:, 3]
    assert drop.mean() > 0.3
    with pytest.raises(PolicyError, match="confidence"):
        LinUCBPolicy(confidence=-1).fit(train.X, train.quality, train.cost, MODELS)


def test_gate_survives_an_artifact_round_trip(tmp_path):
    train, stream = make(200, 0), make(50, 5)
    pol = LinUCBPolicy(confidence=0.5).fit(train.X, train.quality, train.cost, MODELS)
    for t in range(30):
        pol.update(stream.X[t], 1, 0.0, stream.cost[t, 1])
    loaded = LinUCBPolicy.load(pol.save(tmp_path / "art"))
    assert np.allclose(loaded.estimates(stream.X).mean, pol.estimates(stream.X).mean)


def test_a_fixed_price_sample_follows_the_cost_estimates():
    """A price change moves the knapsack's price of a dollar (the dual price of the rate
    on the train sample, re-tabulated at the new cost estimates)."""
    from router.budget import BudgetSpec, EmbeddedLedger, OnlineKnapsack

    train = make(300, 0)
    pol = LinUCBPolicy(fallback=False).fit(train.X, train.quality, train.cost, MODELS)
    est = pol.estimates(train.X)
    sample = (est.mean, est.cost)
    budget = BudgetSpec(0.5 * 300 * PRICES[3], horizon=300, n_bins=10)
    old = OnlineKnapsack(EmbeddedLedger(), budget, price_sample=sample)
    new = OnlineKnapsack(EmbeddedLedger(), budget, price_sample=sample)
    q, c = est.mean[0], est.cost[0]
    d_old = old.decide(q, c, c, now=0.0)
    tripled = c.copy()
    tripled[3] *= 3
    d_new = new.decide(q, tripled, tripled, now=0.0)
    # an empty bin prices at the dual price of the rate: the same rate buys less of the
    # dearer model, so the price rises
    assert d_new.threshold > d_old.threshold
    small = c * 1.05  # a move under COST_MOVE keeps the tabulated curve
    same = OnlineKnapsack(EmbeddedLedger(), budget, price_sample=sample)
    assert same.decide(q, small, small, now=0.0).threshold == pytest.approx(d_old.threshold)


def test_cold_alpha_is_the_optimism_of_an_arm_without_train_outcomes():
    train = make(200, 0)
    q = train.quality.copy()
    q[:, 2] = np.nan  # 'mid' has no train outcomes
    plain = LinUCBPolicy(alpha=0.1).fit(train.X, q, train.cost, MODELS)
    eager = LinUCBPolicy(alpha=0.1, cold_alpha=2.0).fit(train.X, q, train.cost, MODELS)
    a, b = plain.estimates(train.X[:20]), eager.estimates(train.X[:20])
    assert np.allclose(a.mean, b.mean)
    assert np.allclose(b.bonus[:, 2], 20 * a.bonus[:, 2])
    assert np.allclose(np.delete(b.bonus, 2, axis=1), np.delete(a.bonus, 2, axis=1))
    with pytest.raises(PolicyError, match="cold_alpha"):
        LinUCBPolicy(cold_alpha=-1.0).fit(train.X, q, train.cost, MODELS)
