"""Shared state: bandit parameters, budgets/spend, outcome records.

Two backends with the same behaviour: an embedded one (in-process, persisted to local
files) for a single machine, and Redis for several gateway replicas.
"""

from __future__ import annotations


def redis_client(url: str, **kwargs):
    """A synchronous redis-py client with short, explicit timeouts."""
    import redis

    kwargs.setdefault("socket_timeout", 2.0)
    kwargs.setdefault("socket_connect_timeout", 2.0)
    return redis.Redis.from_url(url, **kwargs)
