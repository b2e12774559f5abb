"""Step 2 of a chat request: which backends may be called, in which order.

:class:`Planner` keeps the backends whose worst-case cost fits the key's remaining budget
and that are not cooling down, embeds the prompt (router.proxy.routing's cache and
micro-batcher) and lets the served policy order them into a :class:`RoutePlan`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

from router.proxy.backends import BackendPool
from router.proxy.metrics import Metrics
from router.proxy.parsing import ChatCall
from router.proxy.routing import Candidate, RoutePlan, Router, ServedPolicy
from router.proxy.schemas import APIError


class Planner:
    """Turns a :class:`ChatCall` into a :class:`RoutePlan` (passthrough: one candidate)."""

    def __init__(self, router: Router, pool: BackendPool, metrics: Metrics,
                 executor: Executor) -> None:
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self.executor = executor
        for name, served in router.policies.items():
            if served.gate is not None:
                metrics.exploration_share.labels(name).set(served.gate.share)

    def allowed(self, call: ChatCall) -> set[str]:
        """Backends whose worst case fits the key's budget, preferring those not cooling."""
        if call.remaining is None:  # every backend fits: only cooldowns matter
            return self.pool.available() or set(self.pool.backends)
        names = [n for n in self.pool.names()
                 if self.pool[n].max_cost(call.prompt_tokens, call.max_out) <= call.remaining]
        if not names:
            raise APIError(402, f"Budget of key '{call.key.name}' exhausted: no backend's "
                                f"call fits the remaining ${call.remaining:.6f}.",
                           code="budget_exceeded")
        affordable = set(names)
        allowed = affordable & self.pool.available()
        return allowed or affordable  # everything cooling down: try anyway rather than refuse

    async def embed(self, served: ServedPolicy, text: str):
        """The prompt's embedding for ``served`` (cached; batched when not inline)."""
        if served.inline:
            return self.router.embed(served, text)
        return await self.router.aembed(served, text)

    async def plan(self, call: ChatCall) -> RoutePlan:
        target = call.target
        if target.kind == "passthrough":
            backend = self.pool[target.backend]
            if (call.remaining is not None
                    and backend.max_cost(call.prompt_tokens, call.max_out) > call.remaining):
                raise APIError(402, f"Budget of key '{call.key.name}' exhausted: {backend.name} "
                                    f"does not fit the remaining ${call.remaining:.6f}.",
                               code="budget_exceeded")
            return RoutePlan(None, None, None, [Candidate(backend.name)])
        served, lam, budget = self.router.resolve(target)
        allowed = self.allowed(call)
        t = time.perf_counter()
        x = await self.embed(served, call.text)
        if served.remote_state:  # the policy reads shared state (Redis): off the event loop
            plan = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.router.plan, served, x, lam, budget, allowed)
        else:
            plan = self.router.plan(served, x, lam, budget, allowed)
        self.metrics.routing.observe(time.perf_counter() - t)
        if plan.explored is not None:
            self.metrics.exploration.labels(served.name, str(plan.explored).lower()).inc()
        if not plan.candidates:
            raise APIError(503, "No backend is available for this policy.", code="no_backend")
        return plan
