"""Pooled HTTP clients for the fast path (``routing.http_client``: ``aiohttp`` or ``httpx``).

Both keep connections alive across requests and expose the same two calls: a JSON POST
returning (status, body bytes) and a streaming POST returning (status, byte iterator,
closer). Failures become :class:`PoolError` with ``kind`` = ``timeout`` or ``connect``.

Why two: httpx's connection pool scans every pooled connection (with a ``poll`` syscall
each) on every request, so its CPU cost per request grows with concurrency. Measured at 64
concurrent requests against tests/upstream.py on this 2-core machine: one
``httpx.AsyncClient`` ~155-185 req/s, 8 round-robin clients ~490-530, 32 clients ~820,
one ``aiohttp.ClientSession`` ~1360-1700 req/s (the upstream's own limit). ``aiohttp`` is
the default; ``httpx`` uses ``http_shards`` round-robin clients to keep each pool small.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any


class PoolError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


Closer = Callable[[], Awaitable[None]]


class HttpxPool:
    """``shards`` round-robin ``httpx.AsyncClient`` (keep-alive pools)."""

    name = "httpx"

    def __init__(self, shards: int = 16) -> None:
        import httpx

        self._httpx = httpx
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256,
                              keepalive_expiry=30.0)
        self.clients = [httpx.AsyncClient(timeout=None, limits=limits, follow_redirects=False)
                        for _ in range(max(1, shards))]
        self._next = itertools.cycle(self.clients)

    def _timeout(self, timeout: float):
        return self._httpx.Timeout(timeout, connect=min(timeout, 10.0))

    def _error(self, exc: Exception, timeout: float) -> PoolError:
        if isinstance(exc, TimeoutError | self._httpx.TimeoutException):
            return PoolError("timeout", f"no answer within {timeout:g}s")
        return PoolError("connect", f"{type(exc).__name__}: {exc}")

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   timeout: float) -> tuple[int, bytes]:
        client = next(self._next)
        try:
            async with asyncio.timeout(timeout):
                resp = await client.post(url, content=body, headers=headers,
                                         timeout=self._timeout(timeout))
                return resp.status_code, resp.content
        except (TimeoutError, self._httpx.HTTPError) as exc:
            raise self._error(exc, timeout) from exc

    async def stream(self, url: str, body: bytes, headers: dict[str, str], timeout: float,
                     ) -> tuple[int, AsyncIterator[bytes] | bytes, Closer | None]:
        client = next(self._next)
        req = client.build_request("POST", url, content=body, headers=headers,
                                   timeout=self._timeout(timeout))
        try:
            async with asyncio.timeout(timeout):
                resp = await client.send(req, stream=True)
                if resp.status_code != 200:
                    content = await resp.aread()
                    await resp.aclose()
                    return resp.status_code, content, None
        except (TimeoutError, self._httpx.HTTPError) as exc:
            raise self._error(exc, timeout) from exc
        return 200, resp.aiter_bytes(), resp.aclose

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()


class AiohttpPool:
    """One ``aiohttp.ClientSession`` (created on first use, inside the serving loop)."""

    name = "aiohttp"

    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session: Any = None

    def _get(self):
        if self._session is None or self._session.closed:
            a = self._aiohttp
            connector = a.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                       ttl_dns_cache=300)
            self._session = a.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    def _timeout(self, timeout: float):
        return self._aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 10.0),
                                           sock_read=timeout)

    def _error(self, exc: BaseException, timeout: float) -> PoolError:
        if isinstance(exc, TimeoutError | self._aiohttp.ServerTimeoutError):
            return PoolError("timeout", f"no answer within {timeout:g}s")
        return PoolError("connect", f"{type(exc).__name__}: {exc}")

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   timeout: float) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(timeout), self._get().post(
                url, data=body, headers=headers, timeout=self._timeout(timeout)
            ) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, self._aiohttp.ClientError) as exc:
            raise self._error(exc, timeout) from exc

    async def stream(self, url: str, body: bytes, headers: dict[str, str], timeout: float,
                     ) -> tuple[int, AsyncIterator[bytes] | bytes, Closer | None]:
        try:
            async with asyncio.timeout(timeout):
                resp = await self._get().post(url, data=body, headers=headers,
                                              timeout=self._timeout(timeout))
                if resp.status != 200:
                    content = await resp.read()
                    resp.release()
                    return resp.status, content, None
        except (TimeoutError, self._aiohttp.ClientError) as exc:
            raise self._error(exc, timeout) from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for data in resp.content.iter_any():
                    yield data
            except self._aiohttp.ClientError as exc:
                raise OSError(f"stream broken: {exc}") from exc

        async def close() -> None:
            resp.release()

        return 200, chunks(), close

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def make_pool(kind: str = "aiohttp", shards: int = 16) -> HttpxPool | AiohttpPool:
    if kind == "httpx":
        return HttpxPool(shards)
    if kind == "aiohttp":
        try:
            return AiohttpPool()
        except ImportError:  # aiohttp absent: httpx is always installed
            return HttpxPool(shards)
    raise ValueError(f"unknown http client {kind!r} (aiohttp or httpx)")
