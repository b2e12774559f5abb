"""Stores for the LinUCB bandit's parameters (per arm A^-1, b, counts, spend, version).

Every store holds one :class:`BanditState` and folds outcomes ``(arm, z, reward, cost)``
into it with the same Sherman-Morrison step (:meth:`BanditState.apply`), so two stores
that see the same outcomes in the same order hold bit-identical parameters.

* :class:`EmbeddedBanditStore` keeps the state in process (thread-safe). With a ``path``
  it is durable: every outcome is appended to ``<path>.log`` (fixed-size binary records)
  and the state is snapshotted to ``<path>`` (numpy ``.npz``, no pickle) atomically
  (temp file + ``os.replace``) every ``snapshot_every`` outcomes and on :meth:`close`.
  Reopening the path loads the snapshot and replays the log tail: the state is restored
  exactly.
* :class:`RedisBanditStore` shares the state between gateway replicas as an
  **append-only outcome log**: a Lua script increments ``<prefix>:ver`` and appends the
  outcome to the stream ``<prefix>:log`` under the id ``0-<version>`` in one atomic step,
  so concurrent updates from any number of processes are totally ordered and none is
  lost. Each replica folds the log, in that order, into its local copy; a decision costs
  one ``GET <prefix>:ver`` and folds only outcomes it has not seen. Every
  ``compact_every`` outcomes a replica writes its folded state to ``<prefix>:snap`` and
  trims the log up to it (a lagging replica then starts from the snapshot). We chose the
  log over server-side Sherman-Morrison in Lua (O(d^2) Lua arithmetic that would block
  Redis, 1.2 MB per arm at d=385) and over WATCH/MULTI (megabytes read and written per
  update, retries under contention): an outcome is ~3 KB, the fold runs in numpy, and
  replicas are bit-identical to an embedded store fed the same stream.

Forgetting (for drift) is part of the fold, so every store, the replay (eval/stream.py)
and the gateway forget alike. :class:`Forgetting` sets it: ``discount`` multiplies the
pulled arm's statistics before each outcome (``A <- g A + z z^T``, ``b <- g b + r z``; the
same for its running cost); a two-sided CUSUM on the arm's prediction error (reward minus
clipped posterior mean, and log of cost over mean cost) flags a change once it passes
``threshold`` (``cost_threshold``) with ``slack`` per step, and then shrinks that arm's
statistics by ``shrink`` so the outcomes after the change outweigh the prior; a quality
change first shifts the arm's intercept (the last feature must be the constant 1) by the
arm's recent mean error, since a backend that changes usually changes on every query.
Defaults forget nothing; old snapshots without these arrays load with the defaults.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from router.state.bandit_state import (  # noqa: F401 (re-exported)
    _ARRAYS,
    _OPTIONAL,
    BanditState,
    BanditStoreError,
    Forgetting,
)


class BanditStore:
    """Interface: one bandit state, outcomes folded in a single total order."""

    def initialize(self, state: BanditState) -> BanditState:
        """Seed an empty store with ``state``; otherwise check it holds the same bandit.

        Returns the state the store now holds (which may be ahead of ``state``).
        """
        raise NotImplementedError

    def update(self, arm: int, z: np.ndarray, reward: float, cost: float) -> int:
        """Record one outcome; returns the store's version after it."""
        raise NotImplementedError

    def version(self) -> int:
        raise NotImplementedError

    @contextmanager
    def read(self) -> Iterator[BanditState]:
        """The current state (do not mutate it), refreshed if the version changed."""
        raise NotImplementedError
        yield

    def state(self) -> BanditState:
        """A private copy of the current state."""
        with self.read() as st:
            return st.copy()

    def snapshot(self) -> None:
        """Persist / compact (no-op where there is nothing to do)."""

    def close(self) -> None:
        """Release resources (snapshots first where that applies)."""


def _check_compatible(held: BanditState, new: BanditState, where: str) -> None:
    if held.fingerprint != new.fingerprint or held.b.shape != new.b.shape:
        raise BanditStoreError(
            f"{where} holds a bandit for another artifact (prior {held.fingerprint}, "
            f"{held.n_arms} arms x dim {held.dim}); this policy's prior is {new.fingerprint} "
            f"({new.n_arms} x {new.dim}). Use a new path/key prefix or delete the old state."
        )


