"""Online replay (eval.online) on a small synthetic routing problem."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from eval.online import OnlineEvalError, plot_online, run_online, summary_lines
from router.dataset import RoutingDataset

MODELS = ["tiny", "small", "mid", "big"]
PRICES = np.array([1e-5, 1e-4, 1e-3, 6e-3])


def make(n: int, seed: int) -> tuple[RoutingDataset, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = 16
    X = rng.standard_normal((n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    W = np.random.default_rng(42).standard_normal((d, len(MODELS)))  # shared by both splits
    logits = np.array([-1.0, 0.0, 0.8, 1.5]) + 3 * X @ W
    quality = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(float)
    cost = np.tile(PRICES, (n, 1)) * rng.uniform(0.5, 1.5, (n, 1))
    ds = RoutingDataset("syn", [f"q{i}" for i in range(n)], ["t"] * n, MODELS, quality, cost)
    return ds, X


@pytest.fixture(scope="module")
def data():
    train, X_train = make(500, 1)
    test, X_test = make(250, 2)
    return train, test, X_train, X_test


@pytest.fixture(scope="module")
def result(data, tmp_path_factory):
    train, test, X_train, X_test = data
    out = tmp_path_factory.mktemp("online")
    return run_online(train=train, test=test, X_train=X_train, X_test=X_test, out=out,
                      seed=3, progress=False), out


def test_replay_respects_budgets_and_reports_consistent_regret(result, data):
    res, out = result
    _, test, _, _ = data
    q_test, c_test = test.eval_matrices()
    assert res["config"]["reference_model"] == "big"
    assert res["config"]["reference_spend_usd"] == pytest.approx(c_test[:, 3].sum())
    assert [e["fraction"] for e in res["budgets"]] == [0.10, 0.25, 0.50]
    oracle_total = q_test.max(axis=1).sum()
    for entry in res["budgets"]:
        for name, run in entry["runs"].items():
            assert not run["over_budget"], (entry["fraction"], name)
            assert run["cost_usd"] <= entry["budget_usd"] * (1 + 1e-9)
            assert run["regret_oracle"] == pytest.approx(oracle_total - run["cumulative_reward"])
            assert run["quality"] == pytest.approx(run["cumulative_reward"] / len(test))
            assert run["curves"]["spend"][-1] == pytest.approx(run["cost_usd"])
            best = res["best_fixed"]["model"]
            assert run["regret_best_fixed"] == pytest.approx(
                q_test[:, MODELS.index(best)].sum() - run["cumulative_reward"])
        pilot = entry["runs"]["pilot"]
        assert pilot["spend_fraction"] > 0.6  # the budget is used, not hoarded
        assert pilot["quality"] > entry["runs"]["cold-start"]["quality"]  # the prior helps
        for fi in entry["full_info"].values():
            assert fi["cost_usd"] <= pilot["cost_usd"] * (1 + 1e-9)  # same-spend comparison
    # more money buys more quality
    qualities = [e["runs"]["pilot"]["quality"] for e in res["budgets"]]
    assert qualities[-1] > qualities[0]
    assert {p.split("/")[-1] for p in res["plots"]} == {"spend_vs_budget.png", "online_regret.png"}
    assert all((out / name).stat().st_size > 1000 for name in ("spend_vs_budget.png",
                                                                "online_regret.png"))
    assert any("pilot" in line for line in summary_lines(res))
    json.dumps(res)  # stored in results.json by `router eval --online`


def test_seeded_and_callable_with_an_eval_context(data, tmp_path):
    train, test, X_train, X_test = data
    messages = []
    ctx = SimpleNamespace(
        args=SimpleNamespace(seed=3, quiet=True, no_plots=True), train=train, test=test,
        X_train=X_train, X_test=X_test, encoder=None, out=tmp_path, say=messages.append)
    a = run_online(ctx, budgets=[0.2], variants=["pilot"], compare=False)
    b = run_online(ctx, budgets=[0.2], variants=["pilot"], compare=False)
    for r in (a, b):
        r["budgets"][0]["runs"]["pilot"].pop("seconds_per_query")  # a timing
    assert a == b
    assert "plots" not in a and not list(tmp_path.iterdir())
    assert any("budget 20%" in m for m in messages)
    c = run_online(ctx, budgets=[0.2], variants=["pilot"], compare=False, seed=4)
    c["budgets"][0]["runs"]["pilot"].pop("seconds_per_query")
    assert c["budgets"][0]["runs"]["pilot"]["curves"] != a["budgets"][0]["runs"]["pilot"]["curves"]


def test_plot_online_writes_files(result, tmp_path):
    paths = plot_online(result[0], tmp_path / "plots")
    assert [p.name for p in paths] == ["spend_vs_budget.png", "online_regret.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_bad_requests(data):
    train, test, X_train, X_test = data
    kw = dict(train=train, test=test, X_train=X_train, X_test=X_test, progress=False)
    with pytest.raises(OnlineEvalError, match="budgets"):
        run_online(**kw, budgets=[0.0])
    with pytest.raises(OnlineEvalError, match="reference"):
        run_online(**kw, reference="gpt-9")
    with pytest.raises(OnlineEvalError, match="variants"):
        run_online(**kw, variants=["greedy"])
    with pytest.raises(OnlineEvalError, match="sizes"):
        run_online(**{**kw, "X_test": X_test[:10]})
    with pytest.raises(OnlineEvalError, match="train and a test"):
        run_online()
