"""Backend calls: litellm for any provider, a pooled-HTTP fast path for OpenAI-compatible ones.

Each backend of ``model_list`` becomes a :class:`Backend` with the same two calls,
:meth:`Backend.complete` (a JSON body) and :meth:`Backend.open_stream` (SSE bytes), the
same error type (:class:`BackendError`, telling whether another backend may be tried) and
per-token prices resolved once at start (config override, else litellm's price table, else
the model catalogue).

Why two paths: a call through ``litellm.acompletion`` costs the gateway about 4 ms of CPU
(benchmarks/bench_gateway.py: 4.6 ms per request against 0.47 ms on the fast path), more
than the whole added-latency target under load. Backends written ``openai/<model>`` with an
``api_base`` speak the OpenAI wire format, so they are called directly through one shared
keep-alive pool
(:mod:`router.proxy.http_pool`: ``aiohttp`` by default, or ``httpx``) and their SSE bytes
are passed through unchanged. ``routing.fast_path: false`` (or ``fast_path: false`` on one
backend) sends them through litellm as well.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from router.proxy.config import GatewayConfig, ModelEntry
from router.proxy.http_pool import PoolError
from router.proxy.wire import (
    SSEMeter,
    estimate_prompt_tokens,
    estimate_tokens_chars,
    jdumps,
    jloads,
)

log = logging.getLogger("costroute.gateway")


class BackendError(Exception):
    """A failed backend call.

    ``retryable``: the next candidate may be tried (timeout, connection, 429, 5xx, bad
    response, auth); ``False`` for the client's own mistakes (400-class answers), which are
    returned to the client as they are.
    """

    def __init__(
        self, backend: str, kind: str, message: str, status: int | None = None,
        retryable: bool = True, body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{backend}: {kind}: {message}")
        self.backend = backend
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.message = message
        self.body = body


@dataclass
class Completion:
    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    cost: float
    extra: dict[str, Any] = field(default_factory=dict)


class StreamResult:
    """An open SSE stream: iterate :meth:`chunks`; usage/cost are known once it ends."""

    def __init__(self, chunks: AsyncIterator[bytes], meter: SSEMeter, backend: Backend,
                 closer=None) -> None:
        self._chunks = chunks
        self.meter = meter
        self.backend = backend
        self._closer = closer
        self.error: str | None = None
        self.extra: dict[str, Any] = {}
        #: a per-call cost known in advance (replay backends); else priced from the usage
        self.fixed_cost: float | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                self.meter.feed(chunk)
                yield chunk
        except Exception as exc:  # the upstream broke off mid-stream
            self.error = f"stream broken: {type(exc).__name__}: {exc}"
            log.warning("%s: %s", self.backend.name, self.error)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            await closer()

    @property
    def usage(self) -> tuple[int, int]:
        return self.meter.usage()

    @property
    def cost(self) -> float:
        if self.fixed_cost is not None:
            return self.fixed_cost
        p, c = self.usage
        return self.backend.cost(p, c)


# ---- prices -------------------------------------------------------------------------


def litellm_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token from litellm's bundled price table, if it knows the model."""
    import litellm

    names = [model, model.split("/", 1)[-1]]
    for name in names:
        info = litellm.model_cost.get(name)
        if info and info.get("input_cost_per_token") is not None:
            return float(info["input_cost_per_token"]), float(info.get("output_cost_per_token") or 0)
    return None


def catalogue_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token from router.catalogue, when that module is present."""
    try:
        from router.catalogue import ModelCatalogue
    except ImportError:
        return None
    try:
        p_in, p_out = ModelCatalogue.load().price(model)
    except Exception:  # unknown model or unreadable catalogue
        return None
    return float(p_in) / 1e6, float(p_out) / 1e6


def resolve_price(entry: ModelEntry) -> tuple[float, float, str]:
    """Per-token prices of a backend and where they came from."""
    lp = entry.litellm_params
    if lp.input_cost_per_token is not None or lp.output_cost_per_token is not None:
        return float(lp.input_cost_per_token or 0), float(lp.output_cost_per_token or 0), "config"
    if entry.price is not None:
        return entry.price.input_per_1m / 1e6, entry.price.output_per_1m / 1e6, "config"
    for source, fn in (("litellm", litellm_price), ("catalogue", catalogue_price)):
        for name in (lp.model, entry.model_name):
            found = fn(name)
            if found is not None:
                return found[0], found[1], source
    return 0.0, 0.0, "unknown"


# ---- backends -----------------------------------------------------------------------


class Backend:
    """One entry of ``model_list``; subclasses implement the two calls."""

    kind = "base"

    def __init__(self, entry: ModelEntry, timeout: float,
                 price: tuple[float, float, str] | None = None) -> None:
        self.entry = entry
        self.name = entry.model_name
        self.timeout = timeout
        self.price_in, self.price_out, self.price_source = price or resolve_price(entry)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.price_in + completion_tokens * self.price_out

    def max_cost(self, prompt_tokens: int, max_output_tokens: int) -> float:
        """An upper bound of one call's cost, used to reserve budget before the call."""
        return self.cost(prompt_tokens, max_output_tokens)

    async def complete(self, payload: dict[str, Any]) -> Completion:
        raise NotImplementedError

    async def open_stream(self, payload: dict[str, Any]) -> StreamResult:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "model": self.entry.litellm_params.model,
                "timeout": self.timeout, "price_in_per_1m": self.price_in * 1e6,
                "price_out_per_1m": self.price_out * 1e6, "price_source": self.price_source}

    def _usage_cost(self, body: dict[str, Any], payload: dict[str, Any]) -> Completion:
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            p = int(usage.get("prompt_tokens") or 0)
            c = int(usage.get("completion_tokens") or 0)
            estimated = False
        else:
            p = estimate_prompt_tokens(payload.get("messages") or [])
            text = ""
            for ch in body.get("choices") or ():
                msg = ch.get("message") or {}
                if isinstance(msg.get("content"), str):
                    text += msg["content"]
            c = estimate_tokens_chars(len(text))
            estimated = True
        comp = Completion(body, p, c, self.cost(p, c))
        if estimated:
            comp.extra["usage_estimated"] = True
        return comp


