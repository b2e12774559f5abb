"""The Redis spend ledger: the embedded ledger's arithmetic as atomic Lua scripts.

Part of :mod:`router.budget` (the module docstring there describes the whole policy).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from router.budget.ledger import Accounts, AccountView, SpendLedger
from router.budget.spec import BudgetError

_LUA_COMMON = """
local function num(x, d) if x then return tonumber(x) end return d end
local function fmt(x) return string.format('%.17g', x) end
local FIELDS = {'spent','reserved','queries','window','bin','bin_start','start','total'}
local function load(key, now)
  local h = redis.call('HMGET', key, unpack(FIELDS))
  return {spent=num(h[1],0), reserved=num(h[2],0), queries=num(h[3],0), window=num(h[4],0),
          bin=num(h[5],0), bin_start=num(h[6],0), start=num(h[7],now), total=num(h[8],0)}
end
local function store(key, a)
  redis.call('HSET', key, 'spent', fmt(a.spent), 'reserved', fmt(a.reserved),
    'queries', fmt(a.queries), 'window', fmt(a.window), 'bin', fmt(a.bin),
    'bin_start', fmt(a.bin_start), 'start', fmt(a.start), 'total', fmt(a.total))
end
local function advance(a, amount, horizon, clock, nbins, renew, now, count)
  local w, k = 0, 0
  if horizon > 0 then
    local p
    if clock == 0 then p = a.queries / horizon else p = (now - a.start) / horizon end
    if p < 0 then p = 0 end
    local frac = p
    if renew == 1 then w = math.floor(p); frac = p - w end
    k = math.floor(frac * nbins)
    if k > nbins - 1 then k = nbins - 1 end
  end
  if w ~= a.window then
    a.spent = 0; a.window = w; a.bin = k; a.bin_start = a.reserved
  elseif k ~= a.bin then
    a.bin = k; a.bin_start = a.spent + a.reserved
  end
  if count == 1 then a.queries = a.queries + 1 end
end
local function unhold(res, exp, rid, prefix)
  local rec = redis.call('HGET', res, rid)
  if not rec then return end
  local sep = string.find(rec, '|', 1, true)
  local amount = tonumber(string.sub(rec, 1, sep - 1))
  for name in string.gmatch(string.sub(rec, sep + 1), '[^,]+') do
    local key = prefix .. name
    if redis.call('EXISTS', key) == 1 then
      local r = tonumber(redis.call('HGET', key, 'reserved') or '0') - amount
      if r < 0 then r = 0 end
      redis.call('HSET', key, 'reserved', fmt(r))
    end
  end
  redis.call('HDEL', res, rid)
  redis.call('ZREM', exp, rid)
end
local function reap(res, exp, now, prefix)
  local ids = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  for _, rid in ipairs(ids) do unhold(res, exp, rid, prefix) end
end
-- a call's op id: recorded (with an expiry) so that a re-sent call is applied once
local function first_time(op, ttl)
  if redis.call('SET', op, '1', 'NX', 'EX', ttl) then return true end
  return false
end
-- KEYS: res, exp, account keys...; ARGV: now, prefix, extra, then 5 spec fields per account
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
local nacc = #KEYS - 2
local function spec(i)
  local o = 3 + (i - 1) * 5
  return tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]),
         tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
