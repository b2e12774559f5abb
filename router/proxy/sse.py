"""Server-sent events the gateway writes itself (not relayed from a backend).

* :func:`completion_chunks`: a complete chat completion as a well-formed stream (role chunk,
  content chunk, finish chunk, optional usage chunk, ``data: [DONE]``), as LiteLLM's fake
  streaming does: for backends that answer ``"stream": true`` with a JSON body, and for
  cascades, whose answer is known only once every needed call is back.
* :func:`error_event`: an OpenAI-style error as an SSE event, then ``[DONE]``.
* :func:`router_comment`: the ``: x-router {...}`` comment, always starting on its own line.
* :func:`normalise_stream`: what the fast path relays for a stream request. An SSE answer
  passes unchanged; a complete JSON completion (a backend that ignores ``"stream": true``)
  becomes :func:`completion_chunks`; anything else (an error body, HTML, nothing) becomes
  :func:`error_event`, never an empty stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from router.proxy.wire import SSEMeter, jdumps, jloads

DONE = b"data: [DONE]\n\n"
#: the largest non-SSE answer read whole to convert it
MAX_PLAIN_BYTES = 8 * 1024 * 1024
_SSE_STARTS = (b"data:", b":", b"event:", b"id:", b"retry:")


class NotSSE(Exception):
    """A backend answered a stream request with something that is not SSE."""


def _event(obj: Any) -> bytes:
    return b"data: " + jdumps(obj) + b"\n\n"


def completion_chunks(body: dict[str, Any], include_usage: bool = False) -> Iterator[bytes]:
    """The SSE events of a ``chat.completion`` body (every choice, in order)."""
    base = {"id": body.get("id") or "chatcmpl-router", "object": "chat.completion.chunk",
            "created": body.get("created") or 0, "model": body.get("model") or ""}
    if body.get("system_fingerprint"):
        base["system_fingerprint"] = body["system_fingerprint"]
    choices = body.get("choices") or []
    for i, choice in enumerate(choices):
        idx = choice.get("index", i) if isinstance(choice, dict) else i
        msg = (choice.get("message") if isinstance(choice, dict) else None) or {}
        yield _event({**base, "choices": [{"index": idx, "delta": {
            "role": msg.get("role") or "assistant", "content": ""}, "finish_reason": None}]})
        delta: dict[str, Any] = {}
        if msg.get("content"):
            delta["content"] = msg["content"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{**tc, "index": k} for k, tc in enumerate(msg["tool_calls"])]
        if msg.get("refusal"):
            delta["refusal"] = msg["refusal"]
        if delta:
            yield _event({**base, "choices": [{"index": idx, "delta": delta,
                                               "finish_reason": None}]})
        yield _event({**base, "choices": [{"index": idx, "delta": {},
                                           "finish_reason": choice.get("finish_reason")
                                           or "stop"}]})
    if include_usage and body.get("usage"):
        yield _event({**base, "choices": [], "usage": body["usage"]})
    yield DONE


def error_event(message: str, code: str = "upstream_error",
                err_type: str = "api_error") -> bytes:
    """An OpenAI-style error event (the openai SDK raises it as an APIError), then [DONE]."""
    return _event({"error": {"message": message, "type": err_type, "param": None,
                             "code": code}}) + DONE


def router_comment(info: dict[str, Any], last: bytes = b"\n") -> bytes:
    """The ``: x-router`` SSE comment after a stream whose last bytes were ``last``:
    a newline first when that stream ended mid-line, so the comment is a line of its own."""
    lead = b"" if last[-1:] in (b"\n", b"\r") else b"\n"
    return lead + b": x-router " + jdumps(info) + b"\n\n"


async def normalise_stream(chunks: AsyncIterator[bytes], backend: str, meter: SSEMeter,
                           include_usage: bool = False) -> AsyncIterator[bytes]:
    """Relay an SSE answer unchanged; convert a JSON completion; else an error event.

    The decision is taken on the first non-blank bytes. After an error event the
    generator raises :class:`NotSSE` (the relay records it as the stream's error).
    """
    it = chunks.__aiter__()
    buf = b""
    async for data in it:
        buf += data
        if buf.lstrip() and (len(buf.lstrip()) >= 6 or b"\n" in buf):
            break
    head = buf.lstrip()
    if head.startswith(_SSE_STARTS):
        yield buf
        async for data in it:
            yield data
        return
    if head[:1] in (b"{", b"["):
        async for data in it:
            buf += data
            if len(buf) > MAX_PLAIN_BYTES:
                break
        try:
            obj = jloads(buf)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("choices"), list):
            usage = obj.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                meter.reported = (int(usage.get("prompt_tokens") or 0),
                                  int(usage.get("completion_tokens") or 0))
            for event in completion_chunks(obj, include_usage):
                yield event
            return
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and err.get("message"):
            message = f"{backend}: {err['message']}"
        else:
            message = f"{backend}: answered a stream request with non-SSE JSON"
    elif not head:
        message = f"{backend}: answered a stream request with an empty body"
    else:
        message = (f"{backend}: answered a stream request with non-SSE content: "
                   f"{head[:80].decode(errors='replace')!r}")
    yield error_event(message)
    raise NotSSE(message)
