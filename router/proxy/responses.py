"""The last step of a chat request: the answer sent back and the request's outcome record.

Non-streaming: the backend's body plus ``router`` info. Streaming: the backend's SSE
bytes followed by one comment line ``: x-router {...}`` with the final cost. Either way
:meth:`Responder.finish` updates the metrics, keeps the feedback context and submits the
one outcome record of the request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response, StreamingResponse

from router.proxy.backends import Backend, Completion, StreamResult
from router.proxy.outcomes import FeedbackContext
from router.proxy.routing import Candidate, RoutePlan
from router.proxy.spend import Hold
from router.proxy.sse import router_comment
from router.proxy.wire import jdumps

if TYPE_CHECKING:
    from router.proxy.app import Gateway


def router_headers(rid: str, model: str, cost: float, **extra: str) -> dict[str, str]:
    return {"x-router-model": model, "x-router-request-id": rid,
            "x-router-cost": f"{cost:.10f}", **extra}


class Responder:
    """Builds answers and closes outcome records (metrics, feedback context, record)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def router_info(self, rec: dict[str, Any], plan: RoutePlan, cost: float) -> dict[str, Any]:
        return {"model": rec["model"], "request_id": rec["request_id"], "cost": cost,
                "policy": plan.policy, "lam": plan.lam, "budget": plan.budget,
                "candidates": [c.as_dict() for c in plan.candidates],
                "attempts": rec["attempts"], **plan.record()}

    def finish(self, rec: dict[str, Any], plan: RoutePlan, cand: Candidate, backend: str,
               cost: float, prompt_tokens: int, completion_tokens: int, extra: dict[str, Any],
               ) -> None:
        gw = self.gw
        m = gw.metrics
        m.child(m.spend, backend).inc(cost)
        m.child(m.key_spend, rec.get("key_name", "")).inc(cost)
        m.child(m.tokens, backend, "prompt").inc(prompt_tokens)
        m.child(m.tokens, backend, "completion").inc(completion_tokens)
        rec.update(status="ok", http_status=200, cost=cost, prompt_tokens=prompt_tokens,
                   completion_tokens=completion_tokens)
        if extra.get("usage_estimated"):
            rec["usage_estimated"] = True
        if extra.get("replay"):
            rec["replay"] = extra["replay"]
        m.child(m.requests, rec["kind"], "200").inc()
        gw.feedback_cache.put(rec["request_id"], FeedbackContext(
            plan.policy, cand.policy_model, backend, plan.embedding, cost))
        gw.outcomes.submit(rec)
        grade = extra.get("grade")
        if grade is not None and gw.cfg.replay.auto_feedback:
            from router.proxy.replay import grade_later

            gw._spawn(grade_later(gw, rec["request_id"], float(grade),
                                  gw.cfg.replay.auto_feedback_delay_seconds))

    def timing(self, rec: dict[str, Any], t0: float, upstream_s: float, backend: str) -> None:
        """Latency fields of the record and the latency metrics (non-streaming answers)."""
        m = self.gw.metrics
        total = time.perf_counter() - t0
        rec.update(latency_ms=round(total * 1000, 3), upstream_ms=round(upstream_s * 1000, 3),
                   overhead_ms=round((total - upstream_s) * 1000, 3))
        m.child(m.latency, rec["kind"]).observe(total)
        m.child(m.upstream_latency, backend).observe(upstream_s)
        m.overhead.observe(max(0.0, total - upstream_s))

    def json_response(self, comp: Completion, rec: dict[str, Any], plan: RoutePlan,
                      cand: Candidate, backend: Backend, hold: Hold, t0: float,
                      upstream_s: float) -> Response:
        cost = comp.cost
        self.gw.spend.settle_soon(hold, cost)
        body = comp.body
        info = self.router_info(rec, plan, cost)
        if comp.extra.get("replay"):
            info["replay"] = comp.extra["replay"]
        body["router"] = info
        self.timing(rec, t0, upstream_s, backend.name)
        self.finish(rec, plan, cand, backend.name, cost, comp.prompt_tokens,
                    comp.completion_tokens, comp.extra)
        headers = router_headers(rec["request_id"], backend.name, cost)
        if plan.policy is not None:  # the trade-off in force (routing.lam, or the request's)
            headers["x-router-lam"] = repr(float(plan.lam))
        if comp.extra.get("replay"):
            headers["x-router-replay-match"] = str(comp.extra["replay"].get("match"))
        return Response(jdumps(body), media_type="application/json", headers=headers)

    def stream_response(self, sr: StreamResult, rec: dict[str, Any], plan: RoutePlan,
                        cand: Candidate, hold: Hold, t0: float, t_call: float,
                        upstream_before: float) -> StreamingResponse:
        gw = self.gw
        backend = sr.backend
        est_cost = cand.cost if cand.cost is not None else backend.cost(
            sr.meter.prompt_estimate, gw.cfg.routing.estimate_output_tokens)
        rec["ttfb_ms"] = round((time.perf_counter() - t0) * 1000, 3)

        async def body():
            done = False
            last = b"\n"
            try:
                async for chunk in sr.chunks():
                    if chunk:
                        last = chunk
                    yield chunk
                done = True
                cost = sr.cost
                info = {"model": backend.name, "request_id": rec["request_id"], "cost": cost,
                        "usage_estimated": sr.meter.estimated}
                if sr.extra.get("replay"):
                    info["replay"] = sr.extra["replay"]
                yield router_comment(info, last)
            finally:
                p, c = sr.usage
                cost = sr.cost
                total = time.perf_counter() - t0
                rec.update(latency_ms=round(total * 1000, 3),
                           upstream_ms=round((time.perf_counter() - t_call + upstream_before)
                                             * 1000, 3))
                if sr.meter.estimated:
                    rec["usage_estimated"] = True
                if sr.error or not done:
                    rec["stream_error"] = sr.error or "client disconnected"
                gw.metrics.latency.labels("stream").observe(total)
                gw.spend.settle_soon(hold, cost)
                self.finish(rec, plan, cand, backend.name, cost, p, c, sr.extra)

        headers = router_headers(rec["request_id"], backend.name, est_cost,
                                 **{"x-router-cost-estimated": "true", "cache-control": "no-cache"})
        if plan.policy is not None:
            headers["x-router-lam"] = repr(float(plan.lam))
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
