"""The outcome writer thread under slow stores and impatient handlers (state.sync_outcomes)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from router.proxy.outcomes import FeedbackCache, FeedbackContext, OutcomeLogger
from router.state.outcome_store import SQLiteOutcomeStore


class SlowStore(SQLiteOutcomeStore):
    """The embedded store, with a write that stalls while ``slow`` is set (a hung Redis)."""

    def __init__(self, state_dir) -> None:
        super().__init__(state_dir)
        self.slow = threading.Event()

    def write(self, events):
        if self.slow.is_set():
            time.sleep(0.6)
        super().write(events)


def test_a_timed_out_wait_does_not_kill_the_writer(tmp_path):
    store = SlowStore(tmp_path)
    logger = OutcomeLogger(store, flush_interval=0.05, ack=True).start()

    async def scenario() -> tuple[bool, bool]:
        store.slow.set()
        logger.submit({"event": "outcome", "request_id": "r1"})
        first = await logger.stored("r1", timeout=0.1)  # gives up before the write ends
        await asyncio.sleep(0.8)  # the writer resolves r1's (abandoned) future meanwhile
        store.slow.clear()
        logger.submit({"event": "outcome", "request_id": "r2"})
        second = await logger.stored("r2", timeout=5.0)
        return first, second

    try:
        first, second = asyncio.run(scenario())
        assert first is False and second is True
        assert logger.alive
        assert store.count() == 2  # both records were stored, the late one included
    finally:
        logger.close()


def test_a_cancelled_handler_does_not_kill_the_writer(tmp_path):
    store = SlowStore(tmp_path)
    logger = OutcomeLogger(store, flush_interval=0.05, ack=True).start()

    async def scenario() -> bool:
        store.slow.set()
        logger.submit({"event": "outcome", "request_id": "r1"})
        waiter = asyncio.create_task(logger.stored("r1", timeout=5.0))
        await asyncio.sleep(0.1)
        waiter.cancel()  # e.g. the client went away, or shutdown
        await asyncio.sleep(0.8)
        store.slow.clear()
        logger.submit({"event": "outcome", "request_id": "r2"})
        return await logger.stored("r2", timeout=5.0)

    try:
        assert asyncio.run(scenario()) is True
        assert logger.alive and store.count() == 2
    finally:
        logger.close()


@pytest.mark.redis
def test_feedback_claimed_during_an_outage_is_not_accepted_again_after_it(redis_factory):
    """A context already in Redis, claimed from the local cache while Redis was down, is
    refused once Redis is back (same replica) instead of updating the policy twice."""
    from router.state.feedback_store import RedisFeedbackStore

    server = redis_factory(aof=True).start()
    store = RedisFeedbackStore(server.url, ttl_seconds=60)
    cache = FeedbackCache(100, shared=store, retry_seconds=0.0)
    ctx = FeedbackContext(policy=None, policy_model=None, backend="cheap", embedding=None,
                          cost=0.001)
    cache.put("r1", ctx)
    cache.flush_shared()  # the context reaches Redis (unclaimed there)
    server.stop()
    assert cache.claim("r1") is ctx  # outage: the local context serves, once
    assert cache.claim("r1") is False
    server.start()  # same directory and port: the AOF brings the context back
    assert store.claim("r2") is None  # Redis answers again
    assert cache.claim("r1") is False
    assert cache.claim("unknown") is None
    store.close()


@pytest.mark.redis
def test_a_refusing_redis_is_unavailable_not_a_crash(redis_server):
    """Redis answering with an error (here out of memory) reads as unavailable, so the
    gateway falls back to local contexts instead of answering feedback with a 500."""
    from router.state import redis_client
    from router.state.feedback_store import RedisFeedbackStore, encode_context
    from router.state.outcome_store import StoreUnavailable

    store = RedisFeedbackStore(redis_server.url, ttl_seconds=60)
    store.put_many([("r1", encode_context(None, None, "cheap", None, 0.001))])
    admin = redis_client(redis_server.url)
    admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            store.claim("r1")
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            store.put_many([("r2", encode_context(None, None, "cheap", None, 0.001))])
        cache = FeedbackCache(10, shared=store)
        ctx = FeedbackContext(None, None, "cheap", None, 0.001)
        cache.put("r3", ctx)
        assert cache.claim("r3") is ctx  # local fallback
    finally:
        admin.config_set("maxmemory", 0)
        store.close()


@pytest.mark.redis
def test_an_unreachable_shared_store_is_not_retried_on_every_batch(redis_server):
    from router.state.feedback_store import RedisFeedbackStore
    from router.state.outcome_store import StoreUnavailable

    store = RedisFeedbackStore(redis_server.url, ttl_seconds=60)
    cache = FeedbackCache(10, shared=store, retry_seconds=60.0)
    ctx = FeedbackContext(None, None, "cheap", None, 0.001)
    cache.put("r1", ctx)
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        cache.flush_shared()
    cache.flush_shared()  # within the retry window: not tried, nothing raised
    assert cache.pending() == 1  # still queued for when Redis answers
    redis_server.start()
    assert cache.claim("r1") is ctx  # window still open: the local context answers
    cache.retry_seconds, cache._retry_at = 0.0, 0.0
    cache.flush_shared()
    assert cache.pending() == 0 and store.claim("r1") is not None  # reached Redis
    store.close()
