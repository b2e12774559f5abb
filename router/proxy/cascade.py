"""Cascades in the gateway: ``router-cascade`` / ``router-cascade-<lam>``.

The served cascade policy (policies.cascade, an artifact like any other) gives the
prompt's :class:`~policies.cascade.CascadePlan`. :class:`CascadeExecutor` calls the first
stage's backends concurrently (non-streaming upstream calls), asks ``plan.step`` whether
their answers agree, and escalates to the next stage only when they do not. A failed or
timed-out call is an answer of ``None`` (disagreement), never a 500; only when nothing at
all answered is the request a 502 (504 when the last failure was a timeout; 402 when no
call fit the key's budget).

Every call's worst-case cost is held on the key's spend (router.proxy.spend) and settled
with its actual cost; ``x-router-cost`` is their sum and ``x-router-cascade`` names the
backends called, in call order. A streaming client gets the decided answer as a
well-formed SSE stream (router.proxy.sse). One outcome record lists every call
(``attempts``), the plan and the agreement labels; with ``routing.auto_reward_weight`` > 0
those labels (router.auto_rewards) are folded into every served online policy (linucb) as
rewards of source ``auto``, so the bandit learns without any ``/v1/feedback`` call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi.responses import Response, StreamingResponse

from policies.cascade import CascadePolicy
from router.auto_rewards import SOURCE, auto_labels, weighted_update
from router.proxy.backends import BackendError, Completion
from router.proxy.execution import no_answer_error
from router.proxy.outcomes import FeedbackContext
from router.proxy.parsing import ChatCall
from router.proxy.responses import router_headers
from router.proxy.routing import Candidate, ServedPolicy, Target
from router.proxy.schemas import APIError
from router.proxy.sse import completion_chunks, router_comment
from router.proxy.wire import jdumps

if TYPE_CHECKING:
    from router.proxy.app import Gateway

log = logging.getLogger("costroute.gateway")


def is_cascade(served: ServedPolicy) -> bool:
    """Whether a served policy plans cascades (``policy.plan(text, ...)``)."""
    return isinstance(served.policy, CascadePolicy)


@dataclass
class CascadeCall:
    """One backend call of a cascade and what it brought."""

    model: str  # the policy's model name
    backend: str | None
    stage: int
    completion: Completion | None = None
    error: str | None = None
    status: int | None = None
    message: str | None = None
    retryable: bool = True
    latency_ms: float = 0.0

    @property
    def cost(self) -> float:
        return self.completion.cost if self.completion is not None else 0.0

    @property
    def text(self) -> str | None:
        """The answer's text (None: the call failed or gave no text)."""
        if self.completion is None:
            return None
        try:
            content = self.completion.body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return content if isinstance(content, str) else None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.backend or self.model, "policy_model": self.model,
                               "stage": self.stage, "error": self.error,
                               "cost": round(self.cost, 10), "latency_ms": self.latency_ms}
        if self.status is not None:
            out["status"] = self.status
        if self.message:
            out["message"] = self.message[:300]
        if self.completion is not None and "grade" in self.completion.extra:
            out["grade"] = self.completion.extra["grade"]
        return out


