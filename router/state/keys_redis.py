"""Per-key spend and request-rate state in Redis, shared by gateway replicas (atomic Lua).

The reserve / settle / release protocol is the one of :mod:`router.state.keys_store`; the Lua
scripts are in :mod:`router.state.keys_lua`.

Redis unreachable: :class:`RedisKeyStore` keeps serving from local state (the last spend it
saw plus local changes) and pushes the changes made meanwhile once Redis answers again. Spend
settled during an outage is also appended, each entry with a unique id, to an fsynced journal
(``<state.dir>/keys-pending.jsonl``, the same :class:`~router.state.outcome_store.DiskBuffer`
the outage bandit updates use), so a replica that crashes during the outage pushes it at its
next start.

Every change to Redis is applied at most once: each reserve / settle / release call gets an
operation id, and the Lua script that applies it first checks and records that id (the
record ``<prefix>:spend-op:<id>``). A call whose reply is lost (Redis killed or restarted
after applying it, a socket timeout) is kept, with the same id, as a pending entry and
re-sent once Redis answers: a re-send of an operation Redis already applied returns the first
result instead of charging or releasing twice. A reservation whose reply was lost is re-sent
as "make sure it is held" (the request was served from local state) or "make sure it is not
held" (it was refused). Records start with a 30-day expiry (a crashed replica may push its
journal long after) and are cut to :data:`ACKED_TTL` seconds once this replica has the reply.

Reservations of a replica that dies: each replica also counts what it holds in its own
ledger ``<prefix>:held:<replica id>`` (key hash -> amount, changed in the same atomic step
as ``reserved``). The replica id is stable per state dir (``<state.dir>/replica-id``), so a
replica restarted after a SIGKILL first gives back everything its earlier life still held;
without that, the calls in flight at the kill would shrink the key's budget for good. That
give-back is recorded with the life's id (``<prefix>:held-life:<replica id>``), so a re-send
after a lost reply cannot give back what the new life has reserved since. Journaled spend of
the earlier life is then pushed as spend only (its reservations went back with the ledger).
With ``state.sync_outcomes`` the outcome writer charges a call's settle (:meth:`defer_settle`)
in the Lua step that stores its record, so a SIGKILL cannot leave one without the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import defaultdict, deque
from pathlib import Path

from router.state.keys_local import EPS, LocalKeyStore
from router.state.keys_lua import APPLY, APPLY_MANY, PUSH_BATCH, RATE, RELEASE_LEDGER, RESERVE

log = logging.getLogger("costroute.state")

#: how long an operation's record is kept before this replica has its reply (a journal
#: pushed within it is a no-op for what was already applied), and once it has it
SPEND_ID_TTL = 30 * 86400
ACKED_TTL = 60
JOURNAL_NAME = "keys-pending.jsonl"
#: at most this many acknowledged op ids are remembered for cutting their records' expiry
MAX_ACKS = 100_000
ACK_BATCH = 256


class RedisKeyStore:
    """Shared state for several gateway replicas (``redis.asyncio`` on the hot path)."""

    def __init__(self, url: str, prefix: str = "costroute", retry_seconds: float = 1.0,
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        from router.state import async_redis_client

        self.url = url
        self.prefix = prefix
        self.client = async_redis_client(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.replica_id = _replica_id(state_dir)
        self.life_id = uuid.uuid4().hex  # this process: the ledger is given back once per life
        self._held = f"{prefix}:held:{self.replica_id}"
        self._ledger_checked = False  # the previous life's ledger given back yet?
        self._release_ledger = self.client.register_script(RELEASE_LEDGER)
        self._reserve = self.client.register_script(RESERVE)
        self._apply = self.client.register_script(APPLY)
        self._apply_many = self.client.register_script(APPLY_MANY)
        self._rate = self.client.register_script(RATE)
        self.retry_seconds = retry_seconds
        self.healthy = True
        self._next_try = 0.0
        # local state for outages: last seen (spent, reserved) and changes not yet pushed
        self.local = LocalKeyStore(None)
        self._known: dict[str, tuple[float, float]] = {}
        self._pending: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        # operations not known to be in Redis, oldest first: {"id", "k", "s" (spent delta),
        # "r" (reserved delta), "m" (mode, see APPLY), "j" (journaled)}
        self._entries: list[dict] = []
        self._acked: deque[str] = deque(maxlen=MAX_ACKS)  # op ids whose reply came back
        self._acking = False
        self._journal = None
        self._push_lock = asyncio.Lock()
        # settles handed to the outcome writer with their records (see defer_settle): op id
        # -> (key, spent, reserved delta), counted in ``_pending`` until stored
        self._deferred: dict[str, tuple[str, float, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        if state_dir is not None:
            from router.state.outcome_store import DiskBuffer

            self._journal = DiskBuffer(Path(state_dir) / JOURNAL_NAME)
            for e in self._journal.read():
                try:  # an earlier life's spend: its reservations go back with its ledger
                    entry = {"id": str(e["id"]), "k": str(e["k"]), "s": float(e["s"]),
                             "r": 0.0, "m": "once", "j": True}
                except (KeyError, TypeError, ValueError):
                    log.warning("skipping a malformed spend journal entry: %r", e)
                    continue
                self._entries.append(entry)
                self._pending[entry["k"]][0] += entry["s"]
            if self._entries:
                log.info("%d spend entries of an earlier outage to push", len(self._entries))

    def _key(self, key: str) -> str:
        return f"{self.prefix}:key:{key}"

    def _op(self, op_id: str) -> str:
        return f"{self.prefix}:spend-op:{op_id}"

    def _usable(self) -> bool:
        return self.healthy or time.monotonic() >= self._next_try

    async def _down(self, exc: Exception) -> None:
        if self.healthy:
            log.warning("redis key store unavailable, using local state: %s", exc)
        self.healthy = False
        self._next_try = time.monotonic() + self.retry_seconds
        # idle connections to a Redis that went away would each fail once more: drop them
        with contextlib.suppress(Exception):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    def _queue(self, key: str, spent: float, reserved: float, mode: str,
               op_id: str | None = None, journal: bool = False) -> None:
        """Keep an operation for a later push (its effect counted locally meanwhile)."""
        entry = {"id": op_id or uuid.uuid4().hex, "k": key, "s": float(spent),
                 "r": float(reserved), "m": mode, "j": journal and self._journal is not None}
        if entry["j"]:
            assert self._journal is not None
            self._journal.append([{"id": entry["id"], "k": key, "s": entry["s"]}])  # fsynced
        self._entries.append(entry)
        if mode != "drop":
            p = self._pending[key]
            p[0] += entry["s"]
            p[1] += entry["r"]

    async def _sync_pending(self) -> None:
        """Push what the outage left, each operation once, oldest first.

        One push at a time: concurrent requests arriving as Redis returns would otherwise
        push the same entries twice and trim entries appended meanwhile from the journal."""
        async with self._push_lock:
            await self._push_pending()

    async def _push_pending(self) -> None:
        pushed = journaled = 0
        try:
            while self._entries:
                batch = self._entries[:PUSH_BATCH]
                args: list[str | int] = [f"{self.prefix}:key:", f"{self.prefix}:spend-op:",
                                         SPEND_ID_TTL]
                for e in batch:
                    amount = e["r"] if e["m"] == "once" else abs(e["r"])
                    args += [e["id"], e["k"], repr(e["s"]), repr(amount), e["m"]]
                rows = await self._apply_many(keys=[self._held], args=args)
                del self._entries[:len(batch)]
                for kh, spent, reserved in rows:
                    self._known[_text(kh)] = (float(spent), float(reserved))
                for e in batch:
                    self._acked.append(e["id"])
                    if e["m"] != "drop":
                        p = self._pending[e["k"]]
                        p[0] -= e["s"]
                        p[1] -= e["r"]
                    journaled += e["j"]
                pushed += len(batch)
        finally:
            if journaled and self._journal is not None:
                self._journal.drop_first(journaled)
            for key in [k for k, p in self._pending.items()
                        if abs(p[0]) < EPS and abs(p[1]) < EPS]:
                del self._pending[key]
            if pushed:
                log.info("pushed %d operations of a redis outage (%d journaled spend)",
                         pushed, journaled)

    async def _give_back_ledger(self) -> None:
        """What this replica held when it last died goes back to its keys (once, at start)."""
        if self._ledger_checked:
            return
        n = int(await self._release_ledger(
            keys=[self._held, f"{self.prefix}:held-life:{self.replica_id}"],
            args=[f"{self.prefix}:key:", self.life_id, SPEND_ID_TTL]))
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

    async def _ack(self, op_id: str) -> None:
        """The reply of ``op_id`` came back; every :data:`ACK_BATCH` of them, cut their
        records' expiry now (not only in housekeeping: a SIGKILL forgets what is queued)."""
        self._acked.append(op_id)
        if len(self._acked) >= ACK_BATCH and not self._acking:
            self._acking = True
            try:
                await self._flush_acks()
            except Exception as exc:  # kept queued; housekeeping tries again
                if not _is_conn_error(exc):
                    raise
            finally:
                self._acking = False

    async def _flush_acks(self) -> None:
        """Cut the expiry of the records of operations whose reply came back."""
        ids = [self._acked.popleft() for _ in range(min(len(self._acked), 5000))]
        if not ids:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for op_id in ids:
                pipe.expire(self._op(op_id), ACKED_TTL)
            await pipe.execute()
        except Exception:
            self._acked.extendleft(reversed(ids))
            raise

    async def aflush(self) -> None:
        """Push outage changes now if Redis answers (called by the gateway's housekeeping)."""
        if not self._usable():
            return
        try:
            if self._entries or not self.healthy or not self._ledger_checked:
                await self._ok()
            await self._flush_acks()
        except Exception as exc:
            if not _is_conn_error(exc):
                raise
            await self._down(exc)

    async def areserve(self, key: str, amount: float, budget: float) -> bool:
        op_id = uuid.uuid4().hex
        tried = False
        if self._usable():
            try:
                await self._ok()
                tried = True
                ok, spent, reserved = await self._reserve(
                    keys=[self._key(key), self._held, self._op(op_id)],
                    args=[repr(float(amount)), repr(float(budget)), key, SPEND_ID_TTL])
                await self._ack(op_id)
                self._known[key] = (float(spent), float(reserved))
                return bool(int(ok))
            except Exception as exc:  # redis.ConnectionError is not the builtin one
                if not _is_conn_error(exc):
                    raise
                await self._down(exc)
        spent, reserved = self._known.get(key, (0.0, 0.0))
        d_spent, d_reserved = self._pending[key]
        ok = spent + reserved + d_spent + d_reserved + amount <= budget + EPS
        if ok:  # held here; held in Redis too once pushed (if the lost attempt did not)
            self._queue(key, 0.0, float(amount), "hold", op_id)
        elif tried:  # refused here: if the lost attempt did hold it, give it back
            self._queue(key, 0.0, float(amount), "drop", op_id)
        return ok

    def settle_target(self) -> tuple[str, str, str]:
        """(key prefix, op record prefix, held ledger): where a record's settles go."""
        return f"{self.prefix}:key:", f"{self.prefix}:spend-op:", self._held

    def defer_settle(self, key: str, reserved: float, actual: float) -> list[str]:
        """A settle charged in the atomic step that stores its outcome record (the outcome
        writer, :class:`~router.state.outcome_store.RedisOutcomeStore`), counted locally
        until :meth:`settled`: the operation ``[op id, key hash, spent, reserved delta]``."""
        op_id = uuid.uuid4().hex
        self._loop = asyncio.get_running_loop()
        self._deferred[op_id] = (key, float(actual), -float(reserved))
        p = self._pending[key]
        p[0] += float(actual)
        p[1] -= float(reserved)
        return [op_id, key, repr(float(actual)), repr(-float(reserved))]

    def _forget_deferred(self, op_ids: list[str]) -> None:
        for op_id in op_ids:
            op = self._deferred.pop(op_id, None)
            if op is not None:
                p = self._pending[op[0]]
                p[0] -= op[1]
                p[1] -= op[2]

    def settled(self, op_ids: list[str]) -> None:
        """The outcome writer stored these deferred settles (any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._forget_deferred, op_ids)

    async def asettle_op(self, op: list[str]) -> None:
        """Charge a deferred settle whose record was never handed over (same op id: once,
        also if its record reaches the store after all)."""
        self._forget_deferred([op[0]])
        await self._change(op[1], float(op[2]), -float(op[3]), journal=True, op_id=op[0])

    async def _change(self, key: str, spent: float, reserved: float, journal: bool,
                      op_id: str | None = None) -> None:
        """Settle (``spent`` > 0) or release a reservation of ``reserved``, once."""
        op_id = op_id or uuid.uuid4().hex
        if self._usable():
            try:
                await self._ok()
                _, new_spent, new_reserved = await self._apply(
                    keys=[self._key(key), self._held, self._op(op_id)],
                    args=[repr(float(spent)), repr(-float(reserved)), key, SPEND_ID_TTL,
                          "once"])
                await self._ack(op_id)
                self._known[key] = (float(new_spent), float(new_reserved))
                return
            except Exception as exc:
                if not _is_conn_error(exc):
                    raise
                await self._down(exc)
        self._queue(key, spent, -float(reserved), "once", op_id, journal=journal)

    async def asettle(self, key: str, reserved: float, actual: float) -> None:
        await self._change(key, float(actual), reserved, journal=True)

    async def arelease(self, key: str, reserved: float) -> None:
        await self._change(key, 0.0, reserved, journal=False)

    async def ausage(self, key: str) -> tuple[float, float]:
        if self._usable():
            try:
                await self._ok()
                spent, reserved = await self.client.hmget(self._key(key), "spent", "reserved")
                self._known[key] = (float(spent or 0), float(reserved or 0))
            except Exception as exc:
                if not _is_conn_error(exc):
                    raise
                await self._down(exc)
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
                await self._down(exc)
        return self.local.hit(key, rpm)

    def persist(self, names: dict[str, str] | None = None) -> None:
        """Nothing to do: Redis holds the state."""

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            if self.healthy:
                await self._flush_acks()
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_conn_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError | TimeoutError)
