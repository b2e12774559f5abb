"""The OpenAI-compatible gateway: FastAPI app, request flow, fallbacks, budgets, outcomes.

Request flow of ``POST /v1/chat/completions``: authenticate the key (sha256 lookup) and
count it against its rate limit; read the body (size-capped) and validate it; resolve
``model`` (router-auto / router-<policy>[-<lam>] / a backend name); for routed requests keep
only backends that are not on cooldown and whose worst-case cost fits the key's remaining
budget, embed the prompt and let the policy order them; then try candidates in order
(at most ``1 + routing.max_fallback_tries``): reserve the call's worst-case cost, call the
backend, settle the actual cost (or release on failure, put the backend on cooldown and
try the next). The answer is the backend's body plus ``router`` (non-streaming) or the
backend's SSE bytes unchanged followed by one SSE comment line ``: x-router {...}``
(ignored by SSE clients) carrying the final cost; ``x-router-*`` headers on both. One
outcome record per request goes to a background writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from policies.base import Policy, PolicyError
from router.proxy.backends import (
    Backend,
    BackendError,
    BackendPool,
    Completion,
    StreamResult,
    estimate_prompt_tokens,
    jdumps,
    jloads,
    make_backend,
)
from router.proxy.config import ConfigError, GatewayConfig
from router.proxy.keys import KeyInfo, KeyManager
from router.proxy.metrics import Metrics
from router.proxy.outcomes import FeedbackCache, FeedbackContext, OutcomeLogger, prompt_hash
from router.proxy.routing import (
    AUTO,
    Candidate,
    RoutePlan,
    Router,
    ServedPolicy,
    Target,
    load_encoder,
    parse_model,
    price_policy,
)
from router.proxy.schemas import (
    APIError,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
    validation_error_to_api,
)

log = logging.getLogger("costroute.gateway")


@dataclass
class Hold:
    """Money reserved for one backend call: on the key's budget and, when pacing, globally."""

    key: KeyInfo
    amount: float
    pacing: Any = None


def new_request_id() -> str:
    return "cr-" + os.urandom(12).hex()


# ---- building the pieces ------------------------------------------------------------


def load_policies(cfg: GatewayConfig, artifact: str | None = None
                  ) -> tuple[dict[str, tuple[Policy, Any]], str | None]:
    """``{served name: (policy, encoder)}`` and the default's name, from the config."""
    from policies import load_policy

    r = cfg.routing
    main = artifact or r.artifact
    out: dict[str, tuple[Policy, Any]] = {}
    encoders: dict[str, Any] = {}

    def encoder_for(policy: Policy) -> Any:
        enc_cfg = policy.meta_.get("encoder")
        key = json.dumps(enc_cfg, sort_keys=True, default=str)
        if key not in encoders:
            try:
                encoders[key] = load_encoder(enc_cfg, r.encoder_backend, policy.dim_,
                                             device=r.encoder_device, use_cache=False,
                                             threads=r.encoder_threads)
            except ValueError as exc:  # EncoderError: no runtime loads, or a mismatch
                raise ConfigError(f"routing: encoder ({r.encoder_backend}): {exc}") from None
        return encoders[key]

    def load(path: str, where: str) -> Policy:
        if not Path(path).is_dir():
            raise ConfigError(f"{where}: artifact directory {path!r} does not exist")
        try:
            return load_policy(path)
        except PolicyError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    default = None
    if main:
        policy = load(main, "--artifact" if artifact else "routing.artifact")
        if r.policy and r.policy != policy.name:
            raise ConfigError(f"routing.policy: {r.policy!r}, but the artifact {main} holds a "
                              f"{policy.name!r} policy")
        if policy.evaluation_only:
            raise ConfigError(f"routing.artifact: {policy.name!r} is evaluation-only")
        out[policy.name] = (policy, encoder_for(policy))
        default = policy.name
    for name, path in r.artifacts.items():
        policy = load(path, f"routing.artifacts.{name}")
        if policy.evaluation_only:
            raise ConfigError(f"routing.artifacts.{name}: {policy.name!r} is evaluation-only")
        out[name] = (policy, encoder_for(policy))
    if not main and r.policy not in (None, "cheapest"):
        raise ConfigError(f"routing.policy: {r.policy!r} needs a trained artifact; set "
                          "routing.artifact or pass --artifact (without one, only the "
                          "price-based 'cheapest' routing is available)")
    return out, default


