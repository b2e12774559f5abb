"""Per-key spend and request-rate state: embedded (memory + SQLite) or Redis (atomic Lua).

Keys are known only by their sha256 hex digest; clear keys never reach this module.
Spend is kept as ``spent`` (settled calls) and ``reserved`` (calls in flight). A call first
*reserves* an upper bound of its cost, which succeeds only if ``spent + reserved + amount
<= budget`` (checked and applied atomically), then *settles* (reserved -= bound, spent +=
actual cost) or *releases* the bound if the call failed. So concurrent requests can never
spend more than the budget as long as each call's real cost stays within its reservation.

Redis unreachable: :class:`RedisKeyStore` keeps serving from local state (the last spend it
saw plus local changes) and pushes the changes made meanwhile once Redis answers again. Spend
settled during an outage is also appended, each entry with a unique id, to an fsynced journal
(``<state.dir>/keys-pending.jsonl``, the same :class:`~router.state.outcome_store.DiskBuffer`
the outage bandit updates use), so a replica that crashes during the outage pushes it at its
next start. Each entry is applied by one Lua script that first claims the entry's id
(``SET NX`` with a 30-day expiry), so a push retried after a crash mid-push never charges twice.

Reservations of a replica that dies: each replica also counts what it holds in its own
ledger ``<prefix>:held:<replica id>`` (key hash -> amount, changed in the same atomic step
as ``reserved``). The replica id is stable per state dir (``<state.dir>/replica-id``), so a
replica restarted after a SIGKILL first gives back everything its earlier life still held;
without that, the calls in flight at the kill would shrink the key's budget for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path

log = logging.getLogger("costroute.state")

DB_NAME = "keys.sqlite"
EPS = 1e-12

_RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[1])
if spent + reserved + amount > tonumber(ARGV[2]) + 1e-12 then
  return {0, tostring(spent), tostring(reserved)}
end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[2], ARGV[3], ARGV[1])
return {1, tostring(spent), tostring(reserved + amount)}
"""

#: give back what a replica that died held (its ledger ``KEYS[1]``: key hash -> amount);
#: ARGV[1] is the key prefix (``<prefix>:key:``)
_RELEASE_LEDGER = """
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local amount = tonumber(held[i + 1])
  if amount and amount > 0 then
    redis.call('HINCRBYFLOAT', ARGV[1] .. held[i], 'reserved', -amount)
  end
end
redis.call('DEL', KEYS[1])
return #held / 2
"""

_SPEND_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[1])
  return 1
