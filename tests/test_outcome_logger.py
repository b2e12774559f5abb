"""The outcome writer thread under slow stores and impatient handlers (state.sync_outcomes)."""

from __future__ import annotations

import asyncio
import threading
import time

from router.proxy.outcomes import OutcomeLogger
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
