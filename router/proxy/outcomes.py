"""Outcome logging off the hot path, and the per-request context that feedback needs.

The request handler builds one outcome record per request and hands it to
:meth:`OutcomeLogger.submit` (a non-blocking queue put); a daemon thread writes batches to
the state store (:mod:`router.state.outcome_store`) and periodically retries buffered
events. :class:`FeedbackCache` keeps, for recent requests, what ``POST /v1/feedback``
needs to update an online policy (the embedding, chosen model and cost), bounded LRU.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
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
    request costs the event loop more than the write itself (GIL hand-offs).
    """

    def __init__(self, store: Any, flush_interval: float = 1.0, batch: int = 500) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.batch = batch
        self._buf: deque[dict[str, Any]] = deque()
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
        self._buf.append(event)
        if len(self._buf) >= self.batch:
            self._wake.set()

    @property
    def queued(self) -> int:
        with self._done:
            return len(self._buf) + self._inflight

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _take(self) -> list[dict[str, Any]]:
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
            while batch := self._take():
                self._write(batch)
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

    def _write(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(3):
            try:
                self.store.write(batch)
                self.written += len(batch)
                return
            except Exception:
                log.exception("writing %d outcome events failed (attempt %d)", len(batch),
                              attempt + 1)
                time.sleep(0.2 * (attempt + 1))
        self.failed_batches += 1

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
    """Bounded LRU of request id -> :class:`FeedbackContext` (thread-safe)."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._d: OrderedDict[str, FeedbackContext] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, request_id: str, ctx: FeedbackContext) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._d[request_id] = ctx
            if len(self._d) > self.size:
                self._d.popitem(last=False)

    def get(self, request_id: str) -> FeedbackContext | None:
        with self._lock:
            return self._d.get(request_id)

    def claim(self, request_id: str) -> FeedbackContext | None | bool:
        """The context, marked used; ``False`` if feedback was already given; None if unknown."""
        with self._lock:
            ctx = self._d.get(request_id)
            if ctx is None:
                return None
            if ctx.used:
                return False
            ctx.used = True
            return ctx
