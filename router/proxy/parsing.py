"""Step 1 of a chat request: authenticate, read and validate the body, resolve ``model``.

:func:`parse_chat` turns the HTTP request into a :class:`ChatCall` (or raises an
:class:`APIError` with an OpenAI-style body); nothing is spent or routed yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import ValidationError

from router.proxy.guard import KEY_SCOPE
from router.proxy.keys import KeyInfo
from router.proxy.outcomes import prompt_hash
from router.proxy.routing import Target, parse_model
from router.proxy.schemas import APIError, ChatCompletionRequest, validation_error_to_api
from router.proxy.wire import estimate_prompt_tokens, jloads

if TYPE_CHECKING:
    from router.proxy.app import Gateway


@dataclass
class ChatCall:
    """A validated chat request: who asks, what for, and the token bounds of one call."""

    key: KeyInfo
    payload: dict[str, Any]  # the JSON body as sent upstream (``max_tokens`` may be added)
    req: ChatCompletionRequest
    target: Target
    text: str  # the routing text (what the encoder embeds)
    prompt_tokens: int  # estimate, for reservations
    max_out: int  # output tokens reserved per call
    remaining: float | None  # the key's remaining budget (None: unlimited)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes."""
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


async def parse_chat(gw: Gateway, request: Request, rec: dict[str, Any]) -> ChatCall:
    """Authenticate (and rate-limit) the key, validate the body, resolve the target."""
    cfg = gw.cfg
    key = request.scope.get(KEY_SCOPE)  # the key gate's (router.proxy.guard)
    if key is None:
        key = gw.keys.authenticate(request.headers)
    rec["key_id"] = key.id
    rec["key_name"] = key.name
    await gw.keys.check_rate(key)
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
    target = parse_model(req.model, gw.router.names, gw.pool.backends)
    if target is None:
        raise APIError(404, f"The model '{req.model}' does not exist. Use one of: "
                            f"{', '.join(gw.model_names())}.",
                       code="model_not_found", param="model")
    rec["kind"] = target.kind
    text = req.routing_text()
    rec["prompt_hash"] = prompt_hash(text)
    if cfg.state.log_prompts:
        rec["prompt"] = text

    prompt_tokens = estimate_prompt_tokens(payload["messages"])
    asked_out = req.max_tokens or req.max_completion_tokens
    max_out = asked_out or cfg.routing.reserve_output_tokens
    remaining = await gw.keys.remaining(key)
    if remaining is not None and asked_out is None and cfg.keys.enforce_max_tokens:
        # bound the real cost by the reservation
        payload["max_tokens"] = cfg.routing.reserve_output_tokens
    return ChatCall(key, payload, req, target, text, prompt_tokens, max_out, remaining)