def _status_error(name: str, status: int, content: bytes) -> BackendError:
    try:
        body = jloads(content)
        msg = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except ValueError:
        body, msg = None, None
    msg = msg or content[:200].decode(errors="replace") or f"HTTP {status}"
    client_fault = status in (400, 413, 422)
    return BackendError(name, "client" if client_fault else "status", msg, status=status,
                        retryable=not client_fault, body=body if isinstance(body, dict) else None)


class FastBackend(Backend):
    """Fast path: POST the OpenAI request to ``api_base`` through the shared pooled client."""

    def __init__(self, entry: ModelEntry, timeout: float, pool: Any,
                 price: tuple[float, float, str] | None = None) -> None:
        super().__init__(entry, timeout, price)
        lp = entry.litellm_params
        self.url = f"{lp.api_base}/chat/completions"
        self.upstream_model = lp.upstream_model
        self.pool = pool
        self.kind = pool.name
        self.headers = {"content-type": "application/json"}
        if lp.api_key:
            self.headers["authorization"] = f"Bearer {lp.api_key}"

    def _body(self, payload: dict[str, Any]) -> bytes:
        return jdumps({**payload, "model": self.upstream_model})

    def _pool_error(self, exc: PoolError) -> BackendError:
        return BackendError(self.name, exc.kind, exc.message,
                            status=504 if exc.kind == "timeout" else None)

    async def complete(self, payload: dict[str, Any]) -> Completion:
        try:
            status, content = await self.pool.post(self.url, self._body(payload), self.headers,
                                                   self.timeout)
        except PoolError as exc:
            raise self._pool_error(exc) from exc
        if status != 200:
            raise _status_error(self.name, status, content)
        try:
            body = jloads(content)
        except ValueError as exc:
            raise BackendError(self.name, "bad_response", "upstream answered invalid JSON") from exc
        if not isinstance(body, dict) or "choices" not in body:
            raise BackendError(self.name, "bad_response", "upstream answer has no 'choices'")
        return self._usage_cost(body, payload)

    async def open_stream(self, payload: dict[str, Any]) -> StreamResult:
        try:
            status, chunks, closer = await self.pool.stream(
                self.url, self._body(payload), self.headers, self.timeout)
        except PoolError as exc:
            raise self._pool_error(exc) from exc
        if status != 200:
            raise _status_error(self.name, status, chunks)  # chunks holds the error body
        from router.proxy.sse import normalise_stream

        meter = SSEMeter(estimate_prompt_tokens(payload.get("messages") or []))
        usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        return StreamResult(normalise_stream(chunks, self.name, meter, usage), meter, self,
                            closer)


