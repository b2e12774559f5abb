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

Each feedback call claims with its own token (kept in the deferred entry), so a claim Redis
applied whose reply was lost is claimed again by the same call, not refused as a duplicate.
Feedback whose context another claimant holds (e.g. the same call re-sent by a balancer after
the first replica died mid-call) is deferred too, and taken over once that claim's lease
(:data:`~router.state.feedback_store.CLAIM_LEASE_SECONDS`) has passed without its update; the
bandit update itself is applied at most once per request (:func:`~router.proxy.bandit.applied_once`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from router.proxy.bandit import applied_once
from router.proxy.outcomes import FeedbackContext
from router.proxy.schemas import APIError, FeedbackResponse
from router.state.feedback_store import CLAIM_BUSY

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
        claimant = uuid.uuid4().hex
        ctx = await self._claim(request_id, claimant)
        if ctx == CLAIM_BUSY or (ctx is None and self._may_be_elsewhere()):
            return self._defer(request_id, reward, source, claimant)
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

    async def _claim(self, request_id: str, claimant: str) -> FeedbackContext | None | bool | str:
        """Claim the request's context; shared (Redis): from any replica, exactly once.

        Unknown ids and contexts another claimant holds are tried again for one flush
        interval (plus margin): a concurrent duplicate then sees the first one given (409);
        a claimant that died leaves it busy (the caller defers it)."""
        cache = self.gw.feedback_cache
        if cache.shared is None:
            return cache.claim(request_id)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.gw.cfg.state.flush_interval_seconds + 0.5
        while True:
            ctx = await loop.run_in_executor(self.gw.executor, cache.claim, request_id,
                                             claimant)
            # unknown yet, or another claimant's (a concurrent duplicate: given in a moment)
            if (ctx is not None and ctx != CLAIM_BUSY) or time.monotonic() >= deadline:
                return ctx
            await asyncio.sleep(0.05)

    def _may_be_elsewhere(self) -> bool:
        """Could the context of an id not found still be in another replica's memory?"""
        cache = self.gw.feedback_cache
        if cache.shared is None or self.window <= 0:
            return False
        return (not cache.shared_healthy
                or time.monotonic() - cache.last_shared_failure < self.window)

    def _defer(self, request_id: str, reward: float, source: str, claimant: str
               ) -> FeedbackResponse:
        entry = {"request_id": request_id, "reward": float(reward), "source": source,
                 "ts": time.time(), "claimant": claimant}
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
        shared = gw.feedback_cache.shared
        once = shared.key(request_id) if shared is not None else None
        served = gw.router.policies.get(ctx.policy) if ctx.policy else None
        loop = asyncio.get_running_loop()
        if (served is not None and served.online and ctx.embedding is not None
                and ctx.policy_model is not None):
            def update() -> bool:
                with applied_once(once) as res:
                    served.update(ctx.embedding, ctx.policy_model, reward, ctx.cost)
                return not res["skipped"]

            updated = await loop.run_in_executor(gw.executor, update)
            if not updated:
                log.info("feedback for %s: its bandit update was made by another claimant",
                         request_id)
        elif shared is not None:  # no update to mark it: later claims still see it given
            try:
                await loop.run_in_executor(gw.executor, shared.mark_done, request_id)
            except Exception as exc:
                log.warning("could not mark feedback for %s as given: %s", request_id, exc)
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
                                                     str(e["request_id"]), e.get("claimant"))
                except Exception:
                    log.exception("retrying deferred feedback failed")
                    keep.extend(todo[i:])
                    break
                if ctx == CLAIM_BUSY:  # another claimant's lease: try again later
                    keep.append(e)
                    continue
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
