"""Embedded per-key spend and request-rate state: memory, spend persisted to SQLite.

Keys are known only by their sha256 hex digest. Implements the reserve / settle / release
protocol described in :mod:`router.state.keys_store`, each step under one lock.

One process only: several gateway replicas share their state through
:class:`~router.state.keys_redis.RedisKeyStore`, which also keeps one of these for the request
rate during a Redis outage.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

DB_NAME = "keys.sqlite"
EPS = 1e-12


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
