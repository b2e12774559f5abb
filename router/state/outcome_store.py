"""Outcome records of the gateway: an embedded SQLite store, or a Redis stream with a disk buffer.

Events are JSON-able dicts with ``event`` = ``"outcome"`` (one per request, keyed by
``request_id``) or ``"feedback"`` (a later reward for a request). Every store offers
``write(events)`` and ``records()`` (outcomes in time order, each with its latest feedback
merged in, duplicates removed).

:class:`BufferedStore` puts a primary store (Redis) in front of an append-only JSONL file:
when a write fails the events go to the file (fsynced) and are flushed, in order, once the
primary answers again, so an outage loses nothing. A flush that fails half way may write
some events twice; ``records()`` deduplicates by request id.

An outcome event may carry its call's key settles (``spend_ops``, with op ids; see
:meth:`RedisOutcomeStore.settle_with_records`): the Redis store writes the record and charges
them in one Lua script, each op once however often the batch is re-sent; buffered during an
outage, they travel with their record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("costroute.state")

DB_NAME = "outcomes.sqlite"
BUFFER_NAME = "outcome-buffer.jsonl"
#: an outcome event's key settles, charged with it (``[op id, key hash, spent, reserved
#: delta]`` each; router.state.keys_store), not part of the stored record
SPEND_OPS = "spend_ops"


class StoreUnavailable(Exception):
    """The store cannot be reached right now (the caller buffers and retries)."""


class OutcomeStore(Protocol):
    def write(self, events: list[dict[str, Any]]) -> None: ...

    def events(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


def merge_events(events: Iterable[dict[str, Any]],
                 sources: set[str] | None = None) -> list[dict[str, Any]]:
    """Outcomes in first-seen order, deduplicated by request id, the latest feedback merged in.

    ``sources``: only feedback events of these sources count (``source`` absent: ``api``);
    None: all. Feedback whose request has no outcome event is kept as a record marked
    ``outcome_missing``.
    """
    outcomes: dict[str, dict[str, Any]] = {}
    feedback: dict[str, dict[str, Any]] = {}
    for ev in events:
        rid = ev.get("request_id")
        if not rid:
            continue
        if ev.get("event") == "feedback":
            if sources is not None and ev.get("source", "api") not in sources:
                continue
            prev = feedback.get(rid)
            if prev is None or (ev.get("ts") or 0) >= (prev.get("ts") or 0):
                feedback[rid] = {k: ev[k] for k in ("reward", "ts", "source") if k in ev}
        else:
            if rid in outcomes:
                outcomes[rid].update(ev)
            else:
                outcomes[rid] = dict(ev)
    out = []
    for rid, rec in outcomes.items():
        rec.pop("event", None)
        if rid in feedback:
            rec["feedback"] = feedback[rid]
        out.append(rec)
    for rid, fb in feedback.items():
        if rid not in outcomes:
            out.append({"request_id": rid, "feedback": fb, "outcome_missing": True})
    return out


class SQLiteOutcomeStore:
    """Embedded store: ``<dir>/outcomes.sqlite`` (WAL), one connection per thread."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        self._local = threading.local()
        con = self._con()
        con.executescript(
            """
            CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                request_id TEXT NOT NULL,
                event TEXT NOT NULL,
                ts REAL,
                body TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS events_request ON events (request_id);
            """
        )

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def write(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        con = self._con()
        rows = [(str(e.get("request_id", "")), str(e.get("event", "outcome")), e.get("ts"),
                 json.dumps(e, separators=(",", ":"))) for e in events]
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                "INSERT INTO events (request_id, event, ts, body) VALUES (?, ?, ?, ?)", rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def events(self) -> Iterator[dict[str, Any]]:
        cur = self._con().execute("SELECT body FROM events ORDER BY seq")
        for (body,) in cur:
            yield json.loads(body)

    def records(self) -> list[dict[str, Any]]:
        return merge_events(self.events())

    healthy = True

    def maintain(self) -> None:
        """Nothing to retry for a local file."""

    def pending(self) -> int:
        return 0

    def count(self) -> int:
        return int(self._con().execute(
            "SELECT COUNT(DISTINCT request_id) FROM events WHERE event='outcome'").fetchone()[0])

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


class RedisOutcomeStore:
    """A Redis stream (``XADD``), one entry per event with the JSON under field ``e``."""

    def __init__(self, url: str, stream: str = "costroute:outcomes",
                 maxlen: int | None = None) -> None:
        from router.state import redis_client
        from router.state.keys_lua import RECORD

        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.client = redis_client(url)
        self._record = self.client.register_script(RECORD)
        #: (key prefix, op record prefix, held ledger) of the key store whose settles the
        #: records carry (``spend_ops``), see :meth:`settle_with_records`
        self.spend_target: tuple[str, str, str] | None = None
        #: called with the op ids of the settles once they are stored (or were before)
        self.on_settled: Any = None
        self._acked: list[str] = []

    def settle_with_records(self, key_prefix: str, op_prefix: str, held: str,
                            on_settled: Any = None) -> None:
        """Charge the settles an event carries (``spend_ops``) in the step that stores it."""
        self.spend_target = (key_prefix, op_prefix, held)
        self.on_settled = on_settled

    def write(self, events: list[dict[str, Any]]) -> None:
        if not events and not self._acked:
            return
        import redis

        from router.state.keys_store import ACKED_TTL, SPEND_ID_TTL

        key_prefix, op_prefix, held = self.spend_target or ("", "", "")
        acked = self._acked[:5000]
        args: list[Any] = [key_prefix, op_prefix, SPEND_ID_TTL, ACKED_TTL, self.maxlen or 0,
                           len(acked), *acked]
        ids = []
        for e in events:
            ops = (e.get(SPEND_OPS) or ()) if self.spend_target else ()
            body = {k: v for k, v in e.items() if k != SPEND_OPS}
            args += [json.dumps(body, separators=(",", ":")), len(ops)]
            for op in ops:
                args += op
                ids.append(op[0])
        try:
            self._record(keys=[self.stream, held or f"{self.stream}:no-held"], args=args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc
        del self._acked[:len(acked)]
        self._acked += ids
        if ids and self.on_settled is not None:
            self.on_settled(ids)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def events(self) -> Iterator[dict[str, Any]]:
        import redis

        start = "-"
        try:
            while True:
                batch = self.client.xrange(self.stream, min=start, max="+", count=1000)
                if not batch:
                    return
                for _entry_id, fields in batch:
                    raw = fields.get(b"e") or fields.get("e")
                    if raw is not None:
                        yield json.loads(raw)
                last = batch[-1][0]
                last = last.decode() if isinstance(last, bytes) else last
                start = "(" + last
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc

    def records(self) -> list[dict[str, Any]]:
        return merge_events(self.events())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._acked:  # cut the expiry of the last settles' op records
                self.write([])
        with contextlib.suppress(Exception):
            self.client.close()


class DiskBuffer:
    """Append-only JSONL file of events not yet in the primary store (fsynced writes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def append(self, events: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        with self.lock:
            if not self.path.exists():
                return []
            lines = self.path.read_text(encoding="utf-8").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a crash
                log.warning("%s: skipping a malformed buffered line", self.path)
        return out

    def __len__(self) -> int:
        with self.lock:
            if not self.path.exists():
                return 0
            with open(self.path, "rb") as f:
                return sum(1 for _ in f)

    def replace(self, events: list[dict[str, Any]]) -> None:
        """Make the file hold exactly ``events`` (atomically: temp file, fsync, rename)."""
        with self.lock:
            if not events:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def drop_first(self, n: int) -> None:
        """Remove the first ``n`` lines (those flushed), keeping any appended meanwhile."""
        with self.lock:
            if not self.path.exists():
                return
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            rest = lines[n:]
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(rest)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            if not rest:
                self.path.unlink(missing_ok=True)


class BufferedStore:
    """Primary store with a disk buffer: never loses an event while the primary is down."""

    def __init__(self, primary: RedisOutcomeStore, buffer_path: str | os.PathLike[str],
                 batch: int = 500, retry_seconds: float = 1.0) -> None:
        self.primary = primary
        self.buffer = DiskBuffer(buffer_path)
        self.batch = batch
        self.retry_seconds = retry_seconds
        self.healthy = True
        self._next_try = 0.0

    def write(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        if not self.healthy and time.monotonic() < self._next_try:
            self.buffer.append(events)
            return
        if len(self.buffer) and not self.flush():
            self.buffer.append(events)  # keep order behind what is already buffered
            return
        try:
            self.primary.write(events)
            self.healthy = True
        except StoreUnavailable as exc:
            if self.healthy:
                log.warning("outcome store unavailable, buffering to %s: %s",
                            self.buffer.path, exc)
            self._down()
            self.buffer.append(events)

    def adopt_earlier_life(self) -> None:
        """Buffered settles of an earlier life of this replica are pushed as spend only:
        its reservations go back with its held ledger (router.state.keys_store)."""
        events = self.buffer.read()
        if any(e.get(SPEND_OPS) for e in events):
            for e in events:
                for op in e.get(SPEND_OPS) or ():
                    op[3] = "0"
            self.buffer.replace(events)

    def _down(self) -> None:
        self.healthy = False
        self._next_try = time.monotonic() + self.retry_seconds

    def maintain(self) -> None:
        """Called periodically: retry the flush of buffered events."""
        if (self.healthy or time.monotonic() >= self._next_try) and len(self.buffer):
            self.flush()

    def flush(self) -> bool:
        """Move buffered events to the primary; True when the buffer is empty after."""
        pending = self.buffer.read()
        done = 0
        try:
            while done < len(pending):
                chunk = pending[done : done + self.batch]
                self.primary.write(chunk)
                done += len(chunk)
        except StoreUnavailable:
            self._down()
        if done:
            self.buffer.drop_first(done)
            log.info("flushed %d buffered outcome events to the primary store", done)
        if done == len(pending):
            self.healthy = True
            return len(self.buffer) == 0
        return False

    def pending(self) -> int:
        return len(self.buffer)

    def events(self) -> Iterator[dict[str, Any]]:
        yield from self.primary.events()
        yield from self.buffer.read()

    def records(self) -> list[dict[str, Any]]:
        return merge_events(self.events())

    def close(self) -> None:
        self.primary.close()


def open_outcome_store(state_dir: str | os.PathLike[str], redis_url: str | None = None,
                       stream: str = "costroute:outcomes") -> SQLiteOutcomeStore | BufferedStore:
    """The store a gateway (or ``router logs export``) uses for a ``state:`` config."""
    if redis_url:
        return BufferedStore(RedisOutcomeStore(redis_url, stream),
                             Path(state_dir) / BUFFER_NAME)
    return SQLiteOutcomeStore(state_dir)