end
"""

_BEGIN_LUA = _LUA_COMMON + """
reap(KEYS[1], KEYS[2], now, prefix)
local count = tonumber(ARGV[3])
if count == 1 and not first_time(ARGV[#ARGV - 1], ARGV[#ARGV]) then count = 0 end
local out = {}
for i = 1, nacc do
  local amount, horizon, clock, nbins, renew = spec(i)
  local a = load(KEYS[i + 2], now)
  advance(a, amount, horizon, clock, nbins, renew, now, count)
  store(KEYS[i + 2], a)
  table.insert(out, {fmt(a.spent), fmt(a.reserved), fmt(a.queries), fmt(a.window),
                     fmt(a.bin), fmt(a.bin_start), fmt(a.total)})
end
return out
"""

_RESERVE_LUA = _LUA_COMMON + """
reap(KEYS[1], KEYS[2], now, prefix)
local amount_req = tonumber(ARGV[3])
local rid, ttl, names = ARGV[#ARGV - 2], tonumber(ARGV[#ARGV - 1]), ARGV[#ARGV]
if redis.call('HEXISTS', KEYS[1], rid) == 1 then return 1 end  -- a re-sent reserve
local accts = {}
for i = 1, nacc do
  local amount, horizon, clock, nbins, renew = spec(i)
  local a = load(KEYS[i + 2], now)
  advance(a, amount, horizon, clock, nbins, renew, now, 0)
  store(KEYS[i + 2], a)
  if a.spent + a.reserved + amount_req > amount then return 0 end
  accts[i] = a
end
for i = 1, nacc do
  accts[i].reserved = accts[i].reserved + amount_req
  store(KEYS[i + 2], accts[i])
end
redis.call('HSET', KEYS[1], rid, fmt(amount_req) .. '|' .. names)
redis.call('ZADD', KEYS[2], now + ttl, rid)
return 1
"""

_SETTLE_LUA = _LUA_COMMON + """
local actual = tonumber(ARGV[3])
local rid = ARGV[#ARGV - 2]
if not first_time(ARGV[#ARGV - 1], ARGV[#ARGV]) then return 1 end  -- a re-sent settle
unhold(KEYS[1], KEYS[2], rid, prefix)
for i = 1, nacc do
  local amount, horizon, clock, nbins, renew = spec(i)
  local a = load(KEYS[i + 2], now)
  advance(a, amount, horizon, clock, nbins, renew, now, 0)
  a.spent = a.spent + actual
  a.total = a.total + actual
  store(KEYS[i + 2], a)
end
return 1
"""


class RedisLedger(SpendLedger):
    """Spend ledger in Redis: every check-and-update is one Lua script (atomic).

    Keys: ``<prefix>:acct:<account>`` (hash: spent, reserved, queries, window, bin,
    bin_start, start, total; floats written with 17 significant digits so Python and Lua
    do the same double arithmetic), ``<prefix>:res`` (reservation id -> "amount|accounts")
    and ``<prefix>:resexp`` (expiry times). Freeing an expired reservation touches account
    keys that the script derives from the record, so this needs a standalone Redis (or
    one hash slot), not a sharded cluster.

    Each call is applied at most once: ``begin`` and ``settle`` record an op id
    (``<prefix>:op:<id>``, kept :attr:`OP_TTL` seconds), ``reserve`` is keyed by its
    reservation id; a call that fails on a connection error or timeout (its reply may be
    lost after Redis applied it) is re-sent once with the same ids, which returns the first
    result instead of counting, holding or charging twice.
    """

    #: how long a call's op id is remembered (its re-send follows within socket timeouts)
    OP_TTL = 120

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", key_prefix: str = "costroute:budget",
                 client=None) -> None:
        from router.state import redis_client

        self.url = url
        self.key_prefix = key_prefix
        self._r = client if client is not None else redis_client(url)
        self._acct_prefix = f"{key_prefix}:acct:"
        self._res = f"{key_prefix}:res"
        self._exp = f"{key_prefix}:resexp"
        self._begin = self._r.register_script(_BEGIN_LUA)
        self._reserve = self._r.register_script(_RESERVE_LUA)
        self._settle = self._r.register_script(_SETTLE_LUA)

    def _run(self, script, accounts: Accounts, now: float, extra: str, tail: Sequence[str] = ()):
        import redis

        keys = [self._res, self._exp, *(self._acct_prefix + n for n, _ in accounts)]
        args = [repr(float(now)), self._acct_prefix, extra]
        for _, spec in accounts:
            args += spec.lua_args()
        for attempt in (0, 1):  # once more on a lost reply: the same ids make it harmless
            try:
                return script(keys=keys, args=[*args, *tail])
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                if attempt:
                    raise BudgetError(f"budget ledger in redis at {self.url}: {exc}") from exc
            except redis.exceptions.RedisError as exc:
                raise BudgetError(f"budget ledger in redis at {self.url}: {exc}") from exc
        raise AssertionError("unreachable")

    def _op(self) -> list[str]:
        """A fresh op id's record key and expiry (the last two script arguments)."""
        return [f"{self.key_prefix}:op:{uuid.uuid4().hex}", str(self.OP_TTL)]

    def _views(self, rows, accounts: Accounts) -> list[AccountView]:
        out = []
        for row, (name, spec) in zip(rows, accounts, strict=True):
            spent, reserved, queries, window, bin_, bin_start, total = (float(v) for v in row)
            out.append(AccountView(name, spec.amount, spent, reserved, int(queries), int(window),
                                   int(bin_), bin_start, spec.n_bins, total))
        return out

    def begin(self, accounts: Accounts, now: float) -> list[AccountView]:
        return self._views(self._run(self._begin, accounts, now, "1", self._op()), accounts)

    def view(self, accounts: Accounts, now: float) -> list[AccountView]:
        return self._views(self._run(self._begin, accounts, now, "0"), accounts)

    def reserve(self, accounts: Accounts, amount: float, now: float, ttl: float) -> str | None:
        rid = uuid.uuid4().hex
        names = ",".join(n for n, _ in accounts)
        ok = self._run(self._reserve, accounts, now, repr(float(amount)),
                       [rid, repr(float(ttl)), names])
        return rid if int(ok) == 1 else None

    def settle(self, rid: str, accounts: Accounts, actual: float, now: float) -> None:
        self._run(self._settle, accounts, now, repr(float(actual)), [rid, *self._op()])

    def reset(self, accounts: Sequence[str]) -> None:
        if accounts:
            self._r.delete(*(self._acct_prefix + n for n in accounts))

    def close(self) -> None:
        self._r.close()