class CascadeExecutor:
    """Runs a cascade plan against the gateway's backends (see the module docstring)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def serves(self, target: Target) -> bool:
        if target.kind != "route":
            return False
        served = self.gw.router.names.get(target.policy or "")
        return served is not None and is_cascade(served)

    async def run(self, call: ChatCall, rec: dict[str, Any], t0: float) -> Response:
        gw = self.gw
        served, lam, budget = gw.router.resolve(call.target)
        # routed cascades (policies.cascade_routed) pick some kinds' model on the prompt
        x = (await gw.planner.embed(served, call.text)
             if getattr(served.policy, "uses_embeddings", False) else None)
        plan = served.policy.plan(call.text, x, lam, budget)
        rec["kind"] = "cascade"
        rec.update(policy=served.name, lam=lam, budget=budget,
                   cascade={"kind": plan.kind, "plan": plan.describe()})
        rec["routing_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        payload = {**call.payload, "stream": False}
        payload.pop("stream_options", None)
        stage_of = {m: k for k, s in enumerate(plan.stages) for m in s.models}
        plan_backends = {served.backend_of[m] for m in plan.models if m in served.backend_of}
        usable = plan_backends & gw.pool.available() or plan_backends  # all cooling: try all
        answers: dict[str, str | None] = {}
        calls: list[CascadeCall] = []
        todo = plan.first()
        upstream_s = 0.0
        while True:
            t_stage = time.perf_counter()
            batch = await asyncio.gather(*(
                self._call(served, m, stage_of[m], call, payload, usable) for m in todo))
            upstream_s += time.perf_counter() - t_stage
            calls.extend(batch)
            answers.update({c.model: c.text for c in batch})
            step = plan.step(answers)
            if step.done:
                break
            todo = step.next_models
        rec["attempts"] = [c.as_dict() for c in calls]
        chosen = next((c for c in calls if c.model == step.model and c.text is not None), None)
        if chosen is None:
            raise self._nothing_answered(call, calls)
        return self._answer(call, rec, plan, served, step, calls, chosen, answers, t0,
                            upstream_s)

    async def _call(self, served: ServedPolicy, model: str, stage: int, call: ChatCall,
                    payload: dict[str, Any], usable: set[str]) -> CascadeCall:
        """One stage call: hold its worst case, call, settle (or release on failure)."""
        gw = self.gw
        name = served.backend_of.get(model)
        out = CascadeCall(model, name, stage)
        if name is None:
            out.error, out.message = "unmapped", f"no backend serves {model!r}"
            return out
        if name not in usable:
            out.error = "cooldown"
            return out
        backend = gw.pool[name]
        try:
            _, pacing = await gw.spend.next_candidate([Candidate(name, model)],
                                                      call.prompt_tokens, call.max_out)
        except APIError as err:  # the global budget refused it
            out.error, out.message = "budget", err.message
            return out
        hold = await gw.spend.reserve(call.key, backend.max_cost(call.prompt_tokens,
                                                                 call.max_out), pacing)
        if hold is None:
            out.error = "budget"
            return out
        t = time.perf_counter()
        try:
            comp = await backend.complete(payload)
        except asyncio.CancelledError:  # the client went away: the hold must not leak
            gw._spawn_drained(gw.spend.release(hold))
            raise
        except BackendError as exc:
            out.latency_ms = round((time.perf_counter() - t) * 1000, 3)
            await gw.spend.release(hold)
            out.error, out.status, out.message = exc.kind, exc.status, exc.message
            out.retryable = exc.retryable
            gw.metrics.errors.labels(name, exc.kind).inc()
            if exc.retryable:
                gw.pool.fail(name)
            return out
        except Exception as exc:  # a bug must not fail the other calls: a disagreement
            log.exception("cascade call to %s failed", name)
            await gw.spend.release(hold)
            out.error, out.message = "internal", f"{type(exc).__name__}: {exc}"
            return out
        out.latency_ms = round((time.perf_counter() - t) * 1000, 3)
        gw.pool.ok(name)
        gw.spend.settle_soon(hold, comp.cost)
        m = gw.metrics
        m.spend.labels(name).inc(comp.cost)
        m.tokens.labels(name, "prompt").inc(comp.prompt_tokens)
        m.tokens.labels(name, "completion").inc(comp.completion_tokens)
        m.upstream_latency.labels(name).observe(out.latency_ms / 1000)
        out.completion = comp
        return out

    def _nothing_answered(self, call: ChatCall, calls: list[CascadeCall]) -> APIError:
        attempts = [c.as_dict() for c in calls]
        failed = [c for c in calls if c.error not in (None, "budget", "cooldown", "unmapped")]
        if not failed and any(c.error == "budget" for c in calls):
            return APIError(402, f"Budget of key '{call.key.name}' exhausted: no call of the "
                                 "cascade fits the remaining budget.", code="budget_exceeded")
        if failed and all(not c.retryable for c in failed):
            c = failed[-1]
            return APIError(c.status or 400, f"{c.backend}: {c.message}",
                            code="upstream_rejected")
        if not failed:
            return APIError(503, "No backend of the cascade is available.", code="no_backend")
        last = failed[-1]
        return no_answer_error(attempts, BackendError(last.backend or last.model,
                                                      last.error or "error", last.message or ""))

    def _answer(self, call: ChatCall, rec: dict[str, Any], plan: Any, served: ServedPolicy,
                step: Any, calls: list[CascadeCall], chosen: CascadeCall,
                answers: dict[str, str | None], t0: float, upstream_s: float) -> Response:
        gw = self.gw
        comp = chosen.completion
        assert comp is not None
        total = sum(c.cost for c in calls)
        backend_of = {c.model: c.backend or c.model for c in calls}
        labels = auto_labels(plan, answers, step.model, step.agreed)
        info_cascade = {
            "kind": plan.kind, "plan": plan.describe(),
            "calls": [backend_of[c.model] for c in calls],
            "agreed": [backend_of.get(m, m) for m in step.agreed],
            "labels": {backend_of[m]: r for m, r in labels.items()},
        }
        rec["cascade"] = info_cascade
        rec["auto_rewards"] = self._auto_rewards(call.text, labels, calls)
        rec["model"] = chosen.backend
        gw.metrics.key_spend.labels(rec.get("key_name", "")).inc(total)
        body = dict(comp.body)
        info = {"model": chosen.backend, "request_id": rec["request_id"], "cost": total,
                "policy": served.name, "lam": rec["lam"], "budget": rec["budget"],
                "cascade": info_cascade, "attempts": rec["attempts"]}
        if comp.extra.get("replay"):
            info["replay"] = comp.extra["replay"]
        headers = router_headers(rec["request_id"], chosen.backend or chosen.model, total,
                                 **{"x-router-cascade": ",".join(info_cascade["calls"])})
        p = sum(c.completion.prompt_tokens for c in calls if c.completion is not None)
        n = sum(c.completion.completion_tokens for c in calls if c.completion is not None)
        elapsed = time.perf_counter() - t0
        rec.update(status="ok", http_status=200, cost=total, prompt_tokens=p,
                   completion_tokens=n, latency_ms=round(elapsed * 1000, 3),
                   upstream_ms=round(upstream_s * 1000, 3),
                   overhead_ms=round((elapsed - upstream_s) * 1000, 3))
        if comp.extra.get("replay"):
            rec["replay"] = comp.extra["replay"]
        m = gw.metrics
        m.requests.labels("cascade", "200").inc()
        m.latency.labels("cascade").observe(elapsed)
        m.overhead.observe(max(0.0, elapsed - upstream_s))
        m.decisions.labels(served.name, chosen.backend or "").inc()
        gw.feedback_cache.put(rec["request_id"], FeedbackContext(
            served.name, chosen.model, chosen.backend or chosen.model, None, total))
        gw.outcomes.submit(rec)
        if not call.req.stream:
            body["router"] = info
            return Response(jdumps(body), media_type="application/json", headers=headers)
        include_usage = bool((call.payload.get("stream_options") or {}).get("include_usage"))

        async def events():
            last = b"\n"
            for chunk in completion_chunks(body, include_usage):
                last = chunk
                yield chunk
            yield router_comment(info, last)

        headers["cache-control"] = "no-cache"
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # ---- automatic rewards --------------------------------------------------------------
    def _auto_rewards(self, text: str, labels: dict[str, float],
                      calls: list[CascadeCall]) -> list[dict[str, Any]]:
        """Fold the labels into every served online policy (in the background); the list
        of rewards given, for the outcome record."""
        gw = self.gw
        weight = gw.cfg.routing.auto_reward_weight
        if not labels or weight <= 0:
            return []
        given: list[dict[str, Any]] = []
        for served in gw.router.policies.values():
            if not served.online:
                continue
            model_of = {b: m for m, b in served.backend_of.items()}
            todo = [(model_of[c.backend], labels[c.model], c.cost) for c in calls
                    if c.model in labels and c.backend in model_of]
            if not todo:
                continue
            given += [{"policy": served.name, "model": served.backend_of[pm],
                       "policy_model": pm, "reward": r, "weight": weight, "source": SOURCE}
                      for pm, r, _ in todo]
            gw._spawn(self._apply(served, text, todo, weight))
        return given

    async def _apply(self, served: ServedPolicy, text: str,
                     todo: list[tuple[str, float, float]], weight: float) -> None:
        gw = self.gw
        try:
            x = await gw.planner.embed(served, text)

            def fold() -> None:
                with served.lock:
                    for model, reward, cost in todo:
                        weighted_update(served.policy, x, model, reward, cost, weight)

            await asyncio.get_running_loop().run_in_executor(gw.executor, fold)
        except Exception:
            log.exception("automatic rewards for policy %s were not applied", served.name)
            gw.metrics.feedback.labels(SOURCE, "false").inc(len(todo))
            return
        gw.metrics.feedback.labels(SOURCE, "true").inc(len(todo))
