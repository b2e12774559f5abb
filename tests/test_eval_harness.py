"""eval.harness: lam grids, policy lists, sweeps and scoring on a small synthetic dataset."""

from __future__ import annotations

import numpy as np
import pytest

from eval import harness as H
from policies import get_policy_class
from router.dataset import RoutingDataset

MODELS = ["small", "medium", "large"]
PRICE = np.array([0.001, 0.01, 0.1])  # USD per call


def synthetic(n: int = 240, seed: int = 0, name: str = "synthetic") -> RoutingDataset:
    """Two tasks; 'small' is good at code only, 'large' is good at everything."""
    rng = np.random.default_rng(seed)
    tasks = ["code" if i % 3 == 0 else "math" for i in range(n)]
    p = np.array([[0.8, 0.6, 0.9] if t == "code" else [0.2, 0.6, 0.9] for t in tasks])
    quality = (rng.random((n, 3)) < p).astype(float)
    quality[rng.random((n, 3)) < 0.02] = np.nan  # a few missing cells
    cost = PRICE[None, :] * rng.uniform(0.8, 1.2, size=(n, 3))
    return RoutingDataset(
        name=name, prompts=[f"{t} question {i}" for i, t in enumerate(tasks)], tasks=tasks,
        models=list(MODELS), quality=quality, cost=cost,
    )


@pytest.fixture(scope="module")
def split():
    return synthetic(300, seed=1).split(0.4, seed=0)


def run_policy(name, train, test, lams, params=None, label=None):
    spec = H.PolicySpec(label or name, name, params or {})
    X_train = np.zeros((len(train), 1), dtype=np.float32)
    X_test = np.zeros((len(test), 1), dtype=np.float32)
    policy = H.fit_policy(spec, train, X_train)
    q, c = test.eval_matrices()
    columns = H.model_map(policy, test.models, spec.label)
    choices, _, _ = H.sweep_policy(policy, X_test, lams, test.tasks, (q, c), columns)
    return H.PolicyResult(spec.label, name, "trained", spec.params, choices)


def test_lam_grid_specs():
    cost = np.tile(PRICE, (4, 1))
    auto = H.lam_grid("auto", cost)
    assert auto[0] == 0 and len(auto) == 61
    assert auto[1] == pytest.approx(0.01 / 0.1) and auto[-1] == pytest.approx(100 / 0.001)
    assert len(H.lam_grid("auto:10", cost)) == 11
    np.testing.assert_allclose(H.lam_grid("log:1:100:3", cost), [0, 1, 10, 100])
    np.testing.assert_allclose(H.lam_grid("5, 1,0", cost), [0, 1, 5])
    np.testing.assert_allclose(H.lam_grid("auto", np.zeros((3, 2))), [0.0])  # no costs
    for bad in ("log:5:1:3", "a,b", "-1", "auto:0", "log:1:2"):
        with pytest.raises(H.EvalError, match="--lams"):
            H.lam_grid(bad, cost)


def test_policy_lists():
    specs = H.parse_policies("cheapest,single:model=\"large\",task-static:smoothing=2")
    assert [s.name for s in specs] == ["cheapest", "single", "task-static"]
    assert specs[1].params == {"model": "large"} and specs[2].params == {"smoothing": 2}
    assert H.parse_policies("single:model=large")[0].params == {"model": "large"}
    with pytest.raises(H.EvalError, match="unknown policy 'nope'"):
        H.parse_policies("cheapest,nope")
    with pytest.raises(H.EvalError, match="twice"):
        H.parse_policies("cheapest,cheapest")
    with pytest.raises(H.EvalError, match="KEY=VALUE"):
        H.parse_policies("single:model")
    default = H.default_policy_names()
    assert "oracle" in default and "single" not in default
    assert all(not get_policy_class(n).online for n in default)


def test_references_and_oracle(split):
    train, test = split
    q, c = test.eval_matrices()
    ev = H.Evaluation(test, np.array([0.0]))
    ref = ev.ref
    np.testing.assert_allclose(ref.model_quality, q.mean(axis=0))
    assert ref.models[ref.weak] == "small" and ref.models[ref.best] == "large"
    # the oracle takes the cheapest correct model: at least as good as any single model
    assert ref.oracle_quality >= ref.model_quality.max()
    assert ref.oracle_cost < ref.model_cost[ref.best]
    ev.add(run_policy("oracle", train, test, ev.lams))
    scores = ev.score(n_boot=0)
    assert scores["oracle"]["max_quality"] == pytest.approx(ref.oracle_quality)
    assert scores["oracle"]["aiq_ci"] is None


