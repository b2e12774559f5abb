"""Feedback contexts shared between gateway replicas (Redis).

``POST /v1/feedback`` needs what the router knew when it served the request (policy,
policy model, backend, cost, the prompt's embedding). With several replicas the feedback
may reach a replica that did not serve the request, so each context is written to the hash
``<prefix>:<request_id>`` with a TTL, and feedback *claims* it with one Lua script: the
first claim marks it used and returns it, every later claim (from any replica) gets
"already given". So duplicate feedback through two replicas is refused exactly once.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from router.state.outcome_store import StoreUnavailable

#: claim result: the context's fields; "used" when already claimed; None when unknown
CLAIMED_BEFORE = "used"

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], 'used', '1') == 0 then return 0 end
return redis.call('HGETALL', KEYS[1])
"""


def encode_context(policy: str | None, policy_model: str | None, backend: str,
                   embedding: np.ndarray | None, cost: float, used: bool = False
                   ) -> dict[str, bytes | str]:
    """The hash fields of one context (absent fields mean None; ``used``: already claimed)."""
    out: dict[str, bytes | str] = {"backend": backend, "cost": repr(float(cost))}
    if used:
        out["used"] = "1"
    if policy is not None:
        out["policy"] = policy
    if policy_model is not None:
        out["policy_model"] = policy_model
    if embedding is not None:
        emb = np.ascontiguousarray(embedding).reshape(-1)
        out["emb_dtype"] = emb.dtype.str
        out["emb"] = emb.tobytes()
    return out


def decode_context(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """Inverse of :func:`encode_context` (keys: policy, policy_model, backend, embedding, cost)."""
    def text(name: str) -> str | None:
        v = fields.get(name.encode())
        return None if v is None else v.decode()

    emb = None
    if b"emb" in fields:
        emb = np.frombuffer(fields[b"emb"], dtype=np.dtype(text("emb_dtype") or "<f8")).copy()
    return {"policy": text("policy"), "policy_model": text("policy_model"),
            "backend": text("backend") or "", "embedding": emb,
            "cost": float(text("cost") or 0.0)}


class RedisFeedbackStore:
    """Contexts in Redis hashes with a TTL; :meth:`claim` is atomic across replicas."""

    def __init__(self, url: str, prefix: str = "costroute:fb", ttl_seconds: float = 3600.0
                 ) -> None:
        from router.state import redis_client

        self.url = url
        self.prefix = prefix
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.client = redis_client(url)
        self._claim = self.client.register_script(_CLAIM)

    def _key(self, request_id: str) -> str:
        return f"{self.prefix}:{request_id}"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"redis at {self.url}: {exc}")

    def put_many(self, items: list[tuple[str, dict[str, bytes | str]]]) -> None:
        """Write contexts (one pipeline round trip); raises StoreUnavailable."""
        if not items:
            return
        import redis

        try:
            pipe = self.client.pipeline(transaction=False)
            for rid, fields in items:
                pipe.hset(self._key(rid), mapping=fields)
                pipe.pexpire(self._key(rid), self.ttl_ms)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:  # down, or refusing (OOM, READONLY)
            raise self._unavailable(exc) from exc

    def claim(self, request_id: str) -> dict[str, Any] | str | None:
        """The decoded context (now marked used), :data:`CLAIMED_BEFORE`, or None."""
        import redis

        try:
            res = self._claim(keys=[self._key(request_id)])
        except (redis.RedisError, OSError) as exc:  # down, or refusing (OOM, READONLY)
            raise self._unavailable(exc) from exc
        if res is None:
            return None
        if not isinstance(res, list):
            return CLAIMED_BEFORE
        fields = dict(zip(res[::2], res[1::2], strict=True))
        return decode_context(fields)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
