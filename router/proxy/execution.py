"""Step 3 of a chat request: one backend call, with fallbacks down the plan.

:class:`SingleCallExecutor` tries the plan's candidates in order (at most
``1 + routing.max_fallback_tries``; passthrough: one): reserve the call's worst-case cost,
call the backend, then hand the answer to router.proxy.responses (which settles the
actual cost and writes the outcome). A failed call releases its hold, puts the backend on
cooldown and tries the next; an upstream 4xx is returned as it is. A call cancelled (the
client went away) or failing on a bug releases its hold too.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response

from router.proxy.backends import BackendError, StreamResult
from router.proxy.parsing import ChatCall
from router.proxy.routing import RoutePlan
from router.proxy.schemas import APIError

if TYPE_CHECKING:
    from router.proxy.app import Gateway


def no_answer_error(attempts: list[dict[str, Any]], last: BackendError) -> APIError:
    """502 (or 504 when the last failure was a timeout) naming every call tried."""
    status = 504 if last.kind == "timeout" else 502
    tried = "; ".join(
        f"{a['model']} ({a['error']}" + (f" {a['status']}" if a.get("status") else "")
        + (f": {a['message'][:120]}" if a.get("message") else "") + ")"
        for a in attempts)
    return APIError(status, f"No backend could answer; tried {tried}.",
                    code="upstream_timeout" if status == 504 else "upstream_error")


def failed_attempt(backend: str, exc: BackendError) -> dict[str, Any]:
    return {"model": backend, "error": exc.kind, "status": exc.status,
            "message": exc.message[:300]}


class SingleCallExecutor:
    """Calls the plan's first candidate that answers; the answer goes out as it came."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def run(self, call: ChatCall, plan: RoutePlan, rec: dict[str, Any],
                  t0: float) -> Response:
        gw = self.gw
        spend = gw.spend
        key = call.key
        tries = 1 if call.target.kind == "passthrough" else 1 + gw.cfg.routing.max_fallback_tries
        attempts: list[dict[str, Any]] = []
        rec["attempts"] = attempts
        upstream_s = 0.0
        last: BackendError | None = None
        budget_refused = 0
        todo = list(plan.candidates)
        for _ in range(tries):
            if not todo:
                break
            cand, pacing = await spend.next_candidate(todo, call.prompt_tokens, call.max_out)
            backend = gw.pool[cand.backend]
            hold = await spend.reserve(key, backend.max_cost(call.prompt_tokens, call.max_out),
                                       pacing)
            if hold is None:
                budget_refused += 1
                attempts.append({"model": backend.name, "error": "budget"})
                continue
            if attempts and attempts[-1].get("error") not in (None, "budget"):
                gw.metrics.fallbacks.labels(attempts[-1]["model"], backend.name).inc()
            t_call = time.perf_counter()
            try:
                if call.req.stream:
                    result = await backend.open_stream(call.payload)
                else:
                    result = await backend.complete(call.payload)
            except asyncio.CancelledError:  # the client went away: the hold must not leak
                gw._spawn_drained(spend.release(hold))
                raise
            except BackendError as exc:
                upstream_s += time.perf_counter() - t_call
                await spend.release(hold)
                attempts.append(failed_attempt(backend.name, exc))
                gw.metrics.errors.labels(backend.name, exc.kind).inc()
                last = exc
                if not exc.retryable:
                    rec["model"] = backend.name
                    raise APIError(exc.status or 400, f"{backend.name}: {exc.message}",
                                   code="upstream_rejected") from None
                gw.pool.fail(backend.name)
                continue
            except Exception:  # a bug (answered 500): still give the hold back
                await spend.release(hold)
                raise
            gw.pool.ok(backend.name)
            attempts.append({"model": backend.name, "error": None})
            rec["model"] = backend.name
            if plan.policy is not None and cand.score is not None:
                gw.metrics.child(gw.metrics.decisions, plan.policy, backend.name).inc()
            if isinstance(result, StreamResult):
                return gw.responder.stream_response(result, rec, plan, cand, hold, t0, t_call,
                                                    upstream_s)
            upstream_s += time.perf_counter() - t_call
            return gw.responder.json_response(result, rec, plan, cand, backend, hold, t0,
                                              upstream_s)
        # nothing answered
        if last is None and budget_refused:
            raise APIError(402, f"Budget of key '{key.name}' exhausted: no backend's call fits "
                                "the remaining budget.", code="budget_exceeded")
        if last is None:
            raise APIError(503, "No backend is available.", code="no_backend")
        raise no_answer_error(attempts, last)