def _check_outcome(state: BanditState, arm: int, z: np.ndarray, reward: float, cost: float):
    arm = int(arm)
    if not 0 <= arm < state.n_arms:
        raise BanditStoreError(f"arm {arm} out of range (0..{state.n_arms - 1})")
    z = np.ascontiguousarray(z, dtype=np.float64).reshape(-1)
    if z.shape[0] != state.dim:
        raise BanditStoreError(f"feature vector has dimension {z.shape[0]}, expected {state.dim}")
    reward, cost = float(reward), float(cost)
    if not (np.isfinite(z).all() and np.isfinite(reward) and np.isfinite(cost)):
        raise BanditStoreError("outcome contains NaN or infinite values")
    if cost < 0:
        raise BanditStoreError(f"cost must be >= 0, got {cost}")
    return arm, z, reward, cost


# ---- embedded --------------------------------------------------------------------------------
_REC_HEAD = struct.Struct("<qidd")  # version, arm, reward, cost; then dim float64


class EmbeddedBanditStore(BanditStore):
    """In-process store; durable when given a ``path`` (snapshot + append-only log)."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, snapshot_every: int | None = 1000,
        fsync: bool = False,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.snapshot_every = snapshot_every
        self.fsync = fsync
        self._lock = threading.RLock()
        self._state: BanditState | None = None
        self._log = None
        if self.path is not None and self.path.exists():
            self._state = self._load()

    @property
    def log_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(self.path.name + ".log")

    def _load(self) -> BanditState:
        assert self.path is not None
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                state = BanditState.from_arrays({k: npz[k] for k in npz.files})
        except (OSError, ValueError) as exc:
            raise BanditStoreError(f"{self.path}: unreadable bandit snapshot ({exc})") from exc
        log = self.log_path
        if log is not None and log.exists():
            rec = _REC_HEAD.size + 8 * state.dim
            data = log.read_bytes()
            for off in range(0, len(data) - rec + 1, rec):  # a torn last record is ignored
                version, arm, reward, cost = _REC_HEAD.unpack_from(data, off)
                if version <= state.version:
                    continue
                if version != state.version + 1:
                    raise BanditStoreError(f"{log}: gap in outcome log at version {version}")
                z = np.frombuffer(data, "<f8", state.dim, off + _REC_HEAD.size)
                state.apply(arm, z, reward, cost)
        return state

    def initialize(self, state: BanditState) -> BanditState:
        with self._lock:
            if self._state is None:
                self._state = state.copy()
                if self.path is not None:
                    self.snapshot()
            else:
                _check_compatible(self._state, state, str(self.path or "the store"))
            return self._state

    def _require(self) -> BanditState:
        if self._state is None:
            raise BanditStoreError("bandit store is empty: initialize it with a policy's state")
        return self._state

    def update(self, arm: int, z: np.ndarray, reward: float, cost: float) -> int:
        with self._lock:
            state = self._require()
            arm, z, reward, cost = _check_outcome(state, arm, z, reward, cost)
            state.apply(arm, z, reward, cost)
            if self.path is not None:
                if self._log is None:
                    self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open)
                self._log.write(_REC_HEAD.pack(state.version, arm, reward, cost) + z.tobytes())
                self._log.flush()
                if self.fsync:
                    os.fsync(self._log.fileno())
                if self.snapshot_every and state.version % self.snapshot_every == 0:
                    self.snapshot()
            return state.version

    def version(self) -> int:
        with self._lock:
            return -1 if self._state is None else self._state.version

    @contextmanager
    def read(self) -> Iterator[BanditState]:
        with self._lock:
            yield self._require()

    def snapshot(self) -> None:
        """Write the state atomically, then empty the log (replay skips older records)."""
        if self.path is None:
            return
        with self._lock:
            state = self._require()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, **state.to_arrays())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            if self._log is not None:
                self._log.close()
                self._log = None
            with open(self.log_path, "wb"):
                pass

    def close(self) -> None:
        with self._lock:
            if self._state is not None:
                self.snapshot()
            if self._log is not None:
                self._log.close()
                self._log = None


# ---- Redis -----------------------------------------------------------------------------------
_INIT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'fingerprint')
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'fingerprint', ARGV[2], 'data', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1])
return ARGV[2]
"""

#: KEYS[4] (optional): apply at most once per that hash (marked 'done'; -1 if it already was)
_UPDATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('bandit store is not initialised')
end
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
  if redis.call('HSETNX', KEYS[4], 'done', '1') == 0 then return -1 end
end
local v = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], '0-' .. v, 'a', ARGV[1], 'r', ARGV[2], 'c', ARGV[3], 'x', ARGV[4])
return v
"""

_COMPACT_LUA = """
local held = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local v = tonumber(ARGV[1])
if v > held then
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. (v + 1))
  return 1
