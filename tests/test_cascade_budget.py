"""Budget mode of the cascades (policies/cascade_budget.py): a budget is spent on train by
mixing two adjacent train-hull plans, a hash of the prompt picks the plan; the offline
budget sweep and the gateway's ``router-<policy>-b<USD per 1k>`` names."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from eval.cascades import budget_grid, budget_sweep, replay
from policies import Policy, PolicyError, make_policy
from policies.cascade import CascadePolicy
from policies.cascade_budget import HullPoint, mix_for_budget, prompt_share, upper_hull
from router.proxy.routing import Router, Target, parse_model
from tests.test_policies_cascade import make_data, mc_prompt


@pytest.fixture(scope="module")
def train():
    return make_data(600, seed=1, numbers=120)


@pytest.fixture(scope="module")
def fitted(train) -> CascadePolicy:
    return make_policy("cascade").fit_dataset(train, np.zeros((len(train), 1), np.float32))


def kind_rows(data, kinds) -> dict[str, np.ndarray]:
    from policies.answers import infer_kind

    inferred = np.array([infer_kind(p) for p in data.prompts])
    return {k: np.flatnonzero(inferred == k) for k in kinds}


def test_hull_and_mix_on_hand_made_plans() -> None:
    a = upper_hull([HullPoint(0.0, 0.0, 0.5), HullPoint(1.0, 1.0, 0.9),
                    HullPoint(2.0, 2.0, 0.91),  # under the chord (1, 0.9) -> (3, 1.0)
                    HullPoint(3.0, 3.0, 1.0), HullPoint(4.0, 4.0, 1.0)])  # dominated
    assert [p.cost for p in a] == [0.0, 1.0, 3.0]
    b = [HullPoint(0.0, 0.0, 0.2), HullPoint(5.0, 2.0, 0.8)]
    # slopes: a 0.4 then 0.05, b 0.3; budget 1 buys a's first segment (0.5) and half of b's
    mix = mix_for_budget({"a": a, "b": b}, {"a": 10, "b": 10}, 1.0)
    assert mix.train_cost == pytest.approx(1.0)
    assert mix.kinds["a"].share == 0.0 and mix.kinds["a"].low.cost == 1.0
    assert mix.kinds["b"].share == pytest.approx(0.5)
    assert mix.train_quality == pytest.approx(0.5 * 0.9 + 0.5 * (0.5 * 0.2 + 0.5 * 0.8))
    assert mix.lam == pytest.approx(0.3)
    low, high = mix_for_budget({"a": a, "b": b}, {"a": 1, "b": 1}, 0.0), \
        mix_for_budget({"a": a, "b": b}, {"a": 1, "b": 1}, 99.0)
    assert low.train_cost == 0.0 and {m.low.cost for m in low.kinds.values()} == {0.0}
    assert high.train_cost == pytest.approx(2.5) and high.lam == 0.0


def test_budget_is_spent_on_train_and_quality_interpolates(fitted, train) -> None:
    """On the train split the mix's expected cost is the budget, its realised cost is
    within sampling noise of it, and its quality is the interpolation of the two plans'
    replayed train qualities; no combination of the learned plans with a train cost
    within the budget does better."""
    lo, hi = fitted.budget_mix(0.0).train_cost, fitted.budget_mix(1e9).train_cost
    assert 0 < lo < hi
    n = len(train)
    mixed_seen = 0
    for frac in (0.15, 0.4, 0.7):
        budget = lo + frac * (hi - lo)
        mix = fitted.budget_mix(budget)
        assert mix.train_cost == pytest.approx(budget, rel=1e-9)
        mixed = [k for k, m in mix.kinds.items() if m.share > 0]
        assert len(mixed) <= 1
        mixed_seen += len(mixed)
        # every kind's plans replayed on train: all prompts on the low, then the high plan
        pure = [replace(mix, kinds={k: replace(m, share=s) for k, m in mix.kinds.items()})
                for s in (0.0, 1.0)]
        out = replay(fitted, train, [], mixes=[*pure, mix])
        rows = kind_rows(train, mix.kinds)
        expect_q = 0.0
        for k, m in mix.kinds.items():
            for i, point in enumerate((m.low, m.high)):  # the plans' train figures
                assert out.cost[i, rows[k]].mean() == pytest.approx(point.cost, rel=1e-9)
                assert out.quality[i, rows[k]].mean() == pytest.approx(point.quality, abs=1e-9)
            expect_q += len(rows[k]) / n * ((1 - m.share) * out.quality[0, rows[k]].mean()
                                             + m.share * out.quality[1, rows[k]].mean())
        assert mix.train_quality == pytest.approx(expect_q, abs=1e-9)
        # realised on train: the hash assigns each prompt; deviation = sampling noise only
        dc, dq = np.zeros(n), np.zeros(n)
        for k in mixed:
            dc[rows[k]] = out.cost[1, rows[k]] - out.cost[0, rows[k]]
            dq[rows[k]] = out.quality[1, rows[k]] - out.quality[0, rows[k]]
        s = max((m.share for m in mix.kinds.values()), default=0.0)
        sd_c = np.sqrt(s * (1 - s) * np.mean(dc**2) / n)
        sd_q = np.sqrt(s * (1 - s) * np.mean(dq**2) / n)
        assert abs(out.cost[2].mean() - budget) <= 4 * sd_c + 1e-12
        assert abs(out.quality[2].mean() - mix.train_quality) <= 4 * sd_q + 1e-12
        # optimal: any per-kind choice of learned plans within the budget is no better
        options = {k: fitted.choices(k) for k in mix.kinds}
        w = {k: len(r) / n for k, r in rows.items()}
        for combo in itertools.product(*options.values()):
            cost = sum(w[k] * c.cost for k, c in zip(options, combo, strict=True))
            if cost <= budget:
                quality = sum(w[k] * c.quality for k, c in zip(options, combo, strict=True))
                assert quality <= mix.train_quality + 1e-12
    assert mixed_seen >= 2  # the test budgets fall inside segments


def test_the_prompt_decides_its_plan_deterministically(fitted, tmp_path) -> None:
    lo, hi = fitted.budget_mix(0.0).train_cost, fitted.budget_mix(1e9).train_cost
    budget = next(b for b in np.linspace(lo, hi, 41)[1:-1]
                  if 0.2 < fitted.budget_mix(float(b)).kinds["mc"].share < 0.8)
    mix = fitted.budget_mix(float(budget))
    km = mix.kinds["mc"]
    high = fitted.plan_for_kind("mc", lam=km.high.lam)
    assert high != fitted.plan_for_kind("mc", lam=km.low.lam)
    texts = [mc_prompt(i) + f"variant {i % 7}" for i in range(3000)]
    plans = [fitted.plan(t, budget=float(budget)) for t in texts]
    assert plans == [fitted.plan(t, budget=float(budget)) for t in texts]  # same prompt, same plan
    got = np.mean([p == high for p in plans])
    assert abs(got - km.share) <= 4 * np.sqrt(km.share * (1 - km.share) / len(texts))
    assert all((p == high) == (prompt_share(t) < km.share) for p, t in zip(plans, texts,
                                                                            strict=True))
    loaded = Policy.load(fitted.save(tmp_path / "cascade"))
    assert [loaded.plan(t, budget=float(budget)) for t in texts[:300]] == plans[:300]
    # a stable hash (not Python's per-process hash): pinned
    assert prompt_share("What is 2 + 2?") == pytest.approx(
        int.from_bytes(bytes.fromhex("ea4a029fd2c7331b"), "big") / 2**64)
    with pytest.raises(PolicyError, match="text"):
        fitted.plan_for_kind("mc", budget=float(budget))


def test_budget_sweep_spans_the_train_range(fitted, train) -> None:
    test = make_data(300, seed=4, numbers=60)
    grid = budget_grid(fitted, points=6)
    assert len(grid) == 6 and grid == sorted(grid)
    rows = budget_sweep(fitted, test, budgets=grid)
    assert [r["budget"] for r in rows] == grid
    for r in rows:
        assert r["train_cost"] == pytest.approx(r["budget"], rel=1e-9)
        assert set(r["per_task"]) == {"quiz", "sums"} and r["mean_calls"] >= 1
    quality = [r["train_quality"] for r in rows]
    assert quality == sorted(quality)


def test_gateway_parses_a_budget_suffix() -> None:
    served = {"cascade": object(), "knn-b": object()}
    t = parse_model("router-cascade-b1.5", served, set())
    assert t == Target("route", policy="cascade", budget=pytest.approx(0.0015))
    assert parse_model("router-cascade-2", served, set()) == Target("route", policy="cascade",
                                                                     lam=2.0)
    assert parse_model("router-knn-b", served, set()) == Target("route", policy="knn-b")
    for bad in ("router-cascade-bx", "router-cascade-b-1", "router-cascade-binf",
                "router-cascade-b"):
        assert parse_model(bad, served, set()) is None, bad
    router = Router({"cascade": served["cascade"]}, None, lam=3.0)  # type: ignore[dict-item]
    assert router.resolve(t) == (served["cascade"], 3.0, pytest.approx(0.0015))
