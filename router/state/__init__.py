"""Shared state: bandit parameters, budgets/spend, outcome records.

Two backends with the same behaviour: an embedded one (in-process, persisted to local
files) for a single machine, and Redis for several gateway replicas.

Every Redis client made here has a bounded connection pool (``state.redis_max_connections``
per client, set by the gateway through :func:`configure_redis_pool`): a caller that finds
every connection busy waits up to ``pool_timeout`` seconds for one instead of opening
another, so a burst of requests can never exhaust Redis' ``maxclients``.
"""

from __future__ import annotations

from typing import Any

#: per-client pool bounds (``max_connections``, and how long to wait for a free connection)
REDIS_POOL: dict[str, float] = {"max_connections": 32, "pool_timeout": 2.0}


def configure_redis_pool(max_connections: int, pool_timeout: float | None = None) -> None:
    """Bound every Redis client made after this call (one process serves one config)."""
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    REDIS_POOL["max_connections"] = int(max_connections)
    if pool_timeout is not None:
        REDIS_POOL["pool_timeout"] = float(pool_timeout)


def redis_client(url: str, **kwargs: Any):
    """A synchronous redis-py client with short, explicit timeouts and a bounded pool."""
    import redis

    kwargs.setdefault("socket_timeout", 2.0)
    kwargs.setdefault("socket_connect_timeout", 2.0)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=int(kwargs.pop("max_connections", REDIS_POOL["max_connections"])),
        timeout=kwargs.pop("pool_timeout", REDIS_POOL["pool_timeout"]), **kwargs)
    return redis.Redis(connection_pool=pool)


def async_redis_client(url: str, **kwargs: Any):
    """A ``redis.asyncio`` client with the same bounded pool (for the request path)."""
    import redis.asyncio as aredis

    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=int(kwargs.pop("max_connections", REDIS_POOL["max_connections"])),
        timeout=kwargs.pop("pool_timeout", REDIS_POOL["pool_timeout"]), **kwargs)
    return aredis.Redis(connection_pool=pool)
