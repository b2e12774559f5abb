"""Found by benchmarks/soak.py: feedback across replicas during a Redis outage, reservations
of a SIGKILLed replica, and the Redis connection pool under a burst.

Real `router serve` subprocesses on a real Redis (AOF); the local upstream in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import pytest
import redis as redis_py

from router.state import REDIS_POOL, configure_redis_pool
from router.state.keys_store import RedisKeyStore
from tests.test_replicas import (  # noqa: F401 (module fixtures)
    AUTH,
    BANDIT,
    KEY_HASH,
    artifact,
    config,
    feedback,
    route,
    wait_for,
)
from tests.upstream import MATH

pytestmark = pytest.mark.redis


def version(url: str) -> int:
    return int(redis_py.Redis.from_url(url).get(f"{BANDIT}:ver") or 0)


def two_replicas(upstream, artifact, tmp_path, redis_factory, replica_factory):  # noqa: F811
    """A Redis with AOF and two replicas on it (state dirs ``a`` and ``b``)."""
    server = redis_factory(aof=True).start()
    a, b = replica_factory.start_all(*(
        replica_factory(config(upstream, artifact, server.url, tmp_path / n), n)
        for n in ("a", "b")))
    return server, a, b


def outage_feedback(a, b, server, n: int) -> tuple[list[str], int]:
    """Requests served by A while Redis is down, their feedback posted to B: all 202."""
    v0 = version(server.url)
    server.stop()
    rids = []
    for i in range(n):
        r = route(a.base, MATH.format(40 + i))
        rids.append(r.headers["x-router-request-id"])
        fb = feedback(b.base, rids[-1], 1.0)
        assert fb.status_code == 202, fb.text  # B cannot know it yet; 404 would lose it
        assert fb.json()["queued"] is True and fb.json()["updated"] is False
    return rids, v0


def test_feedback_for_the_other_replica_during_an_outage_is_applied_once(
        upstream, artifact, tmp_path, redis_factory, replica_factory):  # noqa: F811
    server, a, b = two_replicas(upstream, artifact, tmp_path, redis_factory, replica_factory)
    rids, v0 = outage_feedback(a, b, server, 4)
    server.start()
    # A pushes its contexts, B's retry claims them: every reward reaches the bandit
    wait_for(lambda: version(server.url) >= v0 + 4, timeout=20)
    wait_for(lambda: not (tmp_path / "b" / "feedback-pending.jsonl").exists(), timeout=10)
    for rid in rids:  # claimed exactly once, through any replica
        assert feedback(a.base, rid, 1.0).status_code == 409
    assert version(server.url) == v0 + 4
    a.stop()
    b.stop()


def test_deferred_feedback_survives_a_sigkill(  # noqa: F811
        upstream, artifact, tmp_path, redis_factory, replica_factory):  # noqa: F811
    server, a, b = two_replicas(upstream, artifact, tmp_path, redis_factory, replica_factory)
    _, v0 = outage_feedback(a, b, server, 3)
    b.kill()  # the deferred feedback lives in B's journal only
    assert (tmp_path / "b" / "feedback-pending.jsonl").exists()
    server.start()
    b.start()
    wait_for(lambda: version(server.url) >= v0 + 3, timeout=20)
    assert not (tmp_path / "b" / "feedback-pending.jsonl").exists()
    a.stop()
    b.stop()


def test_reservations_of_a_sigkilled_replica_are_given_back_at_restart(
        upstream, artifact, tmp_path, redis_factory, replica_factory):  # noqa: F811
    server = redis_factory(aof=True).start()
    rep = replica_factory(config(upstream, artifact, server.url, tmp_path / "s", budget=5.0),
                          "s").start()
    rc = redis_py.Redis.from_url(server.url)

    def reserved() -> float:
        return float(rc.hget(f"costroute:key:{KEY_HASH}", "reserved") or 0.0)

    route(rep.base, MATH.format(1))
    # without sync_outcomes the answer does not wait for its settle: give it a moment
    wait_for(lambda: abs(reserved()) < 1e-12, timeout=5)
    def hanging_call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut by the kill
            httpx.post(rep.base + "/chat/completions", headers=AUTH, timeout=10, json={
                "model": "cheap", "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]})

    before = upstream.calls("cheap")
    upstream.control(hang_seconds=30.0, fail="timeout")  # calls in flight at the kill
    calls = [threading.Thread(target=hanging_call, daemon=True) for _ in range(3)]
    try:
        for t in calls:
            t.start()
        wait_for(lambda: upstream.calls("cheap") >= before + 3, timeout=10)
        assert reserved() > 0
        rep.kill()
        assert reserved() > 0  # held by a process that is gone
    finally:
        upstream.control(fail=None)
    rep.start()
    wait_for(lambda: abs(reserved()) < 1e-12, timeout=10)
    assert route(rep.base, MATH.format(2)).status_code == 200
    # settled in the background after the answer (no state.sync_outcomes here)
    wait_for(lambda: abs(reserved()) < 1e-12, timeout=10)
    rep.stop()


def test_the_key_store_pool_is_bounded_under_a_burst(redis_factory, tmp_path):
    server = redis_factory().start()
    saved = dict(REDIS_POOL)
    configure_redis_pool(4)
    try:
        store = RedisKeyStore(server.url, state_dir=tmp_path / "s")
    finally:
        REDIS_POOL.update(saved)
    key = "cd" * 32

    async def burst() -> list[bool]:
        oks = await asyncio.gather(*(store.areserve(key, 1e-6, budget=1.0) for _ in range(300)))
        await asyncio.gather(*(store.asettle(key, 1e-6, 1e-6) for _ in range(300)))
        clients = redis_py.Redis.from_url(server.url).client_list()
        await store.aclose()
        return [*oks, len(clients)]

    *oks, clients = asyncio.run(burst())
    assert all(oks) and store.healthy  # waited for a connection, never "too many"
    assert clients <= 4 + 1  # the pool's four, and this check's own
    spent = float(redis_py.Redis.from_url(server.url).hget(f"costroute:key:{key}", "spent"))
    assert spent == pytest.approx(300e-6)
    with pytest.raises(ValueError):
        configure_redis_pool(0)