class LiteLLMBackend(Backend):
    """Any provider litellm supports, through ``litellm.acompletion``."""

    kind = "litellm"

    def __init__(self, entry: ModelEntry, timeout: float,
                 price: tuple[float, float, str] | None = None) -> None:
        super().__init__(entry, timeout, price)
        import litellm  # import cost paid at start, not on the first request

        litellm.suppress_debug_info = True

        lp = entry.litellm_params
        self.params: dict[str, Any] = {"model": lp.model, **lp.extra_params()}
        if lp.api_base:
            self.params["api_base"] = lp.api_base
        if lp.api_key:
            self.params["api_key"] = lp.api_key

    def _kwargs(self, payload: dict[str, Any]) -> dict[str, Any]:
        kw = {k: v for k, v in payload.items() if k != "model"}
        kw.update(self.params)
        kw["timeout"] = self.timeout
        kw["num_retries"] = 0  # our fallback logic retries, not litellm
        kw["max_retries"] = 0  # nor the provider SDK inside litellm
        return kw

    def _error(self, exc: Exception) -> BackendError:
        import litellm

        status = getattr(exc, "status_code", None)
        if isinstance(exc, litellm.Timeout | TimeoutError):
            return BackendError(self.name, "timeout", f"no answer within {self.timeout:g}s",
                                status=504)
        if isinstance(exc, litellm.BadRequestError) and not isinstance(
            exc, litellm.NotFoundError
        ):
            return BackendError(self.name, "client", str(exc), status=400, retryable=False)
        if isinstance(exc, litellm.APIConnectionError):
            return BackendError(self.name, "connect", str(exc))
        return BackendError(self.name, "status", str(exc),
                            status=status if isinstance(status, int) else 502)

    async def complete(self, payload: dict[str, Any]) -> Completion:
        import litellm

        try:
            async with asyncio.timeout(self.timeout):
                resp = await litellm.acompletion(**self._kwargs(payload))
        except Exception as exc:  # litellm raises its own typed exceptions
            raise self._error(exc) from exc
        body = resp.model_dump() if hasattr(resp, "model_dump") else dict(resp)
        return self._usage_cost(body, payload)

    async def open_stream(self, payload: dict[str, Any]) -> StreamResult:
        import litellm

        kw = self._kwargs(payload)
        kw["stream"] = True
        try:
            async with asyncio.timeout(self.timeout):
                resp = await litellm.acompletion(**kw)
                it = resp.__aiter__()
                first = await it.__anext__()
        except StopAsyncIteration:
            first, it = None, None
        except Exception as exc:
            raise self._error(exc) from exc

        async def gen() -> AsyncIterator[bytes]:
            if first is not None:
                yield _sse(first)
            if it is not None:
                try:
                    async for chunk in it:
                        yield _sse(chunk)
                except Exception as exc:  # a provider error mid-stream ends the stream
                    log.warning("%s: stream ended by %s", self.name, exc)
            yield b"data: [DONE]\n\n"

        meter = SSEMeter(estimate_prompt_tokens(payload.get("messages") or []))
        return StreamResult(gen(), meter, self)


def _sse(chunk: Any) -> bytes:
    data = chunk.model_dump(exclude_none=True) if hasattr(chunk, "model_dump") else chunk
    return b"data: " + jdumps(data) + b"\n\n"


def is_fast_path_capable(entry: ModelEntry) -> bool:
    lp = entry.litellm_params
    return lp.model.startswith("openai/") and bool(lp.api_base)


def make_backend(entry: ModelEntry, cfg: GatewayConfig, pool: Any, replay: Any = None
                 ) -> Backend:
    """The right :class:`Backend` for one ``model_list`` entry."""
    timeout = cfg.timeout_for(entry)
    lp = entry.litellm_params
    if lp.provider == "replay":
        if replay is None:
            raise ValueError(f"{entry.model_name}: replay backend without a replay dataset")
        return replay.backend(entry, timeout)
    fast = cfg.routing.fast_path if entry.fast_path is None else entry.fast_path
    if fast and is_fast_path_capable(entry):
        return FastBackend(entry, timeout, pool)
    if entry.fast_path and not is_fast_path_capable(entry):
        raise ValueError(
            f"{entry.model_name}: fast_path needs an 'openai/...' model with an api_base"
        )
    return LiteLLMBackend(entry, timeout)


class BackendPool:
    """All backends plus their cooldowns (a failing backend is skipped for a while)."""

    def __init__(self, backends: dict[str, Backend], cooldown_seconds: float,
                 allowed_fails: int = 0) -> None:
        self.backends = backends
        self.cooldown_seconds = cooldown_seconds
        #: failures in a row tolerated before a backend cools down
        self.allowed_fails = allowed_fails
        self._until: dict[str, float] = {}
        self._fails: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.backends

    def __getitem__(self, name: str) -> Backend:
        return self.backends[name]

    def names(self) -> list[str]:
        return list(self.backends)

    def cooling(self, name: str) -> bool:
        until = self._until.get(name)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._until[name]
            return False
        return True

    def available(self) -> set[str]:
        return {n for n in self.backends if not self.cooling(n)}

    def fail(self, name: str) -> None:
        fails = self._fails.get(name, 0) + 1
        if fails <= self.allowed_fails:
            self._fails[name] = fails
            return
        self._fails.pop(name, None)
        if self.cooldown_seconds > 0:
            self._until[name] = time.monotonic() + self.cooldown_seconds

    def ok(self, name: str) -> None:
        self._until.pop(name, None)
        self._fails.pop(name, None)

    def cooldowns(self) -> dict[str, float]:
        now = time.monotonic()
        return {n: round(t - now, 3) for n, t in self._until.items() if t > now}

    async def aclose(self) -> None:
        for b in self.backends.values():
            await b.aclose()