end
return 0
"""
#: how long an applied journal entry's id is remembered (a retried push within it is a no-op)
SPEND_ID_TTL = 30 * 86400
JOURNAL_NAME = "keys-pending.jsonl"

_RATE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""


class LocalKeyStore:
    """In-process state; spend persisted to ``<dir>/keys.sqlite`` by :meth:`persist`."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.reserved: dict[str, float] = defaultdict(float)
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._dirty = False
        self.path = None
        if state_dir is not None:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self.path = Path(state_dir) / DB_NAME
            with self._connect() as con:
                con.execute("CREATE TABLE IF NOT EXISTS spend (key_hash TEXT PRIMARY KEY, "
                            "name TEXT, spent REAL NOT NULL)")
                for h, s in con.execute("SELECT key_hash, spent FROM spend"):
                    self.spent[h] = float(s)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    # ---- budget -------------------------------------------------------------------
    def reserve(self, key: str, amount: float, budget: float) -> bool:
        with self._lock:
            if self.spent[key] + self.reserved[key] + amount > budget + EPS:
                return False
            self.reserved[key] += amount
            return True

    def settle(self, key: str, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved[key] = max(0.0, self.reserved[key] - reserved)
            self.spent[key] += actual
            self._dirty = True

    def release(self, key: str, reserved: float) -> None:
        with self._lock:
            self.reserved[key] = max(0.0, self.reserved[key] - reserved)

    def usage(self, key: str) -> tuple[float, float]:
        with self._lock:
            return self.spent[key], self.reserved[key]

    # ---- rate ---------------------------------------------------------------------
    def hit(self, key: str, rpm: int, now: float | None = None) -> bool:
        """Count one request; False if ``rpm`` requests were already made in the last 60 s."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._hits[key]
            while q and q[0] <= now - 60.0:
                q.popleft()
            if len(q) >= rpm:
                return False
            q.append(now)
            return True

    # ---- persistence --------------------------------------------------------------
    def persist(self, names: dict[str, str] | None = None) -> None:
        if self.path is None or not self._dirty:
            return
        with self._lock:
            rows = [(h, (names or {}).get(h, ""), s) for h, s in self.spent.items()]
            self._dirty = False
        with self._connect() as con:
            con.executemany("INSERT INTO spend (key_hash, name, spent) VALUES (?, ?, ?) "
                            "ON CONFLICT(key_hash) DO UPDATE SET spent=excluded.spent, "
                            "name=excluded.name", rows)

    async def areserve(self, key: str, amount: float, budget: float) -> bool:
        return self.reserve(key, amount, budget)

    async def asettle(self, key: str, reserved: float, actual: float) -> None:
        self.settle(key, reserved, actual)

    async def arelease(self, key: str, reserved: float) -> None:
        self.release(key, reserved)

    async def ausage(self, key: str) -> tuple[float, float]:
        return self.usage(key)

    async def ahit(self, key: str, rpm: int) -> bool:
        return self.hit(key, rpm)

    async def aflush(self) -> None:
        """Nothing to push: this store is the state (persisted by :meth:`persist`)."""

    def close(self) -> None:
        self.persist()


class RedisKeyStore:
    """Shared state for several gateway replicas (``redis.asyncio`` on the hot path)."""

    def __init__(self, url: str, prefix: str = "costroute", retry_seconds: float = 1.0,
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        from router.state import async_redis_client

        self.url = url
        self.prefix = prefix
        self.client = async_redis_client(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.replica_id = _replica_id(state_dir)
        self._held = f"{prefix}:held:{self.replica_id}"
        self._ledger_checked = False  # the previous life's ledger given back yet?
        self._release_ledger = self.client.register_script(_RELEASE_LEDGER)
        self._reserve = self.client.register_script(_RESERVE)
        self._spend_once = self.client.register_script(_SPEND_ONCE)
        self._rate = self.client.register_script(_RATE)
        self.retry_seconds = retry_seconds
        self.healthy = True
        self._next_try = 0.0
        # local state for outages: last seen (spent, reserved) and changes not yet pushed
        self.local = LocalKeyStore(None)
        self._known: dict[str, tuple[float, float]] = {}
        self._pending: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        # spend settled during an outage, not yet in Redis: {"id", "k", "s"} (also journaled)
        self._journal = None
        self._entries: list[dict] = []
        self._push_lock = asyncio.Lock()
        if state_dir is not None:
            from router.state.outcome_store import DiskBuffer

            self._journal = DiskBuffer(Path(state_dir) / JOURNAL_NAME)
            for e in self._journal.read():
                try:
                    entry = {"id": str(e["id"]), "k": str(e["k"]), "s": float(e["s"])}
                except (KeyError, TypeError, ValueError):
                    log.warning("skipping a malformed spend journal entry: %r", e)
                    continue
                self._entries.append(entry)
                self._pending[entry["k"]][0] += entry["s"]
            if self._entries:
                log.info("%d spend entries of an earlier outage to push", len(self._entries))

    def _key(self, key: str) -> str:
        return f"{self.prefix}:key:{key}"

    def _usable(self) -> bool:
        return self.healthy or time.monotonic() >= self._next_try

    def _down(self, exc: Exception) -> None:
        if self.healthy:
            log.warning("redis key store unavailable, using local state: %s", exc)
        self.healthy = False
        self._next_try = time.monotonic() + self.retry_seconds

    async def _sync_pending(self) -> None:
        """Push what the outage left: reservation changes, then each journaled spend once.

        One push at a time: concurrent requests arriving as Redis returns would otherwise
        push the same deltas twice and trim entries appended meanwhile from the journal."""
        async with self._push_lock:
            await self._push_pending()

    async def _push_pending(self) -> None:
        reserved = [(k, p[1]) for k, p in self._pending.items() if p[1]]
        if reserved:
            pipe = self.client.pipeline(transaction=True)
            for key, d_reserved in reserved:
                pipe.hincrbyfloat(self._key(key), "reserved", d_reserved)
                pipe.hincrbyfloat(self._held, key, d_reserved)
            await pipe.execute()
            for key, d_reserved in reserved:
                self._pending[key][1] -= d_reserved
        entries = list(self._entries)
        for e in entries:
            await self._spend_once(keys=[self._key(e["k"]), f"{self.prefix}:spend-op:{e['id']}"],
                                   args=[repr(e["s"]), SPEND_ID_TTL])
            self._pending[e["k"]][0] -= e["s"]
        if entries:
            del self._entries[:len(entries)]
            if self._journal is not None:
                self._journal.drop_first(len(entries))
        for key in [k for k, p in self._pending.items() if abs(p[0]) < EPS and not p[1]]:
            del self._pending[key]
        if reserved or entries:
            log.info("pushed local spend changes to redis: %d spend entries, reservations "
                     "of %d key(s)", len(entries), len(reserved))

    async def _give_back_ledger(self) -> None:
        """What this replica held when it last died goes back to its keys (once, at start)."""
        if self._ledger_checked:
            return
        n = int(await self._release_ledger(keys=[self._held], args=[f"{self.prefix}:key:"]))
        self._ledger_checked = True
        if n:
            log.warning("gave back the reservations of %d key(s) held by this replica "
                        "(%s) when it last stopped without settling them", n, self.replica_id)

    async def _ok(self) -> None:
        if not self._ledger_checked:
            await self._give_back_ledger()
        if not self.healthy or self._entries:
            self.healthy = True
            await self._sync_pending()

    async def aflush(self) -> None:
        """Push outage changes now if Redis answers (called by the gateway's housekeeping)."""
        if (self._entries or not self.healthy or not self._ledger_checked) and self._usable():
            try:
                await self._ok()
            except Exception as exc:
                if not _is_conn_error(exc):
                    raise
                self._down(exc)

    async def areserve(self, key: str, amount: float, budget: float) -> bool:
        if self._usable():
            try:
                await self._ok()
                ok, spent, reserved = await self._reserve(
                    keys=[self._key(key), self._held],
                    args=[repr(float(amount)), repr(float(budget)), key])
                self._known[key] = (float(spent), float(reserved))
                return bool(int(ok))
            except Exception as exc:  # redis.ConnectionError is not the builtin one
                if not _is_conn_error(exc):
                    raise
                self._down(exc)
        spent, reserved = self._known.get(key, (0.0, 0.0))
        d_spent, d_reserved = self._pending[key]
        if spent + reserved + d_spent + d_reserved + amount > budget + EPS:
            return False
        self._pending[key][1] += amount
        return True

    async def asettle(self, key: str, reserved: float, actual: float) -> None:
        if self._usable():
            try:
                await self._ok()
                pipe = self.client.pipeline(transaction=True)
                pipe.hincrbyfloat(self._key(key), "reserved", -reserved)
                pipe.hincrbyfloat(self._key(key), "spent", actual)
                if reserved:
                    pipe.hincrbyfloat(self._held, key, -reserved)
                new_reserved, new_spent, *_ = await pipe.execute()
                self._known[key] = (float(new_spent), float(new_reserved))
                return
            except Exception as exc:
                if not _is_conn_error(exc):
                    raise
                self._down(exc)
        entry = {"id": uuid.uuid4().hex, "k": key, "s": float(actual)}
        if self._journal is not None:
            self._journal.append([entry])  # fsynced before the answer is sent
        self._entries.append(entry)
        p = self._pending[key]
        p[0] += actual
        p[1] -= reserved

    async def arelease(self, key: str, reserved: float) -> None:
        if self._usable():
            try:
                await self._ok()
                pipe = self.client.pipeline(transaction=True)
                pipe.hincrbyfloat(self._key(key), "reserved", -reserved)
                pipe.hincrbyfloat(self._held, key, -reserved)
                await pipe.execute()
                return
            except Exception as exc:
                if not _is_conn_error(exc):
                    raise
                self._down(exc)
        self._pending[key][1] -= reserved

    async def ausage(self, key: str) -> tuple[float, float]:
        if self._usable():
            try:
                await self._ok()
                spent, reserved = await self.client.hmget(self._key(key), "spent", "reserved")
                self._known[key] = (float(spent or 0), float(reserved or 0))
            except Exception as exc:
                if not _is_conn_error(exc):
                    raise
                self._down(exc)
        spent, reserved = self._known.get(key, (0.0, 0.0))
        d = self._pending.get(key, [0.0, 0.0])
        return spent + d[0], max(0.0, reserved + d[1])

    async def ahit(self, key: str, rpm: int) -> bool:
        if self._usable():
            try:
                await self._ok()
                window = int(time.time() // 60)
                ok = await self._rate(keys=[f"{self.prefix}:rl:{key}:{window}"],
                                      args=[rpm, 120])
                return bool(int(ok))
            except Exception as exc:
                if not _is_conn_error(exc):
                    raise
                self._down(exc)
        return self.local.hit(key, rpm)

    def persist(self, names: dict[str, str] | None = None) -> None:
        """Nothing to do: Redis holds the state."""

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _replica_id(state_dir: str | os.PathLike[str] | None) -> str:
    """This replica's stable id: kept in ``<state_dir>/replica-id`` (random without a dir)."""
    if state_dir is None:
        return uuid.uuid4().hex
    path = Path(state_dir) / "replica-id"
    with contextlib.suppress(OSError):
        value = path.read_text().strip()
        if value:
            return value
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    value = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value


def _is_conn_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError | TimeoutError)
