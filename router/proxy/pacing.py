"""Optional global spend pacing: the online-knapsack budget policy of :mod:`router.budget`.

With ``routing.global_budget`` (``{amount, horizon, clock, n_bins, renew}``, a
:class:`router.budget.BudgetSpec`) every request's backend is picked among the remaining
fallback candidates by :class:`router.budget.OnlineKnapsack`: the best estimated quality
whose value per dollar beats the pacing threshold of the current budget bin, with the
call's worst-case cost reserved atomically in the ledger (``<state.dir>/budget.json``, or
Redis when configured) and settled with the actual cost. When nothing fits, the request is
refused (429, ``global_budget_exhausted``). Ledger calls run in a worker thread (the
embedded ledger saves its JSON file on every settle; the Redis ledger is synchronous).
If the Redis ledger is unreachable, requests are served in plan order without pacing (logged,
``/ready`` shows ``pacing_healthy: false``) rather than refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from router.proxy.routing import Candidate
from router.proxy.schemas import APIError

log = logging.getLogger("costroute.gateway")


class Pacer:
    def __init__(self, spec: dict[str, Any], state_dir: str | Path, redis_url: str | None
                 ) -> None:
        from router.budget import (
            BudgetError,
            BudgetSpec,
            EmbeddedLedger,
            OnlineKnapsack,
            RedisLedger,
        )

        try:
            self.spec = BudgetSpec.from_dict(spec)
        except (BudgetError, TypeError) as exc:
            raise ValueError(f"routing.global_budget: {exc}") from None
        if redis_url:
            ledger = RedisLedger(redis_url, key_prefix="costroute:budget")
        else:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            ledger = EmbeddedLedger(Path(state_dir) / "budget.json")
        self.knapsack = OnlineKnapsack(ledger, global_budget=self.spec)
        self.healthy = True

    def pick(self, cands: list[Candidate], cost: list[float], reserve: list[float]
             ) -> tuple[int, Any]:
        """Index into ``cands`` of the knapsack's choice, and its held reservation."""
        from router.budget import BudgetError, BudgetExhausted

        known = [c.quality for c in cands if c.quality is not None]
        floor = min(known) if known else 0.5
        quality = np.array([floor if c.quality is None else max(c.quality, 0.0) for c in cands])
        try:
            decision = self.knapsack.decide(quality, np.asarray(cost), np.asarray(reserve))
        except BudgetExhausted as exc:
            raise APIError(429, f"Global budget exhausted: {exc}",
                           code="global_budget_exhausted") from None
        except BudgetError as exc:  # the ledger is unreachable: serve unpaced, say so
            self._unreachable(exc)
            return 0, None
        self.healthy = True
        return decision.index, decision

    def _unreachable(self, exc: Exception) -> None:
        if self.healthy:
            log.warning("pacing ledger unavailable, serving without global pacing: %s", exc)
        self.healthy = False

    def commit(self, decision: Any, actual: float) -> None:
        from router.budget import BudgetError

        try:
            self.knapsack.commit(decision, actual)
        except BudgetError as exc:  # lost: the ledger's reservation TTL frees the hold
            self._unreachable(exc)

    def release(self, decision: Any) -> None:
        self.commit(decision, 0.0)

    def status(self) -> list[dict[str, Any]]:
        return self.knapsack.status()

    def close(self) -> None:
        try:
            self.knapsack.ledger.close()
        except Exception:
            log.debug("closing the budget ledger failed", exc_info=True)
