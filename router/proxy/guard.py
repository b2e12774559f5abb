"""What every route shares before its handler runs: the API-key gate, and a self-contained
OpenAPI schema.

:class:`AuthGate` is a plain ASGI middleware: when keys are configured (``keys.required``),
a request without a known key gets a 401 OpenAI-style error on every path except the probes
(``/health``, ``/ready``) and the live page's static shell (``/ui``, whose data calls need the
key) — the API, ``/metrics``, ``/openapi.json`` and ``/docs`` all need it.
Keys are hashed on arrival and never logged (:mod:`router.proxy.keys`).

:func:`openapi_schema` builds the app's schema with the request bodies' nested models moved
into ``components/schemas``, so every ``$ref`` resolves (pydantic's ``model_json_schema``
alone leaves ``#/$defs/...`` references that client generators and fuzzers cannot follow).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from router.proxy.schemas import APIError

#: paths reachable without a key: the probes, and the live page's static shell (it holds no
#: data: its figures come from /v1/router/summary, which needs the key)
OPEN_PATHS = frozenset({"/health", "/ready", "/ui", "/ui/app.js", "/ui/app.css"})
REF_TEMPLATE = "#/components/schemas/{model}"


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
                or scope.get("path", "") in OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        try:
            self.keys.authenticate(_Headers(scope.get("headers") or []))
        except APIError as err:
            body = json.dumps(err.body()).encode()
            await send({"type": "http.response.start", "status": err.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


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
