"""What every route shares before its handler runs: the API-key gate, and a self-contained
OpenAPI schema.

:class:`AuthGate` is a plain ASGI middleware: when keys are configured (``keys.required``),
a request without a known key gets a 401 OpenAI-style error on every path except the probes
(``/health``, ``/ready``) and the live page's static shell (``/ui``, whose data calls need the
key) — the API, ``/metrics``, ``/openapi.json`` and ``/docs`` all need it.
Keys are hashed on arrival and never logged (:mod:`router.proxy.keys`).

:class:`GatewayApp` is the FastAPI app with a direct lane for ``POST /v1/chat/completions``
(and ``/chat/completions``): the same key gate, handler and error bodies, without the
middleware stack and route matching around them (about a fifth of the event loop's time at
64 concurrent requests). The lane stands aside, so the request takes the whole stack, when
middleware was added after the gateway's own (e.g. CORS in a deployment).

:func:`openapi_schema` builds the app's schema with the request bodies' nested models moved
into ``components/schemas``, so every ``$ref`` resolves (pydantic's ``model_json_schema``
alone leaves ``#/$defs/...`` references that client generators and fuzzers cannot follow).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from router.proxy.schemas import APIError

#: paths reachable without a key: the probes, and the live page's static shell (it holds no
#: data: its figures come from /v1/router/summary, which needs the key)
OPEN_PATHS = frozenset({"/health", "/ready", "/ui", "/ui/app.js", "/ui/app.css"})
REF_TEMPLATE = "#/components/schemas/{model}"
#: the chat route's paths, served by GatewayApp's direct lane
CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
#: where the gate leaves the authenticated key (router.proxy.keys.KeyInfo) in the ASGI scope
KEY_SCOPE = "costroute.key"

log = logging.getLogger("costroute.gateway")


class _Headers:
    """Case-insensitive view of ASGI headers, enough for :meth:`KeyManager.authenticate`."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._h = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._h.get(name.lower(), default)


class AuthGate:
    """Refuse requests without a valid key (when keys are required) before any route."""

    def __init__(self, app: Any, keys: Any) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or not self.keys.required
                or scope.get("path", "") in OPEN_PATHS or await gate(self.keys, scope, send)):
            await self.app(scope, receive, send)


async def gate(keys: Any, scope: dict, send: Any) -> bool:
    """Authenticate the request's key (kept in ``scope[KEY_SCOPE]``): True, or False once the
    401 answer is sent."""
    try:
        scope[KEY_SCOPE] = keys.authenticate(_Headers(scope.get("headers") or []))
    except APIError as err:
        body = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": err.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
        return False
    return True


class GatewayApp(FastAPI):
    """FastAPI with the direct chat lane (module docstring); :meth:`chat_lane` turns it on."""

    _lane: tuple[Any, Callable[[Request], Awaitable[Response]],
                 Callable[[APIError], Response], int] | None = None

    def chat_lane(self, keys: Any, handler: Callable[[Request], Awaitable[Response]],
                  on_error: Callable[[APIError], Response]) -> None:
        """Serve the chat paths with ``handler`` (errors: ``on_error``), behind the key gate,
        while the middleware is what it is now."""
        self._lane = (keys, handler, on_error, len(self.user_middleware))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        lane = self._lane
        if (lane is None or scope["type"] != "http" or scope["path"] not in CHAT_PATHS
                or scope["method"] != "POST" or len(self.user_middleware) != lane[3]):
            await super().__call__(scope, receive, send)
            return
        keys, handler, on_error, _ = lane
        scope["app"] = self
        if keys.required and not await gate(keys, scope, send):
            return
        try:
            response = await handler(Request(scope, receive))
        except APIError as err:
            response = on_error(err)
        except Exception:  # as the app's catch-all handler answers it
            log.exception("internal error on %s", scope["path"])
            response = on_error(APIError(500, "Internal error in the gateway.",
                                         code="internal_error"))
        await response(scope, receive, send)


def request_body(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a JSON request body of ``model``; nested models go to ``defs``."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    defs.update(schema.pop("$defs", {}))
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def openapi_schema(app: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The app's OpenAPI document with ``defs`` merged into ``components/schemas``."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, sub in defs.items():
            schemas.setdefault(name, sub)
        app.openapi_schema = doc
    return app.openapi_schema
