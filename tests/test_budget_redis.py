"""Redis spend ledger: same decisions as the embedded ledger, atomic under concurrency."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from router.budget import (
    BudgetExhausted,
    BudgetSpec,
    EmbeddedLedger,
    OnlineKnapsack,
    RedisLedger,
)

pytestmark = pytest.mark.redis


def run_stream(ks: OnlineKnapsack, seed: int, n: int = 300) -> list[tuple]:
    rng = np.random.default_rng(seed)
    cost = np.array([1e-4, 2e-4, 1e-3, 6e-3])
    trace = []
    for t in range(n):
        q = np.clip(rng.normal([0.4, 0.55, 0.7, 0.85], 0.25), 0, 1)
        key = ["alice", "bob", None][t % 3]
        now = 10.0 * t
        try:
            d = ks.decide(q, cost, cost * 1.3, api_key=key, request_cap=0.01, now=now)
        except BudgetExhausted as exc:
            trace.append(("exhausted", exc.scope))
            continue
        trace.append((d.index, d.z, d.threshold, d.remaining))
        if t % 7 == 0:
            ks.release(d, now=now + 1)
        elif t % 11 != 0:  # every 11th reservation is never settled: it expires
            ks.commit(d, cost[d.index] * rng.uniform(0.5, 1.3), now=now + 1)
    trace.append(ks.status("alice", now=1e6))
    return trace


def knapsack(ledger) -> OnlineKnapsack:
    return OnlineKnapsack(
        ledger,
        global_budget=BudgetSpec(0.15, horizon=300, n_bins=10),
        key_budgets={"alice": BudgetSpec(0.05, horizon=600.0, clock="seconds", n_bins=3,
                                         renew=True)},
        default_key_budget=BudgetSpec(0.005),
        L=50.0, U=40000.0, reservation_ttl=25.0,
    )


def test_redis_and_embedded_ledgers_decide_identically(redis_server):
    embedded = run_stream(knapsack(EmbeddedLedger()), seed=5)
    redis_trace = run_stream(knapsack(RedisLedger(redis_server.url, "t:eq")), seed=5)
    assert embedded == redis_trace  # bit-identical views, thresholds and choices
    kinds = {t[0] for t in embedded[:-1]}
    assert "exhausted" in kinds and len(kinds - {"exhausted"}) >= 2  # a non-trivial stream


def _spender(url: str, prefix: str, n: int, seed: int, out) -> None:
    ks = OnlineKnapsack(RedisLedger(url, prefix), BudgetSpec(0.5), L=50.0, U=40000.0)
    rng = np.random.default_rng(seed)
    cost = np.array([5e-3, 2e-2])
    spent = 0.0
    for _ in range(n):
        try:
            d = ks.decide(rng.uniform(0.3, 1.0, 2), cost)
        except BudgetExhausted:
            continue
        ks.commit(d, float(cost[d.index]))
        spent += float(cost[d.index])
    out.put(spent)


def test_concurrent_processes_cannot_overspend(redis_server):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_spender, args=(redis_server.url, "t:conc", 60, k, out))
             for k in range(4)]
    for p in procs:
        p.start()
    totals = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    view = RedisLedger(redis_server.url, "t:conc").view([("global", BudgetSpec(0.5))], 0.0)[0]
    assert sum(totals) <= 0.5 + 1e-12
    assert view.spent == pytest.approx(sum(totals))
    assert view.reserved == pytest.approx(0.0, abs=1e-12)
    assert sum(totals) > 0.5 - 5e-3 - 1e-12  # the demand (240 queries) exceeds the budget
    assert view.queries == 240


def test_unreachable_redis_ledger_is_a_clear_error():
    from router.budget import BudgetError
    from tests.conftest import free_port

    ks = OnlineKnapsack(RedisLedger(f"redis://127.0.0.1:{free_port()}/0"), BudgetSpec(1.0))
    with pytest.raises(BudgetError, match="redis"):
        ks.decide(np.array([0.5]), np.array([0.1]))