end
return 0
"""


class RedisBanditStore(BanditStore):
    """Bandit state shared through Redis as an atomic, totally ordered outcome log."""

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", key_prefix: str = "costroute:bandit",
        compact_every: int | None = 1000, client=None, batch: int = 512,
    ) -> None:
        from router.state import redis_client

        self.url = url
        self.key_prefix = key_prefix
        self.compact_every = compact_every
        self.batch = batch
        self._r = client if client is not None else redis_client(url)
        self._snap = f"{key_prefix}:snap"
        self._ver = f"{key_prefix}:ver"
        self._stream = f"{key_prefix}:log"
        self._lock = threading.RLock()
        self._state: BanditState | None = None
        self._init = self._r.register_script(_INIT_LUA)
        self._update = self._r.register_script(_UPDATE_LUA)
        self._compact = self._r.register_script(_COMPACT_LUA)

    def _call(self, fn, *args, **kwargs):
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.exceptions.ResponseError as exc:
            raise BanditStoreError(f"redis bandit store {self.key_prefix!r}: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise BanditStoreError(f"redis at {self.url} unreachable ({exc})") from exc

    def _load_snapshot(self) -> BanditState:
        data = self._call(self._r.hget, self._snap, "data")
        if data is None:
            raise BanditStoreError(f"redis bandit store {self.key_prefix!r} is not initialised")
        return BanditState.from_bytes(data)

    def initialize(self, state: BanditState) -> BanditState:
        with self._lock:
            held = self._call(
                self._init, keys=[self._snap, self._ver],
                args=[state.version, state.fingerprint, state.to_bytes()],
            )
            held = held.decode() if isinstance(held, bytes) else str(held)
            if held != state.fingerprint:
                probe = state.copy()
                probe.fingerprint = held
                _check_compatible(probe, state, f"redis key prefix {self.key_prefix!r}")
            self._state = None
            self._sync()
            assert self._state is not None
            _check_compatible(self._state, state, f"redis key prefix {self.key_prefix!r}")
            return self._state

    def _sync(self) -> BanditState:
        """Fold outcomes this replica has not seen (one GET when nothing changed)."""
        if self._state is None:
            self._state = self._load_snapshot()
        state = self._state
        head = int(self._call(self._r.get, self._ver) or 0)
        while state.version < head:
            entries = self._call(
                self._r.xrange, self._stream, min=f"0-{state.version + 1}", max=f"0-{head}",
                count=self.batch,
            )
            if not entries or _seq(entries[0][0]) != state.version + 1:
                snap = self._load_snapshot()  # the log was compacted past us
                if snap.version <= state.version:
                    raise BanditStoreError(
                        f"redis bandit store {self.key_prefix!r}: outcome "
                        f"{state.version + 1} is missing from the log and the snapshot"
                    )
                self._state = state = snap
                continue
            for entry_id, fields in entries:
                if _seq(entry_id) != state.version + 1:
                    raise BanditStoreError(f"gap in redis outcome log at {entry_id!r}")
                z = np.frombuffer(fields[b"x"], "<f8")
                state.apply(int(fields[b"a"]), z, float(fields[b"r"]), float(fields[b"c"]))
        return state

    def update(self, arm: int, z: np.ndarray, reward: float, cost: float,
               once: str | None = None) -> int:
        """Append one outcome; the new version. With ``once`` (an existing Redis hash) it is
        applied at most once per that key: -1 when the key was already marked done."""
        with self._lock:
            state = self._state if self._state is not None else self._sync()
            arm, z, reward, cost = _check_outcome(state, arm, z, reward, cost)
        keys = [self._snap, self._ver, self._stream] + ([once] if once else [])
        v = int(self._call(
            self._update, keys=keys,
            args=[arm, repr(reward), repr(cost), z.astype("<f8").tobytes()],
        ))
        if v > 0 and self.compact_every and v % self.compact_every == 0:
            self.snapshot()
        return v

    def version(self) -> int:
        return int(self._call(self._r.get, self._ver) or -1)

    @contextmanager
    def read(self) -> Iterator[BanditState]:
        with self._lock:
            yield self._sync()

    def snapshot(self) -> None:
        """Publish this replica's folded state as the snapshot and trim the log behind it."""
        with self._lock:
            state = self._sync()
            self._call(
                self._compact, keys=[self._snap, self._stream],
                args=[state.version, state.to_bytes()],
            )

    def log_length(self) -> int:
        return int(self._call(self._r.xlen, self._stream))

    def reset(self) -> None:
        """Delete this prefix's bandit (snapshot, counter, log)."""
        with self._lock:
            self._call(self._r.delete, self._snap, self._ver, self._stream)
            self._state = None

    def close(self) -> None:
        self._r.close()


def _seq(entry_id: bytes | str) -> int:
    entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(entry_id.split("-", 1)[1])