class Gateway:
    """Everything the app needs; built once, started/stopped by the app's lifespan."""

    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        artifact: str | None = None,
        policies: dict[str, tuple[Policy, Any]] | None = None,
        default_policy: str | None = None,
        replay: Any = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        from router.proxy.http_pool import make_pool

        self.http = make_pool(cfg.routing.http_client, cfg.routing.http_shards)
        state_dir = Path(cfg.state.dir)
        self.state_dir = state_dir

        if policies is None:
            policies, default_policy = load_policies(cfg, artifact)

        if replay is None and any(
            m.litellm_params.provider == "replay" for m in cfg.model_list
        ):
            from router.proxy.replay import ReplayProvider

            enc = next(iter(policies.values()))[1] if policies else None
            replay = ReplayProvider.from_config(cfg.replay, encoder=enc)
        self.replay = replay

        try:
            backends = {m.model_name: make_backend(m, cfg, self.http, replay)
                        for m in cfg.model_list}
        except ValueError as exc:
            raise ConfigError(f"model_list: {exc}") from None
        self.pool = BackendPool(backends, cfg.routing.cooldown_seconds)
        for b in backends.values():
            if b.price_source == "unknown":
                log.warning("%s: no price known (config, litellm or catalogue); cost counts as 0",
                            b.name)

        r = cfg.routing
        if default_policy is None and not policies:
            pol, enc = price_policy(backends, r.estimate_prompt_tokens, r.estimate_output_tokens)
            policies = {"cheapest": (pol, enc)}
            default_policy = "cheapest"
        served: dict[str, ServedPolicy] = {}
        for name, (pol, enc) in policies.items():
            try:
                served[name] = ServedPolicy(name, pol, enc, r.model_map, set(backends))
                served[name].check()  # loads the encoder: a mismatch fails at start
            except (PolicyError, ValueError) as exc:
                raise ConfigError(f"routing: {exc}") from None
            served[name].batch_max = r.batch_max
            served[name].batch_wait_ms = r.batch_wait_ms
            if served[name].unmapped():
                log.warning("policy %s: models without a backend are never chosen: %s", name,
                            served[name].unmapped())
        self.router = Router(served, default_policy, lam=r.lam, budget=r.budget,
                             fallback=r.fallback, cache_size=r.embedding_cache_size)

        if self.replay is not None and default_policy is not None:
            self._share_encoder(self.replay, served[default_policy])

        # state
        from router.state.keys_store import LocalKeyStore, RedisKeyStore
        from router.state.outcome_store import open_outcome_store

        self.outcome_store = open_outcome_store(state_dir, cfg.state.redis_url,
                                                cfg.state.outcome_stream)
        self.key_store = (RedisKeyStore(cfg.state.redis_url) if cfg.state.redis_url
                          else LocalKeyStore(state_dir))
        self.keys = KeyManager(cfg.keys, self.key_store)
        shared_fb = None
        if cfg.state.redis_url:
            from router.state.feedback_store import RedisFeedbackStore

            shared_fb = RedisFeedbackStore(cfg.state.redis_url,
                                           ttl_seconds=cfg.state.feedback_ttl_seconds)
        self.feedback_cache = FeedbackCache(
            cfg.state.feedback_cache_size, shared=shared_fb,
            online={n for n, s in self.router.policies.items() if s.online})
        self.outcomes = OutcomeLogger(
            self.outcome_store, cfg.state.flush_interval_seconds, ack=cfg.state.sync_outcomes,
            before_write=self.feedback_cache.flush_shared if shared_fb is not None else None)
        self.pacer = None
        if r.global_budget is not None:
            from router.proxy.pacing import Pacer

            try:
                self.pacer = Pacer(r.global_budget, state_dir, cfg.state.redis_url)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="route")
        self._tasks: set[asyncio.Task] = set()
        self.ready = False
        self.started_at = time.time()
        self._attach_bandit_stores()

    def _share_encoder(self, replay: Any, served: ServedPolicy) -> None:
        """Replay's nearest-prompt search reuses the router's cached embeddings."""

        def embed(text: str):
            return self.router.embed(served, text)

        embed.fast = served.inline  # type: ignore[attr-defined]
        replay.embed = embed

    # ---- lifecycle --------------------------------------------------------------------
    def _attach_bandit_stores(self) -> None:
        """Online policies keep their state in the durable/shared store (router.proxy.bandit)."""
        from router.proxy.bandit import attach_bandit_store

        self.bandit_stores = []
        for served in self.router.policies.values():
            if served.online and hasattr(served.policy, "attach_store"):
                served.remote_state = bool(self.cfg.state.redis_url)
                try:
                    self.bandit_stores.append(attach_bandit_store(
                        served.policy, served.name, self.state_dir, self.cfg.state.redis_url))
                except Exception as exc:  # another artifact's bandit in the same place
                    raise ConfigError(f"state: bandit of policy {served.name!r}: {exc}") from None

    async def start(self) -> None:
        self.outcomes.start()
        self._spawn(self._housekeeping())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for t in list(self._tasks):
            t.cancel()
        self.outcomes.close()  # drains: queued outcomes and feedback contexts are written
        if self.feedback_cache.shared is not None:
            self.feedback_cache.shared.close()
        self.key_store.persist(self.keys.names)
        for store in self.bandit_stores:
            store.close()
        if self.pacer is not None:
            self.pacer.close()
        aclose = getattr(self.key_store, "aclose", None)
        if aclose is not None:
            await aclose()
        for served in self.router.policies.values():
            await served.aclose()
        await self.pool.aclose()
        await self.http.aclose()
        self.executor.shutdown(wait=False)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            try:
                await loop.run_in_executor(self.executor, self.key_store.persist, self.keys.names)
            except Exception:
                log.exception("persisting key spend failed")

    # ---- model names -------------------------------------------------------------------
    def model_names(self) -> list[str]:
        names = [AUTO] + [f"router-{n}" for n in self.router.policies]
        return names + self.pool.names()

    # ---- chat ------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        t0 = time.perf_counter()
        rid = new_request_id()
        rec: dict[str, Any] = {"event": "outcome", "request_id": rid, "ts": time.time()}
        try:
            response = await self._chat(request, rid, rec, t0)
            if self.outcomes.ack:  # state.sync_outcomes: answer once the record is stored
                await self.outcomes.stored(rid)
            return response
        except APIError as err:
            self._record_error(rec, err, t0)
            err.headers.setdefault("x-router-request-id", rid)
            raise
        except Exception as exc:
            log.exception("request %s failed", rid)
            err = APIError(500, f"Internal error in the gateway ({type(exc).__name__}).",
                           code="internal_error", headers={"x-router-request-id": rid})
            self._record_error(rec, err, t0)
            raise err from None

    def _record_error(self, rec: dict[str, Any], err: APIError, t0: float) -> None:
        rec.update(status="error", http_status=err.status, error=err.message,
                   error_code=err.code, latency_ms=_ms(t0))
        self.metrics.requests.labels(rec.get("kind", "invalid"), str(err.status)).inc()
        self.metrics.errors.labels(rec.get("model") or "", err.code or "error").inc()
        self.outcomes.submit(rec)

    async def _chat(self, request: Request, rid: str, rec: dict[str, Any],
                    t0: float) -> Response:
        cfg = self.cfg
        key = self.keys.authenticate(request.headers)
        rec["key_id"] = key.id
        await self.keys.check_rate(key)
        raw = await read_body(request, cfg.routing.max_body_bytes)
        try:
            payload = jloads(raw)
        except ValueError as exc:
            raise APIError(400, f"Request body is not valid JSON: {exc}",
                           code="invalid_json") from None
        if not isinstance(payload, dict):
            raise APIError(400, "Request body must be a JSON object.", code="invalid_json")
        try:
            req = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            raise validation_error_to_api(exc) from None
        rec.update(requested_model=req.model, stream=req.stream)
        target = parse_model(req.model, self.router.names, self.pool.backends)
        if target is None:
            raise APIError(404, f"The model '{req.model}' does not exist. Use one of: "
                                f"{', '.join(self.model_names())}.",
                           code="model_not_found", param="model")
        rec["kind"] = target.kind
        text = req.routing_text()
        rec["prompt_hash"] = prompt_hash(text)

        prompt_tokens = estimate_prompt_tokens(payload["messages"])
        asked_out = req.max_tokens or req.max_completion_tokens
        max_out = asked_out or cfg.routing.reserve_output_tokens
        remaining = await self.keys.remaining(key)
        if remaining is not None and asked_out is None and cfg.keys.enforce_max_tokens:
            # bound the real cost by the reservation
            payload["max_tokens"] = cfg.routing.reserve_output_tokens

        plan = await self._plan(target, text, key, remaining, prompt_tokens, max_out, rec)
        rec.update(policy=plan.policy, lam=plan.lam, budget=plan.budget,
                   candidates=[c.as_dict() for c in (plan.scores or plan.candidates)])
        t_route = time.perf_counter()
        rec["routing_ms"] = round((t_route - t0) * 1000, 3)
        tries = 1 if target.kind == "passthrough" else 1 + cfg.routing.max_fallback_tries
        attempts: list[dict[str, Any]] = []
        rec["attempts"] = attempts
        upstream_s = 0.0
        last: BackendError | None = None
        budget_refused = 0
        todo = list(plan.candidates)
        for _ in range(tries):
            if not todo:
                break
            cand, pacing = await self._next_candidate(todo, prompt_tokens, max_out)
            backend = self.pool[cand.backend]
            hold = Hold(key, backend.max_cost(prompt_tokens, max_out), pacing)
            if not await self.keys.reserve(key, hold.amount):
                await self._release(Hold(key, 0.0, pacing))
                budget_refused += 1
                attempts.append({"model": backend.name, "error": "budget"})
                continue
            if attempts and attempts[-1].get("error") not in (None, "budget"):
                self.metrics.fallbacks.labels(attempts[-1]["model"], backend.name).inc()
            t_call = time.perf_counter()
            try:
                if req.stream:
                    result = await backend.open_stream(payload)
                else:
                    result = await backend.complete(payload)
            except BackendError as exc:
                upstream_s += time.perf_counter() - t_call
                await self._release(hold)
                attempts.append({"model": backend.name, "error": exc.kind,
                                 "status": exc.status, "message": exc.message[:300]})
                self.metrics.errors.labels(backend.name, exc.kind).inc()
                last = exc
                if not exc.retryable:
                    rec["model"] = backend.name
                    raise APIError(exc.status or 400, f"{backend.name}: {exc.message}",
                                   code="upstream_rejected") from None
                self.pool.fail(backend.name)
                continue
            self.pool.ok(backend.name)
            attempts.append({"model": backend.name, "error": None})
            rec["model"] = backend.name
            if plan.policy is not None and cand.score is not None:
                self.metrics.decisions.labels(plan.policy, backend.name).inc()
            if isinstance(result, StreamResult):
                return self._stream_response(result, rec, plan, cand, hold, t0, t_call,
                                             upstream_s)
            upstream_s += time.perf_counter() - t_call
            return self._json_response(result, rec, plan, cand, backend, hold, t0, upstream_s)
        # nothing answered
        if last is None and budget_refused:
            raise APIError(402, f"Budget of key '{key.name}' exhausted: no backend's call fits "
                                "the remaining budget.", code="budget_exceeded")
        if last is None:
            raise APIError(503, "No backend is available.", code="no_backend")
        status = 504 if last.kind == "timeout" else 502
        tried = "; ".join(
            f"{a['model']} ({a['error']}" + (f" {a['status']}" if a.get("status") else "")
            + (f": {a['message'][:120]}" if a.get("message") else "") + ")"
            for a in attempts)
        raise APIError(status, f"No backend could answer; tried {tried}.",
                       code="upstream_timeout" if status == 504 else "upstream_error")

    async def _plan(self, target: Target, text: str, key: KeyInfo, remaining: float | None,
                    prompt_tokens: int, max_out: int, rec: dict[str, Any]) -> RoutePlan:
        if target.kind == "passthrough":
            backend = self.pool[target.backend]
            if remaining is not None and backend.max_cost(prompt_tokens, max_out) > remaining:
                raise APIError(402, f"Budget of key '{key.name}' exhausted: {backend.name} "
                                    f"does not fit the remaining ${remaining:.6f}.",
                               code="budget_exceeded")
            return RoutePlan(None, None, None, [Candidate(backend.name)])
        served, lam, budget = self.router.resolve(target)
        names = self.pool.names()
        if remaining is not None:
            names = [n for n in names
                     if self.pool[n].max_cost(prompt_tokens, max_out) <= remaining]
            if not names:
                raise APIError(402, f"Budget of key '{key.name}' exhausted: no backend's call "
                                    f"fits the remaining ${remaining:.6f}.",
                               code="budget_exceeded")
        affordable = set(names)
        allowed = affordable & self.pool.available()
        if not allowed:  # everything cooling down: try anyway rather than refuse
            allowed = affordable
        t = time.perf_counter()
        if served.inline:
            x = self.router.embed(served, text)
        else:
            x = await self.router.aembed(served, text)
        if served.remote_state:  # the policy reads shared state (Redis): off the event loop
            plan = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.router.plan, served, x, lam, budget, allowed)
        else:
            plan = self.router.plan(served, x, lam, budget, allowed)
        self.metrics.routing.observe(time.perf_counter() - t)
        if not plan.candidates:
            raise APIError(503, "No backend is available for this policy.", code="no_backend")
        return plan

    async def _next_candidate(self, todo: list[Candidate], prompt_tokens: int, max_out: int
                              ) -> tuple[Candidate, Any]:
        """Pop the next backend to try: plan order, or the pacer's pick when pacing."""
        if self.pacer is None:
            return todo.pop(0), None
        est_out = self.cfg.routing.estimate_output_tokens
        cost = [c.cost if c.cost is not None else self.pool[c.backend].cost(prompt_tokens, est_out)
                for c in todo]
        reserve = [self.pool[c.backend].max_cost(prompt_tokens, max_out) for c in todo]
        idx, decision = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.pacer.pick, todo, cost, reserve)
        return todo.pop(idx), decision

    async def _settle(self, hold: Hold, actual: float) -> None:
        await self.keys.settle(hold.key, hold.amount, actual)
        if hold.pacing is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.pacer.commit, hold.pacing, actual)

    async def _release(self, hold: Hold) -> None:
        if hold.amount:
            await self.keys.release(hold.key, hold.amount)
        if hold.pacing is not None:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.pacer.release, hold.pacing)

    def _headers(self, rid: str, model: str, cost: float, **extra: str) -> dict[str, str]:
        return {"x-router-model": model, "x-router-request-id": rid,
                "x-router-cost": f"{cost:.10f}", **extra}

    def _router_info(self, rec: dict[str, Any], plan: RoutePlan, cost: float) -> dict[str, Any]:
        return {"model": rec["model"], "request_id": rec["request_id"], "cost": cost,
                "policy": plan.policy, "lam": plan.lam, "budget": plan.budget,
                "candidates": [c.as_dict() for c in plan.candidates],
                "attempts": rec["attempts"]}

    def _finish(self, rec: dict[str, Any], plan: RoutePlan, cand: Candidate, backend: str,
                cost: float, prompt_tokens: int, completion_tokens: int, extra: dict[str, Any],
                ) -> None:
        m = self.metrics
        m.spend.labels(backend).inc(cost)
        m.tokens.labels(backend, "prompt").inc(prompt_tokens)
        m.tokens.labels(backend, "completion").inc(completion_tokens)
        rec.update(status="ok", http_status=200, cost=cost, prompt_tokens=prompt_tokens,
                   completion_tokens=completion_tokens)
        if extra.get("usage_estimated"):
            rec["usage_estimated"] = True
        if extra.get("replay"):
            rec["replay"] = extra["replay"]
        m.requests.labels(rec["kind"], "200").inc()
        self.feedback_cache.put(rec["request_id"], FeedbackContext(
            plan.policy, cand.policy_model, backend, plan.embedding, cost))
        self.outcomes.submit(rec)
        grade = extra.get("grade")
        if grade is not None and self.cfg.replay.auto_feedback:
            self._spawn(self.feedback(rec["request_id"], float(grade), source="replay"))

    def _json_response(self, comp: Completion, rec: dict[str, Any], plan: RoutePlan,
                       cand: Candidate, backend: Backend, hold: Hold, t0: float,
                       upstream_s: float) -> Response:
        cost = comp.cost
        if hold.key.budget is not None or hold.pacing is not None:
            self._spawn(self._settle(hold, cost))
        body = comp.body
        info = self._router_info(rec, plan, cost)
        if comp.extra.get("replay"):
            info["replay"] = comp.extra["replay"]
        body["router"] = info
        total = time.perf_counter() - t0
        rec.update(latency_ms=round(total * 1000, 3), upstream_ms=round(upstream_s * 1000, 3),
                   overhead_ms=round((total - upstream_s) * 1000, 3))
        self.metrics.latency.labels(rec["kind"]).observe(total)
        self.metrics.upstream_latency.labels(backend.name).observe(upstream_s)
        self.metrics.overhead.observe(max(0.0, total - upstream_s))
        self._finish(rec, plan, cand, backend.name, cost, comp.prompt_tokens,
                     comp.completion_tokens, comp.extra)
        headers = self._headers(rec["request_id"], backend.name, cost)
        if comp.extra.get("replay"):
            headers["x-router-replay-match"] = str(comp.extra["replay"].get("match"))
        return Response(jdumps(body), media_type="application/json", headers=headers)

    def _stream_response(self, sr: StreamResult, rec: dict[str, Any], plan: RoutePlan,
                         cand: Candidate, hold: Hold, t0: float, t_call: float,
                         upstream_before: float) -> StreamingResponse:
        backend = sr.backend
        est_cost = cand.cost if cand.cost is not None else backend.cost(
            sr.meter.prompt_estimate, self.cfg.routing.estimate_output_tokens)
        rec["ttfb_ms"] = round((time.perf_counter() - t0) * 1000, 3)

        async def body():
            done = False
            try:
                async for chunk in sr.chunks():
                    yield chunk
                done = True
                cost = sr.cost
                info = {"model": backend.name, "request_id": rec["request_id"], "cost": cost,
                        "usage_estimated": sr.meter.estimated}
                if sr.extra.get("replay"):
                    info["replay"] = sr.extra["replay"]
                yield b": x-router " + jdumps(info) + b"\n\n"
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
                self.metrics.latency.labels("stream").observe(total)
                if hold.key.budget is not None or hold.pacing is not None:
                    self._spawn(self._settle(hold, cost))
                self._finish(rec, plan, cand, backend.name, cost, p, c, sr.extra)

        headers = self._headers(rec["request_id"], backend.name, est_cost,
                                **{"x-router-cost-estimated": "true", "cache-control": "no-cache"})
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    # ---- feedback --------------------------------------------------------------------
    async def feedback(self, request_id: str, reward: float, source: str = "api"
                       ) -> FeedbackResponse:
        ctx = await self._claim_feedback(request_id)
        if ctx is None:
            raise APIError(404, f"Unknown request_id '{request_id}' (too old, or served by "
                                "another replica).", code="request_not_found",
                           param="request_id")
        if ctx is False:
            raise APIError(409, f"Feedback for '{request_id}' was already given.",
                           code="duplicate_feedback", param="request_id")
        assert isinstance(ctx, FeedbackContext)
        updated = False
        served = self.router.policies.get(ctx.policy) if ctx.policy else None
        if (served is not None and served.online and ctx.embedding is not None
                and ctx.policy_model is not None):
            await asyncio.get_running_loop().run_in_executor(
                self.executor, served.update, ctx.embedding, ctx.policy_model, reward, ctx.cost)
            updated = True
        self.outcomes.submit({"event": "feedback", "request_id": request_id, "reward": reward,
                              "ts": time.time(), "source": source, "updated": updated})
        if self.outcomes.ack:  # state.sync_outcomes: the feedback event is stored first too
            await self.outcomes.stored(request_id)
        self.metrics.feedback.labels(source, str(updated).lower()).inc()
        return FeedbackResponse(request_id=request_id, reward=reward, model=ctx.backend,
                                updated=updated)

    async def _claim_feedback(self, request_id: str) -> FeedbackContext | None | bool:
        """Claim the request's context; shared (Redis): from any replica, exactly once.

        Another replica writes its contexts with its outcome batches, so an id not found
        yet is looked up again for one flush interval (plus margin) before giving up.
        """
        cache = self.feedback_cache
        if cache.shared is None:
            return cache.claim(request_id)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.cfg.state.flush_interval_seconds + 0.5
        while True:
            ctx = await loop.run_in_executor(self.executor, cache.claim, request_id)
            if ctx is not None or time.monotonic() >= deadline:
                return ctx
            await asyncio.sleep(0.05)

    # ---- status ----------------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        store = self.outcome_store
        return {
            "status": "ready" if self.ready else "starting",
            "policies": {n: s.policy.name for n, s in self.router.policies.items()},
            "default_policy": self.router.default,
            "backends": len(self.pool.backends),
            "cooldowns": self.pool.cooldowns(),
            "state": {
                "outcomes": "redis" if self.cfg.state.redis_url else "sqlite",
                "outcome_store_healthy": bool(getattr(store, "healthy", True)),
                "outcome_queue": self.outcomes.queued,
                "outcome_buffered": store.pending(),
                "keys_store_healthy": bool(getattr(self.key_store, "healthy", True)),
                "bandit_store_healthy": all(getattr(b, "healthy", True)
                                            for b in self.bandit_stores),
                "pacing_healthy": None if self.pacer is None else self.pacer.healthy,
                "writer_alive": self.outcomes.alive,
            },
        }


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


