"""Per-key spend and request-rate state: embedded (memory + SQLite) or Redis (atomic Lua).

Keys are known only by their sha256 hex digest; clear keys never reach this module.
Spend is kept as ``spent`` (settled calls) and ``reserved`` (calls in flight). A call first
*reserves* an upper bound of its cost, which succeeds only if ``spent + reserved + amount
<= budget`` (checked and applied atomically), then *settles* (reserved -= bound, spent +=
actual cost) or *releases* the bound if the call failed. So concurrent requests can never
spend more than the budget as long as each call's real cost stays within its reservation.

Modules: :mod:`router.state.keys_local` (:class:`LocalKeyStore`, one process: memory plus
SQLite) and :mod:`router.state.keys_redis` (:class:`RedisKeyStore`, several replicas: Redis,
serving through outages, each change applied at most once, the per-replica held ledger).
This module re-exports both with their constants.
"""

from router.state.keys_local import DB_NAME, EPS, LocalKeyStore
from router.state.keys_redis import (
    ACK_BATCH,
    ACKED_TTL,
    JOURNAL_NAME,
    MAX_ACKS,
    SPEND_ID_TTL,
    RedisKeyStore,
)

__all__ = ["ACK_BATCH", "ACKED_TTL", "DB_NAME", "EPS", "JOURNAL_NAME", "MAX_ACKS",
           "SPEND_ID_TTL", "LocalKeyStore", "RedisKeyStore"]
