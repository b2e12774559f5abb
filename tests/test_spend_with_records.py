"""A call's key spend and its outcome record are stored in one atomic Redis step.

A replica killed between the two used to leave spend without a record (the soak's "key spend
differs from the recorded calls"). Each test "kills" a replica at a point of that path (drops
its stores without closing them, as a SIGKILL does, and starts a new life on the same state
dir) and checks, on a real redis-server, that the key's spend equals the recorded costs and
nothing stays reserved.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from router.state.keys_store import RedisKeyStore
from router.state.outcome_store import SPEND_OPS, BufferedStore, RedisOutcomeStore

pytestmark = pytest.mark.redis

KEY = "ab" * 32


def life(url: str, state_dir) -> tuple[RedisKeyStore, BufferedStore]:
    """One life of a replica's key store and outcome store, wired as the gateway does."""
    keys = RedisKeyStore(url, state_dir=state_dir, retry_seconds=0.0)
    out = BufferedStore(RedisOutcomeStore(url), state_dir / "outcome-buffer.jsonl",
                        retry_seconds=0.0)
    out.adopt_earlier_life()
    out.primary.settle_with_records(*keys.settle_target(), on_settled=keys.settled)
    return keys, out


def agree(url: str) -> tuple[float, float, float, float, int]:
    """(spent, reserved, held by any replica, recorded cost, records) in Redis."""
    r = redis.Redis.from_url(url)
    spent, reserved = r.hmget(f"costroute:key:{KEY}", "spent", "reserved")
    held = sum(float(v) for k in r.scan_iter("costroute:held:*")
               for v in r.hgetall(k).values())
    recs = RedisOutcomeStore(url).records()
    assert all(SPEND_OPS not in rec for rec in recs)  # the ops are not part of the record
    return (float(spent or 0), float(reserved or 0), held,
            sum(rec.get("cost", 0.0) for rec in recs), len(recs))


def outcome(rid: str, cost: float, op: list[str]) -> dict:
    return {"event": "outcome", "request_id": rid, "cost": cost, SPEND_OPS: [op]}


def test_killed_before_the_record_is_written_charges_nothing(redis_server, tmp_path):
    async def scenario() -> None:
        keys, _ = life(redis_server.url, tmp_path)
        assert await keys.areserve(KEY, 0.5, budget=1.0)
        keys.defer_settle(KEY, 0.5, 0.3)  # the call was paid; its record not yet written
        assert await keys.ausage(KEY) == pytest.approx((0.3, 0.0))  # counted locally
        # SIGKILL here. The old code had settled already: spent 0.3, no record.
        assert agree(redis_server.url) == pytest.approx((0.0, 0.5, 0.5, 0.0, 0))
        keys2, _ = life(redis_server.url, tmp_path)
        await keys2.aflush()  # the new life gives back what the dead one held
        assert agree(redis_server.url) == pytest.approx((0.0, 0.0, 0.0, 0.0, 0))

    asyncio.run(scenario())


def test_record_and_spend_written_together_and_a_resent_batch_charges_once(
        redis_server, tmp_path):
    async def scenario() -> None:
        keys, out = life(redis_server.url, tmp_path)
        assert await keys.areserve(KEY, 0.5, budget=1.0)
        assert await keys.areserve(KEY, 0.25, budget=1.0)
        batch = [outcome("r1", 0.3, keys.defer_settle(KEY, 0.5, 0.3)),
                 outcome("r2", 0.2, keys.defer_settle(KEY, 0.25, 0.2)),
                 {"event": "feedback", "request_id": "r1", "reward": 1.0}]
        out.write(batch)
        await asyncio.sleep(0)  # the writer's notice reaches the key store's loop
        assert keys._deferred == {}
        assert agree(redis_server.url) == pytest.approx((0.5, 0.0, 0.0, 0.5, 2))
        out.primary.write(batch)  # its reply was lost: the buffer flush sends it again
        assert agree(redis_server.url) == pytest.approx((0.5, 0.0, 0.0, 0.5, 2))
        assert await keys.ausage(KEY) == pytest.approx((0.5, 0.0))
        # the op records of stored settles are cut to a short expiry by the next write
        r = redis.Redis.from_url(redis_server.url)
        out.write([{"event": "outcome", "request_id": "r3", "cost": 0.0}])
        ttl = [r.ttl(f"costroute:spend-op:{e[SPEND_OPS][0][0]}") for e in batch[:2]]
        assert all(0 < t <= 60 for t in ttl)

    asyncio.run(scenario())


