"""Operations against Redis are applied once per call, also when their reply is lost.

Each test makes Redis apply a call and then drops its reply (the script runs, the caller
sees a connection error, as when Redis is killed or a socket times out right after), so the
caller re-sends or journals it; the state must show one effect.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis

from router.budget import BudgetSpec, OnlineKnapsack, RedisLedger
from router.state.feedback_store import (
    CLAIM_BUSY,
    CLAIMED_BEFORE,
    RedisFeedbackStore,
    encode_context,
)
from router.state.keys_store import RedisKeyStore

pytestmark = pytest.mark.redis

KEY = "cd" * 32


class LostReply:
    """A registered script whose first ``n`` calls are applied but answered with an error."""

    def __init__(self, script, n: int = 1) -> None:
        self.script, self.n, self.calls = script, n, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        out = self.script(*args, **kwargs)
        if self.calls <= self.n:
            raise redis.ConnectionError("reply lost")
        return out


class AsyncLostReply(LostReply):
    async def __call__(self, *args, **kwargs):
        self.calls += 1
        out = await self.script(*args, **kwargs)
        if self.calls <= self.n:
            raise redis.ConnectionError("reply lost")
        return out


def key_state(url: str) -> tuple[float, float, float]:
    r = redis.Redis.from_url(url)
    spent, reserved = r.hmget(f"costroute:key:{KEY}", "spent", "reserved")
    held = sum(float(v) for k, v in r.hgetall(_held_key(r)).items() if k.decode() == KEY)
    return float(spent or 0), float(reserved or 0), held


def _held_key(r: redis.Redis) -> str:
    keys = [k.decode() for k in r.scan_iter("costroute:held:*")]
    return keys[0] if keys else "costroute:held:none"


def test_a_settle_applied_whose_reply_was_lost_is_charged_once(redis_server, tmp_path):
    async def scenario() -> None:
        store = RedisKeyStore(redis_server.url, state_dir=tmp_path, retry_seconds=0.0)
        assert await store.areserve(KEY, 0.5, budget=1.0)
        store._apply = AsyncLostReply(store._apply)
        await store.asettle(KEY, 0.5, 0.3)  # applied in Redis, then "lost": journaled
        assert len(store._entries) == 1 and (tmp_path / "keys-pending.jsonl").exists()
        await store.aflush()  # re-sent with the same op id: answered with the first result
        assert store._entries == [] and store._apply.calls == 1  # pushed in a batch
        assert key_state(redis_server.url) == pytest.approx((0.3, 0.0, 0.0))
        assert not (tmp_path / "keys-pending.jsonl").exists()
        assert await store.ausage(KEY) == pytest.approx((0.3, 0.0))

    asyncio.run(scenario())


def test_an_outage_push_whose_reply_was_lost_is_applied_once(redis_factory, tmp_path):
    """Operations of an outage are pushed in batches; a batch Redis applied whose reply was
    lost is pushed again with the same op ids, which changes nothing."""
    from router.state.keys_lua import PUSH_BATCH

    server = redis_factory().start()

    async def scenario() -> None:
        store = RedisKeyStore(server.url, state_dir=tmp_path, retry_seconds=0.0)
        assert await store.areserve(KEY, 0.0, budget=10.0)  # ledger checked while up
        server.stop()
        n = PUSH_BATCH + 44
        for _ in range(n):  # reserve, then settle: 2n operations of the outage
            assert await store.areserve(KEY, 0.004, budget=10.0)
            await store.asettle(KEY, 0.004, 0.003)
        assert len(store._entries) == 2 * n
        server.start()
        store._apply_many = AsyncLostReply(store._apply_many)
        await store.aflush()  # first batch applied, its reply lost: the push stops there
        assert len(store._entries) == 2 * n
        await store.aflush()
        assert store._entries == [] and store._apply_many.calls == 4
        spent, reserved, held = key_state(server.url)
        assert spent == pytest.approx(0.003 * n) and abs(reserved) < 1e-9 and abs(held) < 1e-9
        assert not (tmp_path / "keys-pending.jsonl").exists()

    asyncio.run(scenario())


def test_a_release_or_reserve_whose_reply_was_lost_is_applied_once(redis_server):
    async def scenario() -> None:
        store = RedisKeyStore(redis_server.url, retry_seconds=0.0)
        store._reserve = AsyncLostReply(store._reserve)
        # held in Redis, reply lost: served from local state, pushed as "make sure it is held"
        assert await store.areserve(KEY, 0.4, budget=1.0)
        assert key_state(redis_server.url) == pytest.approx((0.0, 0.4, 0.4))
        store._apply = AsyncLostReply(store._apply)
        await store.arelease(KEY, 0.4)  # applied, reply lost: kept with its op id
        await store.aflush()
        assert store._entries == []
        assert key_state(redis_server.url) == pytest.approx((0.0, 0.0, 0.0))
        assert await store.ausage(KEY) == pytest.approx((0.0, 0.0))

    asyncio.run(scenario())


def test_a_reserve_refused_locally_after_a_lost_reply_is_given_back(redis_server):
    async def scenario() -> None:
        store = RedisKeyStore(redis_server.url, retry_seconds=0.0)
        assert await store.areserve(KEY, 0.7, budget=1.0)  # known locally: 0.7 reserved
        store._reserve = AsyncLostReply(store._reserve)
        # Redis refuses it (0.7 + 0.5 > 1), the reply is lost, local state refuses it too
        assert not await store.areserve(KEY, 0.5, budget=1.0)
        await store.aflush()
        assert key_state(redis_server.url) == pytest.approx((0.0, 0.7, 0.7))
        # and one Redis held but this replica refused (stale local view) is given back
        store._known[KEY] = (0.0, 0.9)  # e.g. another replica's hold it saw last
        store._reserve = AsyncLostReply(store._reserve.script)
        assert not await store.areserve(KEY, 0.2, budget=1.0)
        assert key_state(redis_server.url) == pytest.approx((0.0, 0.9, 0.9))
        await store.aflush()
        assert key_state(redis_server.url) == pytest.approx((0.0, 0.7, 0.7))

    asyncio.run(scenario())


def test_the_same_op_id_applied_twice_has_one_effect(redis_server):
    """The scripts themselves: one op id, sent twice, one change and the same answer."""
    async def scenario() -> None:
        store = RedisKeyStore(redis_server.url, retry_seconds=0.0)
        keys = [store._key(KEY), store._held, store._op("op-1")]
        args = ["0.25", "1.0", KEY, 60]
        first = await store._reserve(keys=keys, args=args)
        second = await store._reserve(keys=keys, args=args)
        assert int(first[0]) == int(second[0]) == 1
        keys[2] = store._op("op-2")
        for _ in range(2):
            await store._apply(keys=keys, args=["0.2", "-0.25", KEY, 60, "once"])
        assert key_state(redis_server.url) == pytest.approx((0.2, 0.0, 0.0))
        assert 0 < redis.Redis.from_url(redis_server.url).ttl(store._op("op-2")) <= 60

    asyncio.run(scenario())


def test_acknowledged_op_records_expire_soon(redis_server):
    async def scenario() -> None:
        store = RedisKeyStore(redis_server.url, retry_seconds=0.0)
        assert await store.areserve(KEY, 0.1, budget=1.0)
        await store.asettle(KEY, 0.1, 0.05)
        r = redis.Redis.from_url(redis_server.url)
        ops = list(r.scan_iter("costroute:spend-op:*"))
        assert len(ops) == 2 and all(r.ttl(k) > 86400 for k in ops)  # until acknowledged
        await store.aflush()
        assert all(0 < r.ttl(k) <= 60 for k in ops)

    asyncio.run(scenario())


def test_the_ledger_of_a_dead_life_is_given_back_once(redis_server, tmp_path):
    async def scenario() -> None:
        first = RedisKeyStore(redis_server.url, state_dir=tmp_path)
        assert await first.areserve(KEY, 0.3, budget=1.0)  # then "SIGKILLed"
        second = RedisKeyStore(redis_server.url, state_dir=tmp_path, retry_seconds=0.0)
        second._release_ledger = AsyncLostReply(second._release_ledger)
        assert await second.areserve(KEY, 0.2, budget=1.0)  # gives back 0.3, reply lost
        # the give-back is tried again (same life): it must not give back the new 0.2
        assert await second.areserve(KEY, 0.1, budget=1.0)
        assert second._release_ledger.calls == 2
        assert key_state(redis_server.url) == pytest.approx((0.0, 0.3, 0.3))

    asyncio.run(scenario())


# ---- feedback claims -------------------------------------------------------------------------
def test_a_feedback_claim_is_a_lease_of_one_claimant(redis_server):
    store = RedisFeedbackStore(redis_server.url, ttl_seconds=60)
    store.put_many([("r1", encode_context("p", "m", "cheap", None, 0.001))])
    store._claim = LostReply(store._claim)
    with pytest.raises(Exception, match="reply lost"):
        store.claim("r1", "call-a")  # applied, reply lost
    assert store.claim("r1", "call-a")["backend"] == "cheap"  # the same call: granted again
    assert store.claim("r1", "call-b") == CLAIM_BUSY  # another one, within the lease
    store.lease_ms = 50
    time.sleep(0.1)
    assert store.claim("r1", "call-b")["backend"] == "cheap"  # lease over: taken over
    store.mark_done("r1")
    assert store.claim("r1", "call-b") == CLAIMED_BEFORE
    assert store.claim("r1", "call-c") == CLAIMED_BEFORE
    assert store.claim("unknown", "call-c") is None
    store.close()


def test_a_bandit_update_is_applied_once_per_feedback(redis_server):
    from router.proxy.bandit import ResilientBanditStore, applied_once
    from router.state.bandit_state import BanditState
    from router.state.bandit_store import RedisBanditStore

    fb = RedisFeedbackStore(redis_server.url, ttl_seconds=60)
    fb.put_many([("r1", encode_context("p", "m", "cheap", None, 0.001))])
    primary = RedisBanditStore(redis_server.url, key_prefix="t:once")
    store = ResilientBanditStore(primary)
    m, d = 2, 3
    store.initialize(BanditState.from_ridge(np.tile(np.eye(d), (m, 1, 1)), np.zeros((m, d)),
                                            np.zeros(m), np.zeros(m), np.zeros(m)))
    z = np.ones(3)
    results = []
    for _ in range(2):  # two claimants of r1 (one took over from the other) both update
        with applied_once(fb.key("r1")) as res:
            store.update(0, z, 1.0, 0.001)
        results.append(res["skipped"])
    assert results == [False, True] and primary.version() == 1
    assert fb.claim("r1", "late") == CLAIMED_BEFORE
    store.update(1, z, 0.5, 0.001)  # outside applied_once: applied as before
    assert primary.version() == 2
    fb.close()


# ---- the global budget ledger ----------------------------------------------------------------
def test_ledger_calls_whose_reply_was_lost_are_applied_once(redis_server):
    ledger = RedisLedger(redis_server.url, "t:once")
    ks = OnlineKnapsack(ledger, BudgetSpec(1.0))
    accounts = ks.accounts()
    ledger._begin = LostReply(ledger._begin)
    ledger.begin(accounts, now=0.0)  # counted, reply lost, re-sent: counted once
    ledger._reserve = LostReply(ledger._reserve)
    rid = ledger.reserve(accounts, 0.4, now=0.0, ttl=60.0)
    assert rid is not None
    ledger._settle = LostReply(ledger._settle)
    ledger.settle(rid, accounts, 0.25, now=1.0)
    assert (ledger._begin.calls, ledger._reserve.calls, ledger._settle.calls) == (2, 2, 2)
    (view,) = ledger.view(accounts, now=2.0)
    assert view.queries == 1
    assert view.spent == pytest.approx(0.25) and view.reserved == pytest.approx(0.0)
