"""Where an online policy's bandit state lives while the gateway serves it.

Embedded state (no ``state.redis_url``): a durable
:class:`~router.state.bandit_store.EmbeddedBanditStore` at ``<state.dir>/bandit-<name>.npz``.
With Redis: a :class:`~router.state.bandit_store.RedisBanditStore` (shared by replicas)
wrapped in :class:`ResilientBanditStore`, which keeps the gateway routing and learning when
Redis is unreachable: it serves a local copy of the last state it read, folds new outcomes
into that copy, queues them, and appends them to the shared log once Redis answers again.
With a ``buffer_path`` the queued outcomes are also appended (fsynced) to a local JSONL file,
so a replica that crashes during the outage pushes them when it starts again (at least once:
a crash in the middle of a push may append some of them twice).

An update made inside :func:`applied_once` (feedback: the request's shared context hash) is
applied at most once per that key: the Redis script that appends it first marks the key
``done`` and skips the update if it already was, also when it was queued during an outage and
pushed later. So feedback that a second replica takes over from a claimant that died (or
seemed to) never updates the bandit twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("costroute.gateway")

_once = threading.local()  # the key of the update being made in this thread, if any


@contextmanager
def applied_once(key: str | None) -> Iterator[dict[str, bool]]:
    """Bandit updates this thread makes in the block are applied at most once per ``key``
    (a Redis hash that must exist: marked ``done``). Yields ``{"skipped": bool}``, set when
    the key was already done (the update was made elsewhere, not here)."""
    result = {"skipped": False}
    _once.key, _once.result = key, result
    try:
        yield result
    finally:
        _once.key = _once.result = None


class ResilientBanditStore:
    """A primary (Redis) bandit store with a local fallback during outages."""

    def __init__(self, primary: Any, retry_seconds: float = 1.0,
                 buffer_path: str | Path | None = None) -> None:
        from router.state.bandit_store import BanditStoreError
        from router.state.outcome_store import DiskBuffer

        self.primary = primary
        self.retry_seconds = retry_seconds
        self._error = BanditStoreError
        self._lock = threading.RLock()
        self._local = None  # BanditState copy used while the primary is down
        # (arm, z, reward, cost, once-key or None), oldest first
        self._pending: list[tuple[int, np.ndarray, float, float, str | None]] = []
        self._next_try = 0.0
        self._last = None  # the last state read from the primary (not copied)
        self._needs_init = None  # the prior to seed the primary with, if it was down at start
        self.buffer = None if buffer_path is None else DiskBuffer(buffer_path)
        if self.buffer is not None:  # outcomes of an outage this replica did not survive
            for e in self.buffer.read():
                try:
                    self._pending.append((int(e["a"]), np.asarray(e["z"], dtype=np.float64),
                                          float(e["r"]), float(e["c"]), e.get("d")))
                except (KeyError, TypeError, ValueError):
                    log.warning("skipping a malformed buffered bandit outcome in %s",
                                buffer_path)

    @property
    def healthy(self) -> bool:
        return self._local is None

    def _unreachable(self, exc: Exception) -> bool:
        return isinstance(exc, self._error) and "unreachable" in str(exc)

    def _go_local(self, exc: Exception) -> None:
        if self._local is None:
            if self._last is None:
                raise exc
            log.warning("bandit store unreachable, learning locally: %s", exc)
            self._local = self._last.copy()
        self._next_try = time.monotonic() + self.retry_seconds

    def _try_recover(self) -> None:
        if self._local is None or time.monotonic() < self._next_try:
            return
        try:
            if self._needs_init is not None:
                self.primary.initialize(self._needs_init)
                self._needs_init = None
            while self._pending:
                arm, z, reward, cost, once = self._pending[0]
                self.primary.update(arm, z, reward, cost, once=once)
                self._pending.pop(0)
        except Exception as exc:
            if not self._unreachable(exc):
                raise
            self._next_try = time.monotonic() + self.retry_seconds
            return
        if self.buffer is not None:
            self.buffer.drop_first(len(self.buffer))
        log.info("bandit store reachable again; local outcomes pushed")
        self._local = None

    # ---- BanditStore interface --------------------------------------------------------
    def _keep_fitting(self, state) -> None:
        """Drop buffered outcomes that do not fit ``state`` (e.g. written by an artifact with
        other models or dimensions before a redeploy), with a warning, instead of failing."""
        arms, dim = np.asarray(state.b).shape
        fits = [p for p in self._pending if 0 <= p[0] < arms and p[1].shape == (dim,)
                and np.isfinite(p[1]).all() and np.isfinite(p[2:4]).all()]
        if len(fits) != len(self._pending):
            log.warning("dropping %d of %d buffered bandit outcomes that do not fit this "
                        "artifact (%d arms, %d dims)", len(self._pending) - len(fits),
                        len(self._pending), arms, dim)
            self._pending = fits

    def initialize(self, state):
        with self._lock:
            self._keep_fitting(state)
            try:
                self._last = self.primary.initialize(state)
                if self._pending:  # buffered by an earlier run during an outage
                    log.info("pushing %d buffered bandit outcomes", len(self._pending))
                    self._local = self._last.copy()
                    for arm, z, reward, cost, _ in self._pending:
                        self._local.apply(arm, z, reward, cost)
                    self._try_recover()
            except Exception as exc:
                if not self._unreachable(exc):
                    raise
                log.warning("bandit store unreachable at start, learning locally: %s", exc)
                self._needs_init = state.copy()
                self._local = state.copy()
                for arm, z, reward, cost, _ in self._pending:
                    self._local.apply(arm, z, reward, cost)
                self._next_try = time.monotonic() + self.retry_seconds
                return self._local
            return self._last if self._local is None else self._local

    def update(self, arm: int, z: np.ndarray, reward: float, cost: float) -> int:
        once = getattr(_once, "key", None)
        with self._lock:
            self._try_recover()
            if self._local is None:
                try:
                    v = self.primary.update(arm, z, reward, cost, once=once)
                    if v < 0:  # already made for this key (by another replica)
                        _once.result["skipped"] = True
                        return self.primary.version()
                    return v
                except Exception as exc:
                    if not self._unreachable(exc):
                        raise
                    self._go_local(exc)
            z = np.ascontiguousarray(z, dtype=np.float64).reshape(-1)
            self._local.apply(int(arm), z, float(reward), float(cost))
            self._pending.append((int(arm), z, float(reward), float(cost), once))
            if self.buffer is not None:
                entry = {"a": int(arm), "r": float(reward), "c": float(cost), "z": z.tolist()}
                if once is not None:
                    entry["d"] = once
                self.buffer.append([entry])
            return self._local.version

    def version(self) -> int:
        with self._lock:
            return self._local.version if self._local is not None else self.primary.version()

    @contextmanager
    def read(self) -> Iterator[Any]:
        with self._lock:
            self._try_recover()
            if self._local is None:
                try:
                    with self.primary.read() as st:
                        self._last = st
                        yield st
                        return
                except Exception as exc:
                    if not self._unreachable(exc):
                        raise
                    self._go_local(exc)
            yield self._local

    def state(self):
        with self.read() as st:
            return st.copy()

    def snapshot(self) -> None:
        if self._local is None:
            try:
                self.primary.snapshot()
            except Exception as exc:
                if not self._unreachable(exc):
                    raise

    def close(self) -> None:
        try:
            self.primary.close()
        except Exception:
            log.debug("closing the bandit store failed", exc_info=True)


def attach_bandit_store(policy: Any, name: str, state_dir: str | Path,
                        redis_url: str | None) -> Any:
    """Give an online policy (with ``attach_store``) its durable/shared store."""
    from router.state.bandit_store import EmbeddedBanditStore, RedisBanditStore

    if redis_url:
        store = ResilientBanditStore(
            RedisBanditStore(redis_url, key_prefix=f"costroute:bandit:{name}"),
            buffer_path=Path(state_dir) / f"bandit-{name}-pending.jsonl")
    else:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        store = EmbeddedBanditStore(Path(state_dir) / f"bandit-{name}.npz")
    policy.attach_store(store)
    return store