def test_killed_during_an_outage_with_buffered_records_charges_them_once(
        redis_factory, tmp_path):
    async def scenario() -> None:
        server = redis_factory(aof=True).start()
        keys, out = life(server.url, tmp_path)
        assert await keys.areserve(KEY, 0.5, budget=1.0)
        assert await keys.areserve(KEY, 0.25, budget=1.0)  # in flight at the kill
        server.stop()
        out.write([outcome("r1", 0.3, keys.defer_settle(KEY, 0.5, 0.3))])  # to the buffer
        assert out.pending() == 1
        assert await keys.areserve(KEY, 0.2, budget=1.0)  # local: 0.3 + 0.25 + 0.2 fits
        assert not await keys.areserve(KEY, 0.3, budget=1.0)
        # SIGKILL; Redis comes back; the replica starts again on its state dir
        server.start()
        keys2, out2 = life(server.url, tmp_path)
        await keys2.aflush()  # gives back what the dead life held (0.5 + 0.25)
        buffered = out2.buffer.read()
        assert buffered[0][SPEND_OPS][0][3] == "0"  # its hold went back with the ledger
        out2.maintain()  # the buffered record and its settle, as spend only
        assert out2.pending() == 0
        assert agree(server.url) == pytest.approx((0.3, 0.0, 0.0, 0.3, 1))
        out2.primary.write(buffered)  # a flush repeated after a crash mid-flush
        assert agree(server.url) == pytest.approx((0.3, 0.0, 0.0, 0.3, 1))
        server.stop()

    asyncio.run(scenario())


def test_a_gateway_dying_before_its_record_write_has_charged_nothing(
        upstream, tmp_path, redis_server):
    """The gateway's path: the call is paid upstream, then the outcome writer is stuck (the
    replica dies right there). Redis must not hold the call's spend without its record."""
    import threading

    import httpx

    from tests.upstream import GatewayServer, gateway_config

    clear = "sk-spend-with-records"
    auth = {"authorization": f"Bearer {clear}"}
    cfg = gateway_config(upstream.base, None, tmp_path / "state",
                         state={"redis_url": redis_server.url, "sync_outcomes": True},
                         keys={"keys": [{"name": "k", "key": clear, "budget_usd": 1.0}]})
    body = {"model": "cheap", "max_tokens": 8, "messages": [{"role": "user", "content": "a"}]}
    url = redis_server.url
    r = redis.Redis.from_url(url)

    def key_state() -> tuple[float, float]:
        (name,) = [k.decode() for k in r.scan_iter("costroute:key:*")]
        spent, reserved = r.hmget(name, "spent", "reserved")
        return float(spent or 0), float(reserved or 0)

    def recorded() -> tuple[float, int]:
        recs = [x for x in RedisOutcomeStore(url).records() if x.get("status") == "ok"]
        return sum(x["cost"] for x in recs), len(recs)

    first = GatewayServer(cfg).start()
    stuck, gate = threading.Event(), threading.Event()

    def dead_write(events: list[dict]) -> None:
        stuck.set()
        gate.wait()
        raise RuntimeError("this replica is dead")

    first.gateway.outcome_store.write = dead_write
    answer: list[httpx.Response] = []
    t = threading.Thread(target=lambda: answer.append(
        httpx.post(first.base + "/chat/completions", headers=auth, json=body, timeout=30)))
    t.start()
    try:
        assert stuck.wait(20)
        time.sleep(0.3)  # a settle started on its own would have reached Redis by now
        spent, reserved = key_state()  # what a SIGKILL at this point leaves
        assert spent == 0.0 and reserved > 0 and recorded() == (0.0, 0)
        second = GatewayServer(cfg).start()  # the next life on the same state dir
        try:
            ok = httpx.post(second.base + "/chat/completions", headers=auth, json=body,
                            timeout=30)
            assert ok.status_code == 200
            cost = ok.json()["router"]["cost"]
            assert cost > 0
            spent, reserved = key_state()  # the dead life's hold went back
            assert (spent, reserved) == pytest.approx((cost, 0.0))
            assert recorded() == pytest.approx((cost, 1))
        finally:
            second.stop()
    finally:
        gate.set()
        t.join(30)
        first.stop()
