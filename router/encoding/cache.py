"""Persistent on-disk cache of embeddings (SQLite, WAL mode).

Rows are keyed by ``(model, view, sha256(embedded text))`` and hold float32 vectors. The
hash is taken over the text *after* the text view was applied, so a change in a view's
rule can never serve stale vectors; ``view`` is kept in the key for bookkeeping.

Safety:

* several processes may read and write at once: WAL mode, a busy timeout, and every
  write is one ``BEGIN IMMEDIATE`` transaction of ``INSERT OR IGNORE`` rows;
* a killed process leaves the database consistent (SQLite's atomic commit);
* on open the file gets ``PRAGMA quick_check``; a corrupt file (or one found corrupt later,
  mid-operation) is moved aside as ``<name>.corrupt-<time>`` with a logged warning and a
  fresh cache is started. A file lock serialises open/check/rebuild between processes.

The cache is best effort: if it cannot be used (e.g. read-only directory) it logs a
warning and behaves as an always-empty cache, so encoding never fails because of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DB_NAME = "embeddings.sqlite"
SCHEMA_VERSION = 1
_CHUNK = 500  # host parameters per SELECT ... IN (...)
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def default_cache_dir() -> Path:
    """``$COSTROUTE_CACHE_DIR`` or ``~/.cache/costroute/embeddings``."""
    env = os.environ.get("COSTROUTE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "costroute" / "embeddings"


def text_hash(text: str) -> bytes:
    """sha256 digest (32 bytes) of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CORRUPT_CODES:
        return True
    msg = str(exc).lower()
    return "malformed" in msg or "not a database" in msg


class EmbeddingCache:
    """Bulk get/put of float32 vectors for one ``(model, view)`` pair at a time.

    Parameters: ``cache_dir`` (default :func:`default_cache_dir`), ``check`` = "quick"
    (``PRAGMA quick_check`` on open), "full" (``integrity_check``) or "none".
    The database is opened lazily, and reopened after a fork.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, check: str = "quick") -> None:
        if check not in ("quick", "full", "none"):
            raise ValueError(f"check must be 'quick', 'full' or 'none', got {check!r}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.path = self.cache_dir / DB_NAME
        self.check = check
        self.disabled = False
        self.rebuilt = 0  # how many times a corrupt file was moved aside by this object
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()  # one connection, shared by the process's threads

    # -- connection management -------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self.cache_dir / (DB_NAME + ".lock")
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 60000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"could not switch {self.path} to WAL mode ({mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS embeddings ("
            " model TEXT NOT NULL, view TEXT NOT NULL, hash BLOB NOT NULL,"
            " dim INTEGER NOT NULL, vec BLOB NOT NULL, created REAL NOT NULL,"
            " PRIMARY KEY (model, view, hash)) WITHOUT ROWID"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None or version[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"unexpected cache schema version {version}")
        if self.check != "none":
            pragma = "quick_check" if self.check == "quick" else "integrity_check"
            rows = conn.execute(f"PRAGMA {pragma}").fetchall()
            if rows != [("ok",)]:
                raise sqlite3.DatabaseError(f"database disk image is malformed: {rows[:3]}")
        return conn

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}-{os.getpid()}")
        log.warning(
            "embedding cache %s is corrupt (%s); moved it to %s and starting a fresh cache",
            self.path, reason, target,
        )
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(target) + suffix))
        self.rebuilt += 1

    def _open(self) -> sqlite3.Connection | None:
        if self.disabled:
            return None
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # a connection inherited over fork must not be used
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with self._file_lock():
                try:
                    conn = self._connect()
                except sqlite3.DatabaseError as exc:
                    if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                        raise
                    self._move_aside(str(exc))
                    conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            log.warning("embedding cache at %s is unusable (%s); caching disabled", self.path, exc)
            self.disabled = True
            return None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _recover(self, exc: sqlite3.Error) -> bool:
        """After an error mid-operation: rebuild if it was corruption. True = retry."""
        self.close()
        if not _is_corruption(exc):
            log.warning("embedding cache error (%s); continuing without it for this call", exc)
            return False
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with self._file_lock():
                # another process may already have replaced the file: only move it if bad
                try:
                    self._connect().close()
                except sqlite3.DatabaseError as again:
                    self._move_aside(str(again))
        except (OSError, sqlite3.Error) as err:
            log.warning("embedding cache at %s is unusable (%s); caching disabled", self.path, err)
            self.disabled = True
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bulk operations ---------------------------------------------------------------
    def get_many(self, model: str, view: str, hashes: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """Vectors found for ``hashes`` (missing keys are simply absent from the result)."""
        unique = list(dict.fromkeys(hashes))
        with self._lock:
            return self._get_many(model, view, unique)

    def _get_many(self, model: str, view: str, unique: list[bytes]) -> dict[bytes, np.ndarray]:
        for attempt in range(2):
            conn = self._open()
            if conn is None or not unique:
                return {}
            try:
                return self._select(conn, model, view, unique)
            except sqlite3.Error as exc:
                if not self._recover(exc) or attempt:
                    return {}
        return {}

    def _select(
        self, conn: sqlite3.Connection, model: str, view: str, hashes: list[bytes]
    ) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        conn.execute("BEGIN")  # one read snapshot for all chunks
        try:
            for start in range(0, len(hashes), _CHUNK):
                chunk = hashes[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT hash, dim, vec FROM embeddings WHERE model = ? AND view = ? "
                    f"AND hash IN ({marks})",
                    (model, view, *chunk),
                )
                for h, dim, blob in rows:
                    if len(blob) == 4 * dim:  # a short blob is treated as a miss
                        found[bytes(h)] = np.frombuffer(blob, dtype=np.float32).copy()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return found

    def put_many(
        self, model: str, view: str, items: Iterable[tuple[bytes, np.ndarray]]
    ) -> int:
        """Store vectors (first writer wins on a duplicate key). Returns rows written."""
        now = time.time()
        rows = []
        for h, vec in items:
            v = np.ascontiguousarray(vec, dtype=np.float32).ravel()
            rows.append((model, view, bytes(h), int(v.size), v.tobytes(), now))
        with self._lock:
            return self._put_rows(rows)

    def _put_rows(self, rows: list[tuple]) -> int:
        for attempt in range(2):
            conn = self._open()
            if conn is None or not rows:
                return 0
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = conn.total_changes
                    conn.executemany(
                        "INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows
                    )
                    written = conn.total_changes - before
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                return written
            except sqlite3.Error as exc:
                if not self._recover(exc) or attempt:
                    return 0
        return 0

    # -- inspection -------------------------------------------------------------------
    def count(self, model: str | None = None, view: str | None = None) -> int:
        """Number of stored vectors (optionally for one model and/or view)."""
        with self._lock:
            return self._count(model, view)

    def _count(self, model: str | None, view: str | None) -> int:
        conn = self._open()
        if conn is None:
            return 0
        sql, args = "SELECT COUNT(*) FROM embeddings WHERE 1", []
        if model is not None:
            sql, args = sql + " AND model = ?", [*args, model]
        if view is not None:
            sql, args = sql + " AND view = ?", [*args, view]
        try:
            return int(conn.execute(sql, args).fetchone()[0])
        except sqlite3.Error as exc:
            self._recover(exc)
            return 0

    def integrity_ok(self) -> bool:
        """Run ``PRAGMA integrity_check`` now."""
        with self._lock:
            conn = self._open()
            if conn is None:
                return False
            try:
                return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            except sqlite3.Error:
                return False
