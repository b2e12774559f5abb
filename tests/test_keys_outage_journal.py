"""Key spend settled while Redis is down: journaled, pushed once, never charged twice."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from router.state.keys_store import JOURNAL_NAME, RedisKeyStore

pytestmark = pytest.mark.redis

KEY = "ab" * 32


def spent(url: str) -> float:
    value = redis.Redis.from_url(url).hget(f"costroute:key:{KEY}", "spent")
    return float(value or 0.0)


async def outage_spend(store: RedisKeyStore, amounts: list[float]) -> None:
    for a in amounts:
        assert await store.areserve(KEY, a, budget=1.0)
        await store.asettle(KEY, a, a)


def test_spend_of_an_outage_survives_a_crash_and_is_pushed_once(redis_factory, tmp_path):
    server = redis_factory(aof=True).start()  # AOF: a restart keeps the data
    url = server.url
    state = tmp_path / "state"

    async def scenario() -> None:
        first = RedisKeyStore(url, state_dir=state, retry_seconds=0.05)
        await outage_spend(first, [0.01])  # while Redis is up
        server.stop()
        await outage_spend(first, [0.02, 0.03])  # during the outage
        lines = (state / JOURNAL_NAME).read_text().splitlines()
        assert [json.loads(line)["s"] for line in lines] == [0.02, 0.03]
        # the replica dies here (nothing pushed); Redis comes back; a new process starts
        server.start()
        second = RedisKeyStore(url, state_dir=state, retry_seconds=0.05)
        await second.aflush()
        assert spent(url) == pytest.approx(0.06, abs=1e-12)
        assert not (state / JOURNAL_NAME).exists()
        await second.aflush()
        assert spent(url) == pytest.approx(0.06, abs=1e-12)

    asyncio.run(scenario())


def test_a_push_retried_after_a_crash_mid_push_does_not_charge_twice(redis_factory, tmp_path):
    server = redis_factory(aof=True).start()  # AOF: a restart keeps the data
    state = tmp_path / "state"

    async def scenario() -> None:
        store = RedisKeyStore(server.url, state_dir=state, retry_seconds=0.05)
        server.stop()
        await outage_spend(store, [0.04, 0.05])
        journal = (state / JOURNAL_NAME).read_text()
        server.start()
        await asyncio.sleep(0.06)
        await store.aflush()
        assert spent(server.url) == pytest.approx(0.09, abs=1e-12)
        # a crash after the Lua calls but before the journal was trimmed leaves it whole
        (state / JOURNAL_NAME).write_text(journal)
        again = RedisKeyStore(server.url, state_dir=state, retry_seconds=0.05)
        await again.aflush()
        assert spent(server.url) == pytest.approx(0.09, abs=1e-12)
        assert not (state / JOURNAL_NAME).exists()

    asyncio.run(scenario())


def test_usage_during_the_outage_counts_the_journaled_spend(redis_factory, tmp_path):
    server = redis_factory(aof=True).start()  # AOF: a restart keeps the data

    async def scenario() -> None:
        store = RedisKeyStore(server.url, state_dir=tmp_path / "s", retry_seconds=60)
        server.stop()
        await outage_spend(store, [0.3, 0.3, 0.3])
        spent_local, reserved = await store.ausage(KEY)
        assert spent_local == pytest.approx(0.9) and reserved == pytest.approx(0.0)
        assert not await store.areserve(KEY, 0.2, budget=1.0)  # 0.9 + 0.2 > 1.0

    asyncio.run(scenario())
