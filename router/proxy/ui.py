"""The live operator page: ``GET /ui`` (a static page, no build step, no CDN) and the JSON it
draws, ``GET /v1/router/summary``.

The page shell (``/ui``, ``/ui/app.js``, ``/ui/app.css``) holds no data and is served to
anyone, so a browser can load it; every figure comes from ``/v1/router/summary``, which has
the API's auth (the page asks for a key when it gets a 401, or takes one from the URL
fragment ``#key=...``, which browsers never send to the server). The summary is
:func:`router.ops.summary.summarize` over this replica's last hour of outcome records
(:class:`router.ops.live.LiveWindow`), with the backends' configured per-token prices.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

STATIC = Path(__file__).with_name("ui")
ASSETS = {"/ui": ("index.html", "text/html; charset=utf-8"),
          "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/ui/app.css": ("app.css", "text/css; charset=utf-8")}


@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def backend_prices(gw: Any) -> dict[str, tuple[float, float]]:
    """Per-token prices the gateway's backends know (others are fitted to the records)."""
    out = {}
    for name in gw.pool.names():
        b = gw.pool[name]
        p_in, p_out = getattr(b, "price_in", None), getattr(b, "price_out", None)
        # replay backends answer at each prompt's recorded cost, with no per-token price
        if p_in is not None and p_out is not None and getattr(b, "price_source", "") not in (
                "unknown", "replay"):
            out[name] = (float(p_in), float(p_out))
    return out


def add_ui_routes(app: FastAPI, gw: Any) -> None:
    for path, (name, media) in ASSETS.items():
        def serve(name: str = name, media: str = media) -> Response:
            return Response(_asset(name), media_type=media,
                            headers={"cache-control": "no-cache"})

        app.add_api_route(path, serve, methods=["GET"], include_in_schema=False)

    from router.proxy.schemas import ErrorResponse

    @app.get("/v1/router/summary",
             responses={s: {"model": ErrorResponse} for s in (400, 401)})
    async def summary(request: Request,
                      window: float = Query(3600.0, gt=0, le=86400.0,
                                            description="seconds of history"),
                      reference: str | None = Query(None, description="counterfactual backend"),
                      ) -> JSONResponse:
        """What the router did in the last ``window`` seconds (this replica)."""
        from router.ops.summary import price_book, summarize
        from router.proxy.schemas import APIError

        gw.keys.authenticate(request.headers)
        if reference is not None and reference not in gw.pool:
            raise APIError(400, f"reference: unknown backend {reference!r}; backends: "
                                f"{', '.join(gw.pool.names())}", param="reference",
                           code="invalid_parameter")
        records = gw.live.records(window)
        return JSONResponse(summarize(records, price_book(records, backend_prices(gw)),
                                      reference))
