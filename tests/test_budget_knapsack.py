"""Online knapsack budget policy with the embedded ledger."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import best_cheapest
from router.budget import (
    BudgetError,
    BudgetExhausted,
    BudgetSpec,
    EmbeddedLedger,
    OnlineKnapsack,
    auto_bins,
    dual_price,
    hull_slopes,
    hull_threshold,
    key_account,
    knapsack_choice,
    price_bounds,
    zcl_threshold,
)


def test_zcl_threshold_endpoints_and_monotone():
    L, U = 10.0, 1000.0
    assert zcl_threshold(0, L, U) == pytest.approx(L / math.e)
    assert zcl_threshold(1, L, U) == pytest.approx(U)
    assert zcl_threshold(-1, L, U) == zcl_threshold(0, L, U)  # clipped to [0, 1]
    zs = np.linspace(0, 1, 11)
    psi = [zcl_threshold(z, L, U) for z in zs]
    assert all(a < b for a, b in zip(psi, psi[1:], strict=False))


def test_hull_threshold_endpoints_and_monotone():
    L, U = 10.0, 1000.0
    assert hull_threshold(0, L, U) == pytest.approx(L)  # an empty bin pays the dual price
    assert hull_threshold(1, L, U) == pytest.approx(U)
    assert hull_threshold(2, L, U) == hull_threshold(1, L, U)  # clipped to [0, 1]
    psi = [hull_threshold(z, L, U) for z in np.linspace(0, 1, 11)]
    assert all(a < b for a, b in zip(psi, psi[1:], strict=False))


def test_hull_slopes_walk_the_upper_frontier():
    q = np.array([0.5, 0.7, 0.6, 0.9, 0.95])
    c = np.array([1e-4, 1e-3, 2e-3, 1e-2, 2e-2])  # model 2 is dominated (dearer, worse)
    np.testing.assert_allclose(hull_slopes(q, c), [0.2 / 9e-4, 0.2 / 9e-3, 0.05 / 1e-2])
    assert hull_slopes(np.array([0.5]), np.array([1.0])).size == 0


def test_choice_walks_the_hull_while_the_step_pays_the_price():
    q = np.array([0.5, 0.7, 0.6, 0.9])
    c = np.array([1e-4, 1e-3, 2e-3, 1e-2])
    # slopes 222 (0 -> 1) and 22 (1 -> 3); model 2 is under the hull and never chosen
    for z, want in ((0.0, 3), (0.5, 1), (1.0, 0)):
        assert knapsack_choice(q, c, c, 1.0, z, 10.0, 1000.0).index == want
    assert knapsack_choice(q, c, c, 1.0, 0.0, 100.0, 1000.0).index == 1  # 22/$ does not pay
    assert knapsack_choice(q, c, c, 5e-3, 0.0, 10.0, 1000.0).index == 1  # 3 does not fit
    assert knapsack_choice(q, c, c, 5e-5, 0.0, 10.0, 1000.0).index is None
    assert knapsack_choice(q, c, c, 1.0, 0.0, 10.0, 1000.0, allowed=[1, 1, 1, 0]).index == 1
    assert knapsack_choice(q, c, c, 1.0, 0.0, 10.0, 1000.0, request_cap=2e-4).index == 0
    for z in np.linspace(0, 1, 21):  # whatever the price, never a point under the hull
        assert knapsack_choice(q, c, c, 1.0, z, 1.0, 1e5).index != 2


def test_dual_price_spends_the_rate_on_the_estimates():
    rng = np.random.default_rng(3)
    q = np.clip(rng.normal([0.4, 0.6, 0.8], 0.2, (500, 3)), 0, 1)
    c = np.array([1e-4, 1e-3, 1e-2])
    rows = np.arange(len(q))
    for rate in (2e-4, 1e-3, 4e-3):
        price = dual_price(q, c, rate)
        pick = best_cheapest(q - price * c, c)  # ties go to the cheaper model
        assert c[pick].mean() <= rate * (1 + 1e-9)
        cheaper = np.argmax(q - 0.9 * price * c, axis=1)  # a lower price overspends
        assert c[cheaper].mean() > rate or price == 0
        assert q[rows, pick].mean() > q[:, 0].mean()
    assert dual_price(q, c, 1.0) == 0.0  # the budget does not bind: no price
    L, U = price_bounds(q, c, 1e-3)
    assert 0 < L < U


@settings(max_examples=60, deadline=None)
@given(
    n_models=st.integers(1, 5),
    horizon=st.integers(1, 80),
    n_bins=st.integers(1, 10),
    budget_frac=st.floats(0.0, 1.5),
    seed=st.integers(0, 2**16),
    with_key=st.booleans(),
)
def test_never_overspends(n_models, horizon, n_bins, budget_frac, seed, with_key):
    rng = np.random.default_rng(seed)
    base = rng.uniform(1e-5, 1e-2, n_models)
    total_if_dearest = base.max() * horizon
    global_b = BudgetSpec(budget_frac * total_if_dearest, horizon, n_bins=n_bins)
    key_b = BudgetSpec(rng.uniform(0, 0.7) * total_if_dearest, horizon, n_bins=1)
    ks = OnlineKnapsack(EmbeddedLedger(), global_budget=global_b,
                        key_budgets={"k1": key_b} if with_key else None)
    spent = key_spent = 0.0
    for t in range(horizon + 5):  # a few queries past the horizon too
        q = rng.uniform(0, 1, n_models)
        est = base * rng.uniform(0.5, 1.5, n_models)
        reserve = est * 1.5  # an upper estimate
        try:
            d = ks.decide(q, est, reserve, api_key="k1" if with_key else None, now=float(t))
        except BudgetExhausted:
            continue
        actual = float(reserve[d.index] * rng.uniform(0, 1))  # never above the reservation
        if rng.random() < 0.1:
            ks.release(d, now=float(t))
            continue
        ks.commit(d, actual, now=float(t))
        spent += actual
        key_spent += actual
        assert spent <= global_b.amount + 1e-12
        if with_key:
            assert key_spent <= key_b.amount + 1e-12
    status = ks.status("k1" if with_key else None, now=1e9)
    assert status[0]["spent"] == pytest.approx(spent)
    assert all(s["reserved"] == pytest.approx(0.0, abs=1e-15) for s in status)


def stream(T: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    cost = np.array([1e-5, 2e-4, 1e-3, 6e-3])
    quality = np.clip(rng.normal([0.4, 0.55, 0.7, 0.85], 0.25, (T, 4)), 0, 1)
    return quality, cost


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5])
def test_paced_spend_buys_what_the_dual_price_buys_and_never_overspends(frac):
    quality, cost = stream()
    T = len(quality)
    B = frac * cost.max() * T  # a share of always buying the dearest (best) model
    L, U = price_bounds(quality, cost, B / T)
    bins = auto_bins(B, cost.max(), T)
    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(B, T, n_bins=bins), L=L, U=U)
    spent = value = 0.0
    for t in range(T):
        d = ks.decide(quality[t], cost, now=0.0)
        ks.commit(d, cost[d.index], now=0.0)
        spent += cost[d.index]
        value += quality[t, d.index]
    assert spent <= B
    # the offline optimum at the same spend (full knowledge of the stream's estimates)
    best = quality[np.arange(T), np.argmax(quality - dual_price(quality, cost, spent / T)
                                           * cost, axis=1)].mean()
    assert value / T >= best - 0.02
    assert value / T > quality[:, 0].mean() + 0.2  # it does buy quality


def test_unpriced_knapsack_derives_its_price_from_recent_estimates():
    quality, cost = stream()
    T = len(quality)
    B = 0.25 * cost.max() * T
    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(B, T, n_bins=auto_bins(B, cost.max(), T)))
    spent = value = 0.0
    for t in range(T):
        d = ks.decide(quality[t], cost, now=0.0)
        ks.commit(d, cost[d.index], now=0.0)
        spent += cost[d.index]
        value += quality[t, d.index]
    assert spent <= B and value / T > quality[:, 0].mean() + 0.2
    assert d.threshold > 0  # a binding budget has a price


def test_unpaced_budget_is_spent_down_then_exhausted():
    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(0.01), L=1.0, U=100.0)
    q, c = np.array([0.6, 0.9]), np.array([0.001, 0.004])
    picks = []
    with pytest.raises(BudgetExhausted, match="global") as err:
        for _ in range(100):
            d = ks.decide(q, c)
            ks.commit(d, c[d.index])
            picks.append(d.index)
    assert err.value.scope == "global"
    assert ks.status()[0]["spent"] == pytest.approx(c[picks].sum())
    assert ks.status()[0]["spent"] >= 0.01 - c.min() - 1e-12  # nothing affordable left unspent


def test_per_key_budgets_are_separate_and_hashed():
    ledger = EmbeddedLedger()
    ks = OnlineKnapsack(ledger, key_budgets={"alice": BudgetSpec(0.002)},
                        default_key_budget=BudgetSpec(1.0))
    q, c = np.array([0.5, 0.9]), np.array([0.001, 0.01])
    d = ks.decide(q, c, api_key="alice")
    assert d.index == 0  # alice cannot afford the large model
    ks.commit(d, 0.001)
    assert ks.decide(q, c, api_key="bob").index == 1
    assert key_account("alice") in ledger._accounts and "alice" not in str(ledger._accounts)
    ks.decide(q, c, api_key="alice")  # holds her last 0.001
    with pytest.raises(BudgetExhausted):
        ks.decide(q, c, api_key="alice")


def test_request_cap_and_no_budget():
    ks = OnlineKnapsack()  # no global or key budget: only the per-request cap applies
    q, c = np.array([0.5, 0.9]), np.array([0.001, 0.01])
    assert ks.decide(q, c).index == 1
    assert ks.decide(q, c, request_cap=0.005).index == 0
    with pytest.raises(BudgetExhausted, match="request") as err:
        ks.decide(q, c, request_cap=1e-4)
    assert err.value.scope == "request"


def test_reservations_hold_money_until_commit_release_or_expiry():
    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(0.01), L=1, U=1000, reservation_ttl=30)
    q, c = np.array([0.9]), np.array([0.004])
    d1 = ks.decide(q, c, now=0)
    ks.decide(q, c, now=1)  # never settled: a crashed replica
    with pytest.raises(BudgetExhausted):
        ks.decide(q, c, now=2)  # 0.008 held, 0.002 left
    ks.release(d1, now=3)
    d3 = ks.decide(q, c, now=4)
    ks.commit(d3, 0.001, now=5)  # cheaper than reserved: the difference comes back
    assert ks.status(now=6)[0]["reserved"] == pytest.approx(0.004)
    assert ks.status(now=40)[0]["reserved"] == pytest.approx(0.0)  # expired hold freed
    assert ks.status(now=40)[0]["spent"] == pytest.approx(0.001)


def test_fallback_reservation_for_a_model_chosen_elsewhere():
    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(0.01), L=1, U=1000)
    d = ks.decide(np.array([0.5, 0.9]), np.array([0.001, 0.004]), now=0)
    assert d.index == 1
    ks.release(d, now=1)  # the backend failed before costing anything
    res = ks.reserve(0, 0.002, now=2)  # retry on the other model
    assert res is not None and res.model_index == 0
    assert ks.reserve(1, 0.009, now=2) is None  # would overspend
    ks.commit(res, 0.0015, now=3)
    status = ks.status(now=4)[0]
    assert status["spent"] == pytest.approx(0.0015) and status["queries"] == 1
    assert status["reserved"] == pytest.approx(0.0)
    with pytest.raises(BudgetError, match="actual cost"):
        ks.commit(res, -1.0)
    assert OnlineKnapsack().reserve(0, 1.0).accounts == ()  # no budget: nothing to hold


def test_renewing_window_budget_and_time_bins():
    spec = BudgetSpec(0.01, horizon=60.0, clock="seconds", n_bins=2, renew=True)
    ks = OnlineKnapsack(EmbeddedLedger(), spec, L=1, U=1000)
    q, c = np.array([0.9]), np.array([0.004])
    for now in (0.0, 1.0):
        ks.commit(ks.decide(q, c, now=now), 0.004, now=now)
    with pytest.raises(BudgetExhausted):
        ks.decide(q, c, now=35.0)
    view = ks.status(now=35.0)[0]
    assert view["bin"] == 1 and view["bin_budget"] == pytest.approx(0.002)
    d = ks.decide(q, c, now=61.0)  # next window: fresh budget
    assert ks.status(now=61.0)[0]["window"] == 1
    ks.commit(d, 0.004, now=61.0)
    assert ks.status(now=62.0)[0]["spent"] == pytest.approx(0.004)
    assert ks.status(now=62.0)[0]["total"] == pytest.approx(0.012)


def test_pacing_bins_roll_unspent_money_forward():
    spec = BudgetSpec(1.0, horizon=10, n_bins=5)
    ledger = EmbeddedLedger()
    views = [ledger.begin([("global", spec)], 0.0)[0] for _ in range(4)]  # nothing spent
    assert [v.bin for v in views] == [0, 0, 1, 1]
    assert views[0].bin_budget == pytest.approx(0.2)
    assert views[2].bin_budget == pytest.approx(0.4)  # bin 0's 0.2 rolled over


def test_embedded_ledger_persists(tmp_path):
    path = tmp_path / "spend.json"
    ks = OnlineKnapsack(EmbeddedLedger(path), BudgetSpec(1.0), L=1, U=10)
    ks.commit(ks.decide(np.array([0.5]), np.array([0.1]), now=0), 0.07, now=0)
    again = OnlineKnapsack(EmbeddedLedger(path), BudgetSpec(1.0), L=1, U=10)
    assert again.status(now=1)[0]["spent"] == pytest.approx(0.07)
    path.write_text("{broken")
    with pytest.raises(BudgetError, match="unreadable"):
        EmbeddedLedger(path)


def test_threads_cannot_overspend():
    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(0.05), L=1, U=1e4)
    q, c = np.array([0.5, 0.9]), np.array([0.001, 0.003])
    spent = []
    lock = threading.Lock()

    def worker():
        for _ in range(40):
            try:
                d = ks.decide(q, c)
            except BudgetExhausted:
                return
            ks.commit(d, c[d.index])
            with lock:
                spent.append(c[d.index])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(spent) <= 0.05 + 1e-12
    assert sum(spent) > 0.05 - 0.001 - 1e-12
    assert ks.status()[0]["spent"] == pytest.approx(sum(spent))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"amount": -1}, "amount"),
        ({"amount": "x"}, "number"),
        ({"amount": 1, "horizon": 0}, "horizon"),
        ({"amount": 1, "clock": "days"}, "clock"),
        ({"amount": 1, "horizon": 5, "n_bins": 0}, "n_bins"),
        ({"amount": 1, "renew": True}, "window"),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises(BudgetError, match=match):
        BudgetSpec(**kwargs)


def test_bad_decide_input():
    ks = OnlineKnapsack()
    with pytest.raises(BudgetError, match="one entry per model"):
        ks.decide(np.ones(2), np.ones(3))
    with pytest.raises(BudgetError, match="finite"):
        ks.decide(np.array([np.nan]), np.ones(1))
    with pytest.raises(BudgetError, match=">= 0"):
        ks.decide(np.ones(1), -np.ones(1))
    with pytest.raises(BudgetError, match="L and U"):
        OnlineKnapsack(L=1.0)
    with pytest.raises(BudgetError, match="unknown budget field"):
        BudgetSpec.from_dict({"amount": 1, "per": "day"})
