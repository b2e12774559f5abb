"""Feedback contexts shared between gateway replicas (Redis).

``POST /v1/feedback`` needs what the router knew when it served the request (policy,
policy model, backend, cost, the prompt's embedding). With several replicas the feedback
may reach a replica that did not serve the request, so each context is written to the hash
``<prefix>:<request_id>`` with a TTL, and feedback *claims* it with one Lua script.

A claim is a lease taken by one *claimant* (one feedback call: a token it keeps while the
call is retried or deferred): it returns the context and records ``used`` = the token and
``used_at`` (Redis' clock). The claimant then makes the bandit update, whose script marks the
hash ``done`` in the same atomic step (:func:`router.proxy.bandit.applied_once`); feedback
without an update marks it with :meth:`RedisFeedbackStore.mark_done`. Later claims:

* ``done`` (or a context shared as already used): "already given", from any replica;
* the same claimant again (its first reply was lost, or it was deferred): the context again;
* another claimant within :data:`CLAIM_LEASE_SECONDS` of the claim: :data:`CLAIM_BUSY` (the
  gateway defers it and tries again); after the lease: taken over, since the first claimant
  died or stalled before its update. Both updating is impossible: the update checks ``done``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from router.state.outcome_store import StoreUnavailable

#: claim result: the context's fields; "used" when already given; "busy" when another
#: claimant holds the lease; None when unknown
CLAIMED_BEFORE = "used"
CLAIM_BUSY = "busy"
#: how long a claim is held for its claimant before another may take it over
CLAIM_LEASE_SECONDS = 5.0

# KEYS[1]: the context; ARGV: claimant token, lease (ms). 0: given; 1: busy; else fields
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local used = redis.call('HGET', KEYS[1], 'used')
if used == '1' or redis.call('HEXISTS', KEYS[1], 'done') == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if used and used ~= ARGV[1] then
  local at = tonumber(redis.call('HGET', KEYS[1], 'used_at') or '0')
  if now < at + tonumber(ARGV[2]) then return 1 end
end
redis.call('HSET', KEYS[1], 'used', ARGV[1], 'used_at', string.format('%d', now))
return redis.call('HGETALL', KEYS[1])
"""

_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'done', '1')
return 1
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
        self._done = self.client.register_script(_DONE)
        self.lease_ms = int(CLAIM_LEASE_SECONDS * 1000)

    def key(self, request_id: str) -> str:
        """The Redis hash of one request's context (the bandit update's once-key)."""
        return self._key(request_id)

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

    def claim(self, request_id: str, claimant: str | None = None
              ) -> dict[str, Any] | str | None:
        """The decoded context (now leased to ``claimant``), :data:`CLAIMED_BEFORE`,
        :data:`CLAIM_BUSY`, or None (unknown). Without a claimant, a fresh one."""
        import uuid

        import redis

        try:
            res = self._claim(keys=[self._key(request_id)],
                              args=[claimant or uuid.uuid4().hex, self.lease_ms])
        except (redis.RedisError, OSError) as exc:  # down, or refusing (OOM, READONLY)
            raise self._unavailable(exc) from exc
        if res is None:
            return None
        if not isinstance(res, list):
            return CLAIM_BUSY if int(res) == 1 else CLAIMED_BEFORE
        fields = dict(zip(res[::2], res[1::2], strict=True))
        return decode_context(fields)

    def mark_done(self, request_id: str) -> None:
        """Feedback applied without a bandit update: later claims get "already given"."""
        import redis

        try:
            self._done(keys=[self._key(request_id)])
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
