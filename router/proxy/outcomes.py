"""Outcome logging off the hot path, and the per-request context that feedback needs.

The request handler builds one outcome record per request and hands it to
:meth:`OutcomeLogger.submit` (a non-blocking queue put); a daemon thread writes batches to
the state store (:mod:`router.state.outcome_store`) and periodically retries buffered
events. With ``ack`` (``state.sync_outcomes``) the handler then awaits
:meth:`OutcomeLogger.stored` so a 200 answer is only sent once its record is stored (group
commit: one batch write serves every request waiting at that moment).
:class:`FeedbackCache` keeps, for recent requests, what ``POST /v1/feedback`` needs to
update an online policy (the embedding, chosen model and cost), bounded LRU; with a shared
store (Redis) the contexts are also written there by the writer thread, so feedback can be
posted to any replica and is claimed once across all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("costroute.gateway")


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class OutcomeLogger:
    """Background writer: ``submit`` is a deque append; ``flush`` waits for the writes.

    The writer thread wakes every ``flush_interval`` seconds (or as soon as ``batch``
    events are waiting, or on :meth:`flush`), not on every event: waking a thread per
    request costs the event loop more than the write itself (GIL hand-offs). With ``ack``
    it wakes on every submit and resolves each event's future once its batch is stored
    (in the primary store, or fsynced to the disk buffer while the primary is down).
    ``before_write`` (if given) runs in the writer thread before each batch (the shared
    feedback contexts are written there).
    """

    def __init__(self, store: Any, flush_interval: float = 1.0, batch: int = 500,
                 ack: bool = False, before_write: Any = None) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.batch = batch
        self.ack = ack
        self.before_write = before_write
        #: called with every submitted event (in the submitting thread; must be cheap)
        self.tap: Any = None
        self._buf: deque[tuple[dict[str, Any], Future | None]] = deque()
        self._acks: weakref.WeakValueDictionary[str, Future] = weakref.WeakValueDictionary()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._inflight = 0
        self._stop = False
        self.written = 0
        self.failed_batches = 0
        self._thread = threading.Thread(target=self._run, name="outcome-writer", daemon=True)
        self._started = False

    def start(self) -> OutcomeLogger:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def submit(self, event: dict[str, Any]) -> None:
        if self.tap is not None:  # e.g. the live page's window of recent records
            self.tap(event)
        fut = None
        if self.ack and event.get("request_id"):
            fut = Future()
            self._acks[event["request_id"]] = fut  # weak: gone once resolved and unawaited
        self._buf.append((event, fut))
        if fut is not None or len(self._buf) >= self.batch:
            self._wake.set()

    async def stored(self, request_id: str, timeout: float = 10.0) -> bool:
        """Wait until ``request_id``'s submitted event is stored (True at once without ack)."""
        fut = self._acks.get(request_id)
        if fut is None:
            return True
        try:
            # shield: a timeout or a cancelled handler must not cancel the writer's future
            ok = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)
        except TimeoutError:
            log.warning("outcome of %s not stored within %.1f s; answering anyway",
                        request_id, timeout)
            return False
        if not ok:
            log.warning("outcome of %s could not be stored (store and disk buffer failed); "
                        "answering anyway", request_id)
        return bool(ok)

    @property
    def queued(self) -> int:
        with self._done:
            return len(self._buf) + self._inflight

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _take(self) -> list[tuple[dict[str, Any], Future | None]]:
        with self._done:
            batch = []
            while self._buf and len(batch) < self.batch:
                batch.append(self._buf.popleft())
            self._inflight = len(batch)
            return batch

    def _run(self) -> None:
        last_maintain = time.monotonic()
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stop = self._stop
            if self.before_write is not None:
                self._before_write()
            while batch := self._take():
                if self.before_write is not None:
                    self._before_write()
                ok = self._write([e for e, _ in batch])
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                            fut.set_result(ok)
            with self._done:
                self._inflight = 0
                self._done.notify_all()
            now = time.monotonic()
            if now - last_maintain >= self.flush_interval or stop:
                last_maintain = now
                try:
                    self.store.maintain()
                except Exception:  # never let the writer die
                    log.exception("outcome store maintenance failed")
            if stop:
                return

    def _before_write(self) -> None:
        try:
            self.before_write()
        except Exception:  # never let the writer die
            log.exception("writing feedback contexts failed")

    def _write(self, batch: list[dict[str, Any]]) -> bool:
        for attempt in range(3):
            try:
                self.store.write(batch)
                self.written += len(batch)
                return True
            except Exception:
                log.exception("writing %d outcome events failed (attempt %d)", len(batch),
                              attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        self.failed_batches += 1
        return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted event was handed to the store."""
        deadline = time.monotonic() + timeout
        while self.queued > 0:
            if time.monotonic() > deadline or not self.alive:
                return False
            self._wake.set()
            with self._done:
                self._done.wait(0.05)
        return True

    def close(self, timeout: float = 10.0) -> None:
        if self._started and self._thread.is_alive():
            self._stop = True
            self._wake.set()
            self._thread.join(timeout)
        try:
            self.store.close()
        except Exception:
            log.debug("closing the outcome store failed", exc_info=True)


@dataclass
class FeedbackContext:
    policy: str | None
    policy_model: str | None
    backend: str
    embedding: np.ndarray | None
    cost: float
    used: bool = False


class FeedbackCache:
    """Bounded LRU of request id -> :class:`FeedbackContext` (thread-safe).

    With ``shared`` (a :class:`~router.state.feedback_store.RedisFeedbackStore`) every
    context put here is also queued for the shared store (:meth:`flush_shared`, run by the
    outcome writer thread) and :meth:`claim` goes through the shared store, so any replica
    can take feedback for a request and a second feedback is refused across replicas.
    ``online`` names the policies that learn: other contexts are shared without embedding.
    While the shared store is unreachable, claims fall back to this replica's LRU.
    """

    def __init__(self, size: int = 50_000, shared: Any = None,
                 online: set[str] | frozenset[str] = frozenset(),
                 retry_seconds: float = 1.0) -> None:
        self.size = size
        self.shared = shared
        self.online = set(online)
        self._d: OrderedDict[str, FeedbackContext] = OrderedDict()
        self._pending: OrderedDict[str, FeedbackContext] = OrderedDict()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.retry_seconds = retry_seconds
        self._retry_at = 0.0
        #: did the last round trip to the shared store succeed; when did one last fail
        self.shared_healthy = True
        self.last_shared_failure = float("-inf")

    def _shared_failed(self) -> None:
        self._retry_at = time.monotonic() + self.retry_seconds
        self.last_shared_failure = time.monotonic()
        self.shared_healthy = False

    def put(self, request_id: str, ctx: FeedbackContext) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._d[request_id] = ctx
            if len(self._d) > self.size:
                self._d.popitem(last=False)
            if self.shared is not None:
                self._pending[request_id] = ctx
                if len(self._pending) > self.size:
                    self._pending.popitem(last=False)

    def get(self, request_id: str) -> FeedbackContext | None:
        with self._lock:
            return self._d.get(request_id)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush_shared(self) -> None:
        """Write queued contexts to the shared store (kept queued if it is unreachable).

        After a failure the store is not tried again for ``retry_seconds``, so a hung Redis
        (each attempt waits for the socket timeout) does not stall every outcome batch.
        """
        if self.shared is None or time.monotonic() < self._retry_at:
            return
        from router.state.feedback_store import encode_context
        from router.state.outcome_store import StoreUnavailable

        with self._flush_lock:
            with self._lock:
                items = list(self._pending.items())
            if not items:
                return
            try:
                self.shared.put_many([
                    (rid, encode_context(c.policy, c.policy_model, c.backend,
                                         c.embedding if c.policy in self.online else None,
                                         c.cost, used=c.used))
                    for rid, c in items])
            except StoreUnavailable:
                self._shared_failed()
                raise
            self.shared_healthy = True
            with self._lock:
                for rid, ctx in items:
                    if self._pending.get(rid) is ctx:
                        del self._pending[rid]

    def claim(self, request_id: str, claimant: str | None = None
              ) -> FeedbackContext | None | bool | str:
        """The context, marked used; ``False`` if feedback was already given; None if unknown;
        :data:`~router.state.feedback_store.CLAIM_BUSY` while another claimant holds it.

        Blocking (a Redis round trip) when the cache is shared; within ``retry_seconds`` of
        a failed round trip the local contexts answer without trying Redis. ``claimant``
        (one feedback call's token) may claim again what it claimed before (a lost reply).
        """
        if self.shared is not None and time.monotonic() >= self._retry_at:
            from router.state.feedback_store import CLAIM_BUSY, CLAIMED_BEFORE
            from router.state.outcome_store import StoreUnavailable

            try:
                with self._lock:
                    unflushed = request_id in self._pending
                if unflushed:
                    self.flush_shared()
                res = self.shared.claim(request_id, claimant)
            except StoreUnavailable as exc:
                self._shared_failed()
                log.warning("shared feedback store unreachable, using local contexts: %s", exc)
            else:
                self.shared_healthy = True
                if res is None:
                    return None
                if res == CLAIM_BUSY:
                    return CLAIM_BUSY
                with self._lock:
                    local = self._d.get(request_id)
                    # claimed here during an outage, after the context reached Redis
                    claimed_locally = local is not None and local.used
                    if local is not None:
                        local.used = True
                if res == CLAIMED_BEFORE or claimed_locally:
                    return False
                assert isinstance(res, dict)
                return FeedbackContext(used=True, **res)
        with self._lock:
            ctx = self._d.get(request_id)
            if ctx is None:
                return None
            if ctx.used:
                return False
            ctx.used = True
            return ctx
