"""Money held for backend calls: the key's budget and, when pacing, the global budget.

Before each call its worst-case cost is reserved (:meth:`Spend.reserve`); afterwards the
actual cost is settled (:meth:`Spend.settle_soon`) or the hold released on failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from router.proxy.backends import BackendPool
from router.proxy.keys import ANONYMOUS, KeyInfo, KeyManager
from router.proxy.routing import Candidate

#: settles started while the current request is answered (see :meth:`Spend.track_settles`)
_SETTLES: ContextVar[list[asyncio.Task] | None] = ContextVar("costroute_settles", default=None)
#: the current request's outcome record, which carries its key settles (:meth:`Spend.bind`)
_RECORD: ContextVar[dict[str, Any] | None] = ContextVar("costroute_record", default=None)


@dataclass
class Hold:
    """Money reserved for one backend call: on the key's budget and, when pacing, globally."""

    key: KeyInfo
    amount: float
    pacing: Any = None


class Spend:
    """Reserve, settle and release :class:`Hold` s; picks the next candidate when pacing."""

    def __init__(self, keys: KeyManager, pacer: Any, pool: BackendPool, executor: Executor,
                 spawn: Callable[[Coroutine], asyncio.Task | None],
                 estimate_output_tokens: int) -> None:
        self.keys = keys
        self.pacer = pacer
        self.pool = pool
        self.executor = executor
        self.spawn = spawn
        self.estimate_output_tokens = estimate_output_tokens
        #: charge key spend with the outcome record (both in Redis: one atomic write)
        self.with_records = False

    async def next_candidate(self, todo: list[Candidate], prompt_tokens: int, max_out: int
                             ) -> tuple[Candidate, Any]:
        """Pop the next backend to try: plan order, or the pacer's pick when pacing."""
        if self.pacer is None:
            return todo.pop(0), None
        est_out = self.estimate_output_tokens
        cost = [c.cost if c.cost is not None else self.pool[c.backend].cost(prompt_tokens, est_out)
                for c in todo]
        reserve = [self.pool[c.backend].max_cost(prompt_tokens, max_out) for c in todo]
        idx, decision = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.pacer.pick, todo, cost, reserve)
        return todo.pop(idx), decision

    async def reserve(self, key: KeyInfo, amount: float, pacing: Any = None) -> Hold | None:
        """A hold of ``amount`` on the key, or ``None`` (pacing released) when it does not fit."""
        if not await self.keys.reserve(key, amount):
            await self.release(Hold(key, 0.0, pacing))
            return None
        return Hold(key, amount, pacing)

    async def settle(self, hold: Hold, actual: float, key: bool = True) -> None:
        if key:
            await self.keys.settle(hold.key, hold.amount, actual)
        if hold.pacing is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.pacer.commit, hold.pacing, actual)

    @staticmethod
    def bind(rec: dict[str, Any]) -> None:
        """From now on in this request, key settles go with ``rec`` (when
        :attr:`with_records`): stored in one step with it, so a replica killed in between
        cannot charge a call without its record."""
        _RECORD.set(rec)

    def settle_unrecorded(self, rec: dict[str, Any]) -> None:
        """Charge ``rec``'s settles directly (the request ended without handing it over;
        their op ids make this a no-op for any the record's write applies as well)."""
        from router.state.outcome_store import SPEND_OPS

        for op in list(rec.get(SPEND_OPS) or ()):
            self.spawn(self.keys.store.asettle_op(op))

    def settle_soon(self, hold: Hold, actual: float) -> None:
        """Settle in the background (nothing to do for the anonymous key without pacing);
        the key's part goes with the bound record when :attr:`with_records`."""
        key = hold.key.hash != ANONYMOUS.hash
        rec = _RECORD.get() if self.with_records and key else None
        if rec is not None:
            from router.state.outcome_store import SPEND_OPS

            op = self.keys.settle_op(hold.key, hold.amount, actual)
            if op is not None:
                rec.setdefault(SPEND_OPS, []).append(op)
            key = False
        if key or hold.pacing is not None:
            task = self.spawn(self.settle(hold, actual, key))
            tracked = _SETTLES.get()
            if tracked is not None and task is not None:
                tracked.append(task)

    @staticmethod
    def track_settles() -> list[asyncio.Task]:
        """From now on in this request, collect its settles (for :meth:`settled`)."""
        tracked: list[asyncio.Task] = []
        _SETTLES.set(tracked)
        return tracked

    @staticmethod
    async def settled(tracked: list[asyncio.Task], timeout: float = 10.0) -> None:
        """Wait for the request's settles: with ``state.sync_outcomes`` an answered call's
        cost is in the key store before the answer leaves, so a replica killed right after
        answering has charged it (as it has stored the outcome record)."""
        if tracked:
            await asyncio.wait(tracked, timeout=timeout)

    async def release(self, hold: Hold) -> None:
        if hold.amount:
            await self.keys.release(hold.key, hold.amount)
        if hold.pacing is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.pacer.release, hold.pacing)
