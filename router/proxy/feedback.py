"""``POST /v1/feedback``: claim the request's context, update the online policy, record it.

With Redis (several replicas) the context may have been written by another replica. It
reaches Redis with that replica's next outcome batch, so an id not found yet is looked up
again for one flush interval (plus margin). While Redis is down, or shortly after, a
context may still sit in the serving replica's memory, unreachable from here: answering
404 would lose the reward. Such feedback is *deferred* instead: answered 202 (``queued``),
appended to an fsynced journal (``<state.dir>/feedback-pending.jsonl``, so a crash keeps
it) and claimed again every second until the context turns up (then the policy learns
from it as usual), another replica took it first (dropped: duplicate), or
``state.feedback_defer_seconds`` pass with Redis healthy and it is still unknown (dropped
with a warning; the metric ``costroute_feedback{updated="expired"}`` counts it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from router.proxy.outcomes import FeedbackContext
from router.proxy.schemas import APIError, FeedbackResponse

if TYPE_CHECKING:
    from router.proxy.app import Gateway

log = logging.getLogger("costroute.gateway")

JOURNAL_NAME = "feedback-pending.jsonl"


class FeedbackDesk:
    """Takes feedback for any replica's requests; defers what Redis cannot answer yet."""

    def __init__(self, gw: Gateway) -> None:
        from router.state.outcome_store import DiskBuffer

        self.gw = gw
        self.window = gw.cfg.state.feedback_defer_seconds
        shared = gw.feedback_cache.shared is not None
        self.journal = DiskBuffer(gw.state_dir / JOURNAL_NAME) if shared else None
        self.deferred: list[dict[str, Any]] = self.journal.read() if self.journal else []
        if self.deferred:
            log.info("%d deferred feedback of an earlier run to retry", len(self.deferred))
        self._lock = asyncio.Lock()

    # ---- the request --------------------------------------------------------------
    async def give(self, request_id: str, reward: float, source: str = "api"
                   ) -> FeedbackResponse:
        ctx = await self._claim(request_id)
        if ctx is None and self._may_be_elsewhere():
            return self._defer(request_id, reward, source)
        if ctx is None:
            raise APIError(404, f"Unknown request_id '{request_id}' (too old, or served by "
                                "another replica).", code="request_not_found",
                           param="request_id")
        if ctx is False:
            raise APIError(409, f"Feedback for '{request_id}' was already given.",
                           code="duplicate_feedback", param="request_id")
        assert isinstance(ctx, FeedbackContext)
        updated = await self._apply(ctx, request_id, reward, source)
        return FeedbackResponse(request_id=request_id, reward=reward, model=ctx.backend,
                                updated=updated)

    async def _claim(self, request_id: str) -> FeedbackContext | None | bool:
        """Claim the request's context; shared (Redis): from any replica, exactly once."""
        cache = self.gw.feedback_cache
        if cache.shared is None:
            return cache.claim(request_id)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.gw.cfg.state.flush_interval_seconds + 0.5
        while True:
            ctx = await loop.run_in_executor(self.gw.executor, cache.claim, request_id)
            if ctx is not None or time.monotonic() >= deadline:
                return ctx
            await asyncio.sleep(0.05)

    def _may_be_elsewhere(self) -> bool:
        """Could the context of an id not found still be in another replica's memory?"""
        cache = self.gw.feedback_cache
        if cache.shared is None or self.window <= 0:
            return False
        return (not cache.shared_healthy
                or time.monotonic() - cache.last_shared_failure < self.window)

    def _defer(self, request_id: str, reward: float, source: str) -> FeedbackResponse:
        entry = {"request_id": request_id, "reward": float(reward), "source": source,
                 "ts": time.time()}
        assert self.journal is not None
        self.journal.append([entry])  # fsynced before the 202
        self.deferred.append(entry)
        self.gw.metrics.feedback.labels(source, "deferred").inc()
        return FeedbackResponse(request_id=request_id, reward=reward, model=None,
                                updated=False, queued=True)

    async def _apply(self, ctx: FeedbackContext, request_id: str, reward: float,
                     source: str) -> bool:
        gw = self.gw
        updated = False
        served = gw.router.policies.get(ctx.policy) if ctx.policy else None
        if (served is not None and served.online and ctx.embedding is not None
                and ctx.policy_model is not None):
            await asyncio.get_running_loop().run_in_executor(
                gw.executor, served.update, ctx.embedding, ctx.policy_model, reward, ctx.cost)
            updated = True
        gw.outcomes.submit({"event": "feedback", "request_id": request_id, "reward": reward,
                            "ts": time.time(), "source": source, "updated": updated})
        if gw.outcomes.ack:  # state.sync_outcomes: the feedback event is stored first too
            await gw.outcomes.stored(request_id)
        gw.metrics.feedback.labels(source, str(updated).lower()).inc()
        return updated

    # ---- deferred -----------------------------------------------------------------
    async def retry(self) -> int:
        """Claim the deferred feedback again (housekeeping, and at stop); returns how many
        were settled (applied, duplicate or expired)."""
        if not self.deferred or self._lock.locked():
            return 0
        async with self._lock:
            cache = self.gw.feedback_cache
            loop = asyncio.get_running_loop()
            keep: list[dict[str, Any]] = []
            done = 0
            todo = list(self.deferred)  # more may be deferred while this runs: kept below
            for i, e in enumerate(todo):
                try:
                    ctx = await loop.run_in_executor(self.gw.executor, cache.claim,
                                                     str(e["request_id"]))
                except Exception:
                    log.exception("retrying deferred feedback failed")
                    keep.extend(todo[i:])
                    break
                if isinstance(ctx, FeedbackContext):
                    await self._apply(ctx, str(e["request_id"]), float(e["reward"]),
                                      str(e.get("source", "api")))
                elif ctx is False:
                    log.info("deferred feedback for %s: already given", e["request_id"])
                elif (cache.shared_healthy and not self._may_be_elsewhere()
                      and time.time() - float(e.get("ts", 0.0)) > self.window):
                    log.warning("dropping deferred feedback for unknown request %s",
                                e["request_id"])
                    self.gw.metrics.feedback.labels(str(e.get("source", "api")),
                                                    "expired").inc()
                else:
                    keep.append(e)
                    continue
                done += 1
            if done:
                self.deferred = keep + self.deferred[len(todo):]
                assert self.journal is not None
                self.journal.replace(self.deferred)  # no await since: nothing added meanwhile
            return done

    @property
    def pending(self) -> int:
        return len(self.deferred)