async def read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise APIError(413, f"Request body of {cl} bytes exceeds the limit of {limit} bytes.",
                       code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"Request body exceeds the limit of {limit} bytes.",
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers or None)


def create_app(cfg: GatewayConfig, **gateway_kwargs: Any) -> FastAPI:
    """The FastAPI app; ``gateway_kwargs`` go to :class:`Gateway` (e.g. ``artifact``)."""
    gw = gateway_kwargs.pop("gateway", None) or Gateway(cfg, **gateway_kwargs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(title="costroute gateway", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.gateway = gw
    err_responses = {s: {"model": ErrorResponse} for s in (400, 401, 402, 404, 413, 429, 502,
                                                           504)}

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = {404: f"Unknown path {request.url.path}", 405: "Method not allowed"}.get(
            exc.status_code, str(exc.detail))
        return _error_response(APIError(exc.status_code, msg, code=(
            "not_found" if exc.status_code == 404 else None)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error_response(APIError(400, f"{param}: {first['msg']}", param=param,
                                        code="invalid_parameter"))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error_response(APIError(500, "Internal error in the gateway.",
                                        code="internal_error"))

    chat_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": ChatCompletionRequest.model_json_schema()}}}}

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses=err_responses, openapi_extra=chat_schema)
    @app.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request) -> Response:
        return await gw.chat(request)

    @app.post("/v1/feedback", response_model=FeedbackResponse, responses=err_responses,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": FeedbackRequest.model_json_schema()}}}})
    async def feedback(request: Request) -> FeedbackResponse:
        gw.keys.authenticate(request.headers)
        raw = await read_body(request, 64 * 1024)
        try:
            fb = FeedbackRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error_to_api(exc) from None
        return await gw.feedback(fb.request_id, fb.reward)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        created = int(gw.started_at)
        return ModelList(data=[ModelCard(id=n, created=created) for n in gw.model_names()])

    @app.get("/v1/router/usage")
    async def usage(request: Request) -> dict[str, Any]:
        """The calling key's spend and limits."""
        key = gw.keys.authenticate(request.headers)
        spent, reserved = await gw.key_store.ausage(key.hash)
        return {"key": key.name, "budget_usd": key.budget, "spent_usd": spent,
                "reserved_usd": reserved, "rpm": key.rpm}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        info = gw.readiness()
        return JSONResponse(info, status_code=200 if gw.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        m = gw.metrics
        m.outcome_queue.set(gw.outcomes.queued)
        m.outcome_buffered.set(gw.outcome_store.pending())
        cooling = gw.pool.cooldowns()
        for name in gw.pool.names():
            m.cooldown.labels(name).set(1.0 if name in cooling else 0.0)
        return Response(m.render(), media_type=m.content_type)

    return app