def test_single_model_policy_gives_a_degenerate_curve(split):
    train, test = split
    lams = H.lam_grid("auto:20", train.eval_matrices()[1])
    ev = H.Evaluation(test, lams)
    ev.add(run_policy("single", train, test, lams, {"model": "medium"}, label="medium"))
    ev.add(run_policy("single", train, test, lams, {"model": "large"}, label="large"))
    ev.add(run_policy("cheapest", train, test, lams))
    s = ev.score(n_boot=50, seed=0)
    ref = ev.ref
    for label, j in (("medium", 1), ("large", 2), ("cheapest", 0)):
        assert len(s[label]["hull"]) == 1
        assert s[label]["max_quality"] == pytest.approx(ref.model_quality[j])
        assert s[label]["cost_at_max_quality"] == pytest.approx(ref.model_cost[j])
    medium = (ref.c_max - ref.model_cost[1]) / (ref.c_max - ref.c_min) * ref.model_quality[1]
    assert s["medium"]["aiq"] == pytest.approx(medium)
    assert s["large"]["apgr"] == pytest.approx(1.0)  # the strong model (best single)
    assert s["cheapest"]["apgr"] == pytest.approx(0.0)  # the weak model (cheapest)
    assert s["large"]["cost_at_best_single_quality"] == pytest.approx(ref.model_cost[2])
    assert s["medium"]["cost_at_best_single_quality"] is None
    assert all(pt["strong_share"] == 1.0 for pt in s["large"]["curve"])


def test_identical_policies_score_identically(split):
    train, test = split
    lams = H.lam_grid("auto:30", train.eval_matrices()[1])
    ev = H.Evaluation(test, lams)
    ev.add(run_policy("task-static", train, test, lams, label="a"))
    ev.add(run_policy("task-static", train, test, lams, label="b"))
    s = ev.score(n_boot=100, seed=5)
    for key in ("aiq", "aiq_ci", "apgr", "apgr_ci", "curve", "hull", "per_task", "cpt50"):
        assert s["a"][key] == s["b"][key]
    assert len(s["a"]["hull"]) >= 2  # task-static does trade cost for quality here


def test_bootstrap_interval_contains_estimate_and_is_seeded(split):
    train, test = split
    lams = H.lam_grid("auto:30", train.eval_matrices()[1])

    def score(seed):
        ev = H.Evaluation(test, lams)
        ev.add(run_policy("task-static", train, test, lams))
        return ev.score(n_boot=300, seed=seed)["task-static"]

    first, again, other = score(7), score(7), score(8)
    for key in ("aiq", "max_quality", "apgr"):
        lo, hi = first[f"{key}_ci"]
        assert lo <= first[key] <= hi and lo < hi
    assert first["aiq_ci"] == again["aiq_ci"] and first["apgr_ci"] == again["apgr_ci"]
    assert first["aiq_ci"] != other["aiq_ci"]
    for item in first["quality_at_cost"]:
        if item["quality"] is not None:
            assert item["ci"][0] <= item["quality"] <= item["ci"][1]


def test_per_task_breakdown(split):
    train, test = split
    lams = H.lam_grid("auto:20", train.eval_matrices()[1])
    ev = H.Evaluation(test, lams)
    ev.add(run_policy("task-static", train, test, lams))
    s = ev.score(n_boot=0)["task-static"]
    assert set(s["per_task"]) == {"code", "math"}
    q, _ = test.eval_matrices()
    code = np.asarray(test.tasks) == "code"
    assert s["per_task"]["code"]["n"] == code.sum()
    # on code the cheap model is nearly as good: task-static matches 'large' for less
    best_code = q[code].mean(axis=0).max()
    assert s["per_task"]["code"]["max_quality"] >= best_code - 0.1
    ref = ev.reference_json()
    assert set(ref["per_task"]) == {"code", "math"}
    assert ref["zero_router"]["aiq"] > 0


def test_bad_inputs(split):
    train, test = split
    with pytest.raises(H.EvalError, match="empty"):
        H.Evaluation(test.subset([]), np.array([0.0]))
    with pytest.raises(H.EvalError, match="--strong 'gpt-9'"):
        H.Evaluation(test, np.array([0.0]), strong="gpt-9")
    other = synthetic(30)
    other.models = ["small", "medium", "huge"]
    res = run_policy("cheapest", other, other, np.array([0.0]))
    assert res.choices.shape == (1, 30)
    policy = H.fit_policy(H.PolicySpec("c", "cheapest"), other, np.zeros((30, 1)))
    with pytest.raises(H.EvalError, match="huge"):
        H.model_map(policy, test.models, "c")
