"""A local OpenAI-compatible upstream for tests and benchmarks (no network, no model).

It answers ``POST /v1/chat/completions`` (plain or SSE streaming) for any model name with a
deterministic answer and a usage block, as a plain ASGI app on uvicorn (no framework, so it
is cheap enough to be the baseline of the gateway benchmark). Behaviour is set per model at
start or at run time through ``POST /_control``::

    {"model": "m1" | "*", "latency_ms": 20, "fail": "500" | "429" | "400" | "401" |
     "timeout" | "bad_json" | null, "fail_times": 3, "completion_tokens": 16,
     "stream_chunks": 4, "chunk_delay_ms": 0, "stream_as": "sse" | "json" | "html" |
     "empty" | "sse-unterminated"}

``fail_times`` bounds how many calls fail before the model recovers (-1: for ever);
``fail_rate`` makes only that share of calls fail (seeded, so runs repeat);
``timeout`` holds the call ``hang_seconds`` (default 30) before answering. ``GET /_stats``
counts calls per model, ``POST /_reset`` clears knobs and counters.

Scripted models (in-process only): :meth:`Upstream.script` gives a model a function
``answer(prompt_text) -> str``; its replies are that text, with ``completion_tokens`` from
the answer's length (4 characters a token), so scripted models play real models with
their own answers and costs (a judge is a scripted model too). ``prompt_calls`` counts
calls per ``(model, prompt text)``.

Run it alone: ``python -m tests.upstream --port 9100 --latency-ms 10``; in tests use
:class:`UpstreamServer` (a uvicorn server in a thread on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FAIL_MODES = ("500", "503", "429", "400", "401", "timeout", "bad_json")


@dataclass
class Knobs:
    latency_ms: float = 0.0
    fail: str | None = None
    fail_times: int = -1
    #: share of calls that fail (in ``fail`` mode), drawn from a seeded generator; 1 = all
    fail_rate: float = 1.0
    completion_tokens: int = 16
    stream_chunks: int = 4
    chunk_delay_ms: float = 0.0
    hang_seconds: float = 30.0
    #: how a stream request is answered: sse; json (ignores "stream": true); html; empty;
    #: sse-unterminated (the last event lacks its closing blank line)
    stream_as: str = "sse"


class Upstream:
    """The ASGI app and its mutable state."""

    def __init__(self, defaults: Knobs | None = None) -> None:
        self.defaults = defaults or Knobs()
        self.per_model: dict[str, Knobs] = {}
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.rng = random.Random(0)  # fail_rate draws
        self.scripts: dict[str, Any] = {}
        self.prompt_calls: Counter[tuple[str, str]] = Counter()

    # ---- state ----------------------------------------------------------------------
    def knobs(self, model: str) -> Knobs:
        return self.per_model.get(model, self.defaults)

    def set_knobs(self, model: str, **values: Any) -> None:
        with self.lock:
            # fail_times counts from now on
            if model == "*":
                self.defaults = Knobs(**{**asdict(self.defaults), **values})
                for name, k in list(self.per_model.items()):
                    self.per_model[name] = Knobs(**{**asdict(k), **values})
                self.failures.clear()
            else:
                base = self.per_model.get(model, self.defaults)
                self.per_model[model] = Knobs(**{**asdict(base), **values})
                self.failures.pop(model, None)

    def reset(self) -> None:
        with self.lock:
            self.defaults = Knobs()
            self.per_model.clear()
            self.calls.clear()
            self.failures.clear()
            self.prompt_calls.clear()

    def script(self, model: str, answer: Any) -> None:
        """Answer ``model``'s calls with ``answer(prompt_text)`` (None: the default reply)."""
        with self.lock:
            if answer is None:
                self.scripts.pop(model, None)
            else:
                self.scripts[model] = answer

    def _should_fail(self, model: str, knobs: Knobs) -> str | None:
        if knobs.fail is None:
            return None
        with self.lock:
            if knobs.fail_times >= 0 and self.failures[model] >= knobs.fail_times:
                return None
            if knobs.fail_rate < 1.0 and self.rng.random() >= knobs.fail_rate:
                return None
            self.failures[model] += 1
        return knobs.fail

    # ---- ASGI -----------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            await self._chat(body, send)
        elif method == "GET" and path in ("/v1/models", "/models"):
            await _json(send, 200, {"object": "list", "data": []})
        elif method == "POST" and path == "/_control":
            req = json.loads(body or b"{}")
            model = req.pop("model", "*")
            self.set_knobs(model, **req)
            await _json(send, 200, {"ok": True})
        elif method == "POST" and path == "/_reset":
            self.reset()
            await _json(send, 200, {"ok": True})
        elif method == "GET" and path == "/_stats":
            await _json(send, 200, {"calls": dict(self.calls), "failures": dict(self.failures)})
        else:
            await _json(send, 404, {"error": {"message": "not found", "type": "not_found"}})

    async def _chat(self, body: bytes, send) -> None:
        try:
            req = json.loads(body)
            model = str(req["model"])
            messages = req["messages"]
        except (ValueError, KeyError, TypeError):
            await _json(send, 400, _err("bad request body", "invalid_request_error"))
            return
        knobs = self.knobs(model)
        with self.lock:
            self.calls[model] += 1
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)
        fail = self._should_fail(model, knobs)
        if fail == "timeout":
            await asyncio.sleep(knobs.hang_seconds)
        elif fail == "bad_json":
            await _raw(send, 200, b"{not json", b"application/json")
            return
        elif fail is not None:
            await _json(send, int(fail), _err(f"upstream failure {fail}", "server_error"))
            return
        text_in = " ".join(
            c if isinstance(c, str) else json.dumps(c)
            for c in (m.get("content") or "" for m in messages if isinstance(m, dict))
        )
        with self.lock:
            self.prompt_calls[(model, text_in)] += 1
            scripted = self.scripts.get(model)
            if scripted is None and "*" in self.scripts:  # every model: the text of --answer
                scripted = lambda _t, f=self.scripts["*"]: f(_t).replace("{model}", model)  # noqa: E731
        prompt_tokens = max(1, len(text_in) // 4)
        n_out = int(req.get("max_tokens") or req.get("max_completion_tokens") or 10**9)
        if scripted is not None:
            answer = str(scripted(text_in))
            out_tokens = min(max(1, (len(answer) + 3) // 4), n_out)
        else:
            out_tokens = min(knobs.completion_tokens, n_out)
            answer = f"[{model}] reply to: {text_in[:40]}"
        created = int(time.time())
        cid = f"chatcmpl-up{created}{self.calls[model]}"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                 "total_tokens": prompt_tokens + out_tokens}
        if req.get("stream") and knobs.stream_as in ("html", "empty"):
            body = b"<html><body>Bad gateway</body></html>" if knobs.stream_as == "html" else b""
            await _raw(send, 200, body, b"text/html" if body else b"text/event-stream")
            return
        if not req.get("stream") or knobs.stream_as == "json":
            await _json(send, 200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}],
                "usage": usage,
            })
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        pieces = _split(answer, max(1, knobs.stream_chunks))
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}]}]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p},
                                         "finish_reason": None}]} for p in pieces]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (req.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            if knobs.chunk_delay_ms:
                await asyncio.sleep(knobs.chunk_delay_ms / 1000)
            await send({"type": "http.response.body",
                        "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                        "more_body": True})
        done = b"data: [DONE]" if knobs.stream_as == "sse-unterminated" else b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": done})


def _split(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _err(message: str, type_: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


async def _json(send, status: int, obj: Any) -> None:
    await _raw(send, status, json.dumps(obj).encode(), b"application/json")


async def _raw(send, status: int, body: bytes, ctype: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """Any ASGI app on uvicorn in a daemon thread, on a loopback port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0):
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class UpstreamServer(ThreadedServer):
    """The upstream in a thread: ``.url``, ``.base`` (``.../v1``), ``.control(...)``."""

    def __init__(self, port: int | None = None, **knobs: Any) -> None:
        self.upstream = Upstream(Knobs(**knobs))
        super().__init__(self.upstream, port)

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def control(self, model: str = "*", **knobs: Any) -> None:
        self.upstream.set_knobs(model, **knobs)

    def calls(self, model: str) -> int:
        return self.upstream.calls[model]

    def script(self, model: str, answer: Any) -> None:
        self.upstream.script(model, answer)


# ---- helpers for gateway tests and benchmarks ---------------------------------------

#: two topics the hashing encoder separates: both models solve math, only "strong" poems
MATH = "math question {} please add the numbers"
POEM = "write a poem {} about the sea"


def tiny_artifact(path: str | Path, dim: int = 32, n: int = 30,
                  cost: tuple[float, float] = (0.001, 0.01)) -> Path:
    """A kNN policy over models ``cheap``/``strong`` fitted on hashing embeddings."""
    import numpy as np

    from policies import make_policy
    from router.proxy.routing import hashing_encoder_config, load_encoder

    enc = load_encoder(hashing_encoder_config(dim), use_cache=False)
    texts = [MATH.format(i) for i in range(n)] + [POEM.format(i) for i in range(n)]
    X = enc.encode(texts)
    quality = np.ones((2 * n, 2))
    quality[n:, 0] = 0.0
    costs = np.tile(np.asarray(cost, dtype=float), (2 * n, 1))
    policy = make_policy("knn", k=5, alpha=1.0, temperature=0.1)
    policy.fit(X, quality, costs, ["cheap", "strong"])
    return policy.save(Path(path), meta={"encoder": enc.config()})


def linucb_artifact(path: str | Path, dim: int = 32, n: int = 30, **params: Any) -> Path:
    """LinUCB (alpha 0) over hashing embeddings: both models solve MATH, only 'strong' POEMs.
    ``params``: other LinUCB parameters (forgetting, the confidence gate)."""
    import numpy as np

    from policies import make_policy
    from router.proxy.routing import hashing_encoder_config, load_encoder

    enc = load_encoder(hashing_encoder_config(dim), use_cache=False)
    X = enc.encode([MATH.format(i) for i in range(n)] + [POEM.format(i) for i in range(n)])
    quality = np.ones((2 * n, 2))
    quality[n:, 0] = 0.0
    cost = np.tile([0.001, 0.01], (2 * n, 1))
    policy = make_policy("linucb", **{"alpha": 0.0, "prior_weight": 1.0, **params})
    policy.fit(X, quality, cost, ["cheap", "strong"])
    return policy.save(Path(path), meta={"encoder": enc.config()})


def backend_entry(name: str, base: str, price_in: float = 1e-6, price_out: float = 2e-6,
                  **extra: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"openai/{name}", "api_base": base, "api_key": "sk-upstream",
        "input_cost_per_token": price_in, "output_cost_per_token": price_out, **extra}}


def gateway_config(upstream_base: str, artifact: str | Path | None, state_dir: str | Path,
                   **sections: Any):
    """A validated config: backends ``cheap`` (1x price) and ``strong`` (10x) on the upstream."""
    from router.proxy.config import parse_config

    data: dict[str, Any] = {
        "model_list": [backend_entry("cheap", upstream_base, 1e-6, 2e-6),
                       backend_entry("strong", upstream_base, 1e-5, 2e-5)],
        "routing": {"lam": 0.0, "fallback": ["cheap", "strong"]},
        "state": {"dir": str(state_dir)},
    }
    if artifact is not None:
        data["routing"]["artifact"] = str(artifact)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, source="test config")


def parse_sse(raw: bytes) -> tuple[list[Any], list[str]]:
    """Every byte of ``raw`` as server-sent events, strictly: (data payloads, comments).

    Each line (LF or CRLF) must be blank, a comment (``:``) or a ``data``/``event``/``id``/
    ``retry`` field; the stream must end with a blank line; every data payload must be
    JSON or ``[DONE]``. Raises ``AssertionError`` naming the first offending line.
    """
    text = raw.decode("utf-8")
    assert text.endswith("\n\n") or text.endswith("\r\n\r\n"), f"unterminated: {text[-80:]!r}"
    events: list[Any] = []
    comments: list[str] = []
    data: list[str] = []
    for n, line in enumerate(text.replace("\r\n", "\n").split("\n")):
        if line == "":
            if data:
                payload = "\n".join(data)
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                data = []
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            field, sep, value = line.partition(":")
            assert sep and field in ("data", "event", "id", "retry"), f"line {n}: {line[:80]!r}"
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    assert not data, "an event without its closing blank line"
    return events, comments


class GatewayServer(ThreadedServer):
    """The real gateway app (router.proxy.app) on uvicorn in a thread."""

    def __init__(self, cfg: Any, port: int | None = None, **gateway_kwargs: Any) -> None:
        from router.proxy.app import create_app

        self.app = create_app(cfg, **gateway_kwargs)
        self.gateway = self.app.state.gateway
        super().__init__(self.app, port)

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def openai(self, api_key: str = "sk-none", **kwargs: Any):
        import openai

        return openai.OpenAI(base_url=self.base, api_key=api_key, max_retries=0, **kwargs)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--completion-tokens", type=int, default=16)
    p.add_argument("--stream-chunks", type=int, default=4)
    p.add_argument("--answer", help="reply text of every model ({model}: the model's name)")
    p.add_argument("--own-models", action="store_true",
                   help="play the scripted small/medium/large models and the judge "
                        "(examples/own-models)")
    args = p.parse_args(argv)
    app = Upstream(Knobs(latency_ms=args.latency_ms, completion_tokens=args.completion_tokens,
                         stream_chunks=args.stream_chunks))
    if args.own_models:
        from tests.own_models import OWN_MODELS, own_answer, own_judge

        for model in OWN_MODELS:
            app.script(model, lambda text, m=model: own_answer(m, text))
        app.script("judge", own_judge)
    if args.answer:
        app.script("*", lambda _t, a=args.answer: a)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                backlog=4096)


if __name__ == "__main__":
    main()
