"""The OpenAI-compatible gateway: the :class:`Gateway` wiring and the FastAPI routes.

A ``POST /v1/chat/completions`` request goes through one module per step:

1. router.proxy.parsing: authenticate the key (sha256 lookup, rate limit), read the body
   (size-capped), validate it, resolve ``model`` (router-auto / router-<policy>[-<lam>] / a
   backend name) -> :class:`ChatCall`;
2. router.proxy.planning: keep the backends that fit the key's budget and are not cooling
   down, embed the prompt, let the policy order them -> :class:`RoutePlan`;
3. router.proxy.execution: call the candidates in order with fallbacks, each call's
   worst-case cost held on the key's spend (router.proxy.spend) and settled afterwards;
   ``router-cascade[-<lam>]`` goes to router.proxy.cascade instead (stages of concurrent
   calls, escalation on disagreement, automatic rewards for the served bandits);
4. router.proxy.responses: the answer (body plus ``router``, or the SSE bytes plus one
   ``: x-router {...}`` comment line), the ``x-router-*`` headers and the one outcome record
   per request (router.proxy.outcomes, written by a background writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from policies.base import Policy, PolicyError
from router.ops.live import LiveWindow
from router.proxy.backends import BackendPool, make_backend
from router.proxy.cascade import CascadeExecutor
from router.proxy.config import ConfigError, GatewayConfig
from router.proxy.execution import SingleCallExecutor
from router.proxy.feedback import FeedbackDesk
from router.proxy.guard import AuthGate, GatewayApp, openapi_schema, request_body
from router.proxy.keys import KeyManager
from router.proxy.loading import load_policies
from router.proxy.metrics import Metrics
from router.proxy.outcomes import FeedbackCache, OutcomeLogger
from router.proxy.parsing import parse_chat, read_body
from router.proxy.planning import Planner
from router.proxy.responses import Responder
from router.proxy.routing import AUTO, Router, ServedPolicy, price_policy
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
from router.proxy.spend import Spend
from router.proxy.ui import add_ui_routes

__all__ = ["Gateway", "create_app", "load_policies", "read_body"]

log = logging.getLogger("costroute.gateway")


def new_request_id() -> str:
    return "cr-" + os.urandom(12).hex()


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
        self.pool = BackendPool(backends, cfg.routing.cooldown_seconds,
                                cfg.routing.allowed_fails)
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
                served[name] = ServedPolicy(
                    name, pol, enc, r.model_map, set(backends),
                    exploration_share=r.exploration_shares.get(name, r.exploration_share))
                served[name].check()  # loads the encoder: a mismatch fails at start
            except (PolicyError, ValueError) as exc:
                raise ConfigError(f"routing: {exc}") from None
            served[name].batch_max = r.batch_max
            served[name].batch_wait_ms = r.batch_wait_ms
            if served[name].unmapped():
                log.warning("policy %s: models without a backend are never chosen: %s", name,
                            served[name].unmapped())
        unknown = sorted(set(r.exploration_shares) - set(served))
        if unknown:
            raise ConfigError(f"routing.exploration_shares: unknown policy name(s) {unknown}; "
                              f"served policies: {sorted(served)}")
        self.router = Router(served, default_policy, lam=r.lam, budget=r.budget,
                             fallback=r.fallback, cache_size=r.embedding_cache_size)

        if self.replay is not None and default_policy is not None:
            self._share_encoder(self.replay, served[default_policy])

        # state
        from router.state import configure_redis_pool
        from router.state.keys_store import LocalKeyStore, RedisKeyStore
        from router.state.outcome_store import open_outcome_store

        configure_redis_pool(cfg.state.redis_max_connections)

        self.outcome_store = open_outcome_store(state_dir, cfg.state.redis_url,
                                                cfg.state.outcome_stream)
        self.key_store = (RedisKeyStore(cfg.state.redis_url, state_dir=state_dir)
                          if cfg.state.redis_url else LocalKeyStore(state_dir))
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
        self.live = LiveWindow()  # the last hour, for GET /ui
        self.outcomes.tap = self.live.add
        self.pacer = None
        if r.global_budget is not None:
            from router.proxy.pacing import Pacer

            try:
                self.pacer = Pacer(r.global_budget, state_dir, cfg.state.redis_url)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="route")
        self._tasks: set[asyncio.Task] = set()
        # the request's steps (see the module docstring)
        self.planner = Planner(self.router, self.pool, self.metrics, self.executor)
        self._draining: set[asyncio.Task] = set()  # settles and releases: awaited at stop
        self.spend = Spend(self.keys, self.pacer, self.pool, self.executor, self._spawn_drained,
                           r.estimate_output_tokens)
        if cfg.state.redis_url:
            # with sync_outcomes, key settles are stored with their outcome records in one
            # atomic step (the answer waits for that write anyway); without it they are
            # charged at once. What an earlier life buffered is charged as spend only.
            self.outcome_store.adopt_earlier_life()
            self.outcome_store.primary.settle_with_records(
                *self.key_store.settle_target(), on_settled=self.key_store.settled)
            self.spend.with_records = cfg.state.sync_outcomes
        self.responder = Responder(self)
        self.single = SingleCallExecutor(self)
        self.cascade = CascadeExecutor(self)
        self.desk = FeedbackDesk(self)
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
        if self._draining:  # money held or spent: settle it rather than cancel it
            _, late = await asyncio.wait(list(self._draining), timeout=10.0)
            for t in late:
                t.cancel()
        with contextlib.suppress(Exception):
            await self.desk.retry()
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

    def _spawn(self, coro, into: set[asyncio.Task] | None = None) -> asyncio.Task:
        """A background task, kept in ``into`` (default: the tasks :meth:`stop` cancels)."""
        tasks = self._tasks if into is None else into
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def _spawn_drained(self, coro) -> asyncio.Task:
        """Like :meth:`_spawn`, but :meth:`stop` waits for it (spend settles, releases)."""
        return self._spawn(coro, self._draining)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            try:
                await loop.run_in_executor(self.executor, self.key_store.persist, self.keys.names)
                await self.key_store.aflush()  # spend journaled during a Redis outage
            except Exception:
                log.exception("persisting key spend failed")
            try:
                await self.desk.retry()  # feedback deferred during a Redis outage
            except Exception:
                log.exception("retrying deferred feedback failed")

    # ---- model names -------------------------------------------------------------------
    def model_names(self) -> list[str]:
        names = [AUTO] + [f"router-{n}" for n in self.router.policies]
        return names + self.pool.names()

    # ---- chat ------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        t0 = time.perf_counter()
        rid = new_request_id()
        rec: dict[str, Any] = {"event": "outcome", "request_id": rid, "ts": time.time()}
        # state.sync_outcomes: collect this request's settles to wait for them
        settles = self.spend.track_settles() if self.outcomes.ack else None
        self.spend.bind(rec)
        try:
            response = await self._chat(request, rid, rec, t0)
            if self.outcomes.ack:  # state.sync_outcomes: answer once the record is stored
                await self.spend.settled(settles or [])  # and the call's cost charged
                await self.outcomes.stored(rid)
            return response
        except asyncio.CancelledError:  # the record may not have been handed over
            self.spend.settle_unrecorded(rec)
            raise
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
        call = await parse_chat(self, request, rec)
        if self.cascade.serves(call.target):
            return await self.cascade.run(call, rec, t0)
        plan = await self.planner.plan(call)
        rec.update(policy=plan.policy, lam=plan.lam, budget=plan.budget,
                   candidates=[c.as_dict() for c in (plan.scores or plan.candidates)],
                   **plan.record())
        rec["routing_ms"] = _ms(t0)
        return await self.single.run(call, plan, rec, t0)

    # ---- feedback --------------------------------------------------------------------
    async def feedback(self, request_id: str, reward: float, source: str = "api"
                       ) -> FeedbackResponse:
        """Feedback for a request served by any replica (router.proxy.feedback)."""
        return await self.desk.give(request_id, reward, source)

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

    app = GatewayApp(title="costroute gateway", version="0.1.0", lifespan=lifespan,
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

    body_defs: dict[str, Any] = {}  # nested request models, for components/schemas
    chat_schema = request_body(ChatCompletionRequest, body_defs)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses=err_responses, openapi_extra=chat_schema)
    @app.post("/chat/completions", include_in_schema=False)
    async def chat_completions(request: Request) -> Response:
        return await gw.chat(request)

    fb_responses = {**err_responses, 202: {
        "model": FeedbackResponse, "description": "Not known here yet (during or just after "
        "a Redis outage): kept, and applied once the request's context is found"}}

    @app.post("/v1/feedback", response_model=FeedbackResponse, responses=fb_responses,
              openapi_extra=request_body(FeedbackRequest, body_defs))
    async def feedback(request: Request) -> Response:
        gw.keys.authenticate(request.headers)
        raw = await read_body(request, 64 * 1024)
        try:
            fb = FeedbackRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise validation_error_to_api(exc) from None
        out = await gw.feedback(fb.request_id, fb.reward)
        return JSONResponse(out.model_dump(), status_code=202 if out.queued else 200)

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

    app.openapi = lambda: openapi_schema(app, body_defs)  # every $ref resolves
    add_ui_routes(app, gw)
    app.add_middleware(AuthGate, keys=gw.keys)
    app.chat_lane(gw.keys, gw.chat, _error_response)  # the chat route without the stack
    return app

