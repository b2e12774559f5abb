"""Online multi-choice knapsack budget policy (PILOT-style) with atomic spend ledgers.

Decision rule
-------------
For each query the router has, per model, an estimated quality ``q``, an estimated cost
``c`` and a reservation cost ``r >= c`` (an upper estimate of what the call can cost).
The knapsack prices a dollar at ``psi`` and picks, among the models whose reservation fits
the remaining budget, the one maximising ``q - psi * c`` (ties to the cheaper). That pick
is always a vertex of the query's cost-quality hull (the upper concave frontier of its
estimates): it walks up the hull from the cheapest model while each step's marginal
quality per dollar (the segment slope) is at least ``psi``, and never buys a dearer model
whose estimated gain does not pay the price. Spend is a ceiling, not a target: unspent
budget is fine.

The price follows the fill ``z`` of the current budget bin (PILOT/BaRP-style online
knapsack, after Zhou, Chakrabarty & Lukose 2008), but its range is derived from the
estimates' hull slopes instead of a fixed efficiency range::

    psi(z) = L * (U / L) ** z

``L`` is the *dual price* of the budget rate: the price at which walking the hulls of a
sample of estimates (train estimates in the replay, recent queries in the gateway) spends,
on average, exactly the budget per query (:func:`dual_price`); ``U`` bounds the hull
slopes (:func:`hull_slopes`, a high quantile). An empty bin thus spends at the budget's
pace, a filling bin only on steeper (surer) gains, a full bin on the cheapest model.
:func:`zcl_threshold` keeps the classic ZCL ``(U e / L)^z L / e`` for comparison.

Pacing: a horizon (``T`` queries or seconds) is split into ``n_bins`` bins; bin ``k``
may spend up to ``B (k + 1) / n_bins`` minus what was spent before it, so unspent money
rolls over to later bins and the last bin can use everything left. Spend never exceeds
``B`` as long as actual costs do not exceed reservations (the gateway reserves the cost
of ``max_tokens``); a commit above its reservation is recorded as spent, never hidden.
With ``renew=True`` the budget is a rate: it starts afresh every horizon (window).

Budgets are global, per API key (stored under a hash of the key, never the key), and
per request (``request_cap``: models whose reservation exceeds it are not candidates).
Ledgers: :class:`EmbeddedLedger` (in process, thread-safe, optionally persisted to a
JSON file atomically) and :class:`RedisLedger` (Lua scripts, so the check "spent +
reserved + amount <= B" and the reservation happen atomically across replicas). Both
run the same arithmetic, so they make identical decisions on the same stream.
Reservations expire after ``reservation_ttl`` seconds (a crashed replica's hold is freed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CLOCKS = ("queries", "seconds")
#: a relative move of a model's cost estimate that re-tabulates a fixed price sample
COST_MOVE = 0.1


class BudgetError(ValueError):
    """A bad budget specification or a ledger that cannot be used."""


class BudgetExhausted(BudgetError):
    """No model's reservation fits the remaining budget (the gateway answers 429)."""

    def __init__(self, message: str, scope: str = "global") -> None:
        super().__init__(message)
        self.scope = scope


# ---- specification ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetSpec:
    """``amount`` USD over ``horizon`` (queries or seconds; None = no pacing), in ``n_bins``
    pacing bins; ``renew`` makes it a spend rate that restarts every horizon."""

    amount: float
    horizon: float | None = None
    clock: str = "queries"
    n_bins: int = 1
    renew: bool = False

    def __post_init__(self) -> None:
        amount = _number(self.amount, "budget amount")
        if amount < 0:
            raise BudgetError(f"budget amount must be >= 0 USD, got {amount}")
        object.__setattr__(self, "amount", amount)
        if self.clock not in CLOCKS:
            raise BudgetError(f"budget clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.horizon is not None:
            horizon = _number(self.horizon, "budget horizon")
            if horizon <= 0:
                raise BudgetError(f"budget horizon must be > 0, got {horizon}")
            object.__setattr__(self, "horizon", horizon)
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int | np.integer) or self.n_bins < 1:
            raise BudgetError(f"budget n_bins must be a positive integer, got {self.n_bins!r}")
        object.__setattr__(self, "n_bins", int(self.n_bins))
        if self.renew and self.horizon is None:
            raise BudgetError("a renewing budget (a spend rate) needs a horizon (window)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetSpec:
        unknown = set(data) - {"amount", "horizon", "clock", "n_bins", "renew"}
        if unknown:
            raise BudgetError(f"unknown budget field(s) {sorted(unknown)}")
        if "amount" not in data:
            raise BudgetError("a budget needs an 'amount' (USD)")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lua_args(self) -> list[str]:
        return [repr(self.amount), repr(-1.0 if self.horizon is None else self.horizon),
                str(CLOCKS.index(self.clock)), str(self.n_bins), "1" if self.renew else "0"]


def auto_bins(amount: float, max_cost: float, horizon: float, calls_per_bin: float = 3.0) -> int:
    """Pacing bins so that each bin can afford ``calls_per_bin`` calls of the dearest model.

    More bins spend the budget more fully (less is stranded in the last bin); bins too
    small to buy the best model starve it. On RouterBench-like costs ~3 calls per bin
    balanced the two.
    """
    if max_cost <= 0:
        return 1
    bins = int(amount / (calls_per_bin * max_cost))
    return max(1, min(bins, int(horizon // 2) or 1))


def _number(value: Any, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise BudgetError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise BudgetError(f"{what} must be finite, got {value}")
    return value


# ---- the threshold rule ----------------------------------------------------------------------
def zcl_threshold(z: float, L: float, U: float) -> float:
    """psi(z) = (U e / L)^z (L / e) for budget fraction z in [0, 1]."""
    z = min(max(float(z), 0.0), 1.0)
    return (U * math.e / L) ** z * (L / math.e)


def hull_threshold(z: float, L: float, U: float) -> float:
    """psi(z) = L (U / L)^z for bin fill z in [0, 1]: the dual price L at an empty bin."""
    z = min(max(float(z), 0.0), 1.0)
    return L * (U / L) ** z


def hull_slopes(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Slopes (marginal quality per dollar) of every segment of every row's cost-quality
    hull, for (n, m) estimates (``cost`` may be (m,)); NaN estimates are skipped."""
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
    out: list[float] = []
    for q, c in zip(quality, cost, strict=True):
        ok = np.isfinite(q) & np.isfinite(c)
        q, c = q[ok], np.maximum(c[ok], 1e-12)
        if q.size < 2:
            continue
        order = np.lexsort((-q, c))
        i, cur = order[0], []
        while True:  # from the current vertex, the steepest step up to a dearer model
            up = (c > c[i]) & (q > q[i])
            if not up.any():
                break
            slope = np.where(up, (q - q[i]) / np.where(up, c - c[i], 1.0), -np.inf)
            j = int(np.argmax(slope))
            cur.append(float(slope[j]))
            i = j
        out.extend(cur)
    return np.asarray(out)


def dual_price(quality: np.ndarray, cost: np.ndarray, rate: float, iters: int = 50) -> float:
    """The smallest price of a dollar at which picking ``argmax q - price * c`` on each row
    of the (n, m) estimates costs at most ``rate`` per row on average (0 when even the
    best-quality picks fit: the budget does not bind)."""
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
    rows = np.arange(len(quality))

    def spend(price: float) -> float:
        score = quality - price * cost
        best = score.max(axis=1, keepdims=True)
        tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
        return float(cost[rows, np.where(tied, cost, np.inf).argmin(axis=1)].mean())

    if len(quality) == 0 or spend(0.0) <= rate:
        return 0.0
    slopes = hull_slopes(quality, cost)
    hi = float(slopes.max()) * 2 if slopes.size else 1.0
    if spend(hi) > rate:  # not even the cheapest picks fit the rate
        return hi
    lo = hi * 1e-9
    for _ in range(iters):  # bisection on log price
        mid = math.sqrt(lo * hi)
        if spend(mid) <= rate:
            hi = mid
        else:
            lo = mid
    return hi


def price_bounds(quality: np.ndarray, cost: np.ndarray, rate: float,
                 quantile: float = 0.99) -> tuple[float, float]:
    """[L, U] for :func:`hull_threshold` from a sample of (n, m) estimates and the budget
    ``rate`` per query: L the dual price, U the ``quantile`` of the hull slopes."""
    slopes = hull_slopes(quality, cost)
    U = float(np.quantile(slopes, quantile)) if slopes.size else 1.0
    L = dual_price(quality, cost, rate)
    U = max(U, L * (1 + 1e-9), 1e-12)
    return max(L, U * 1e-9), U


class PriceCurve:
    """Average spend per query against the price of a dollar on a sample of (n, m)
    estimates, tabulated on a log grid, so the dual price of any rate is a look-up."""

    def __init__(self, quality: np.ndarray, cost: np.ndarray, points: int = 64,
                 quantile: float = 0.99) -> None:
        quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
        cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
        if quality.size == 0 or not (np.isfinite(quality).all() and np.isfinite(cost).all()):
            raise BudgetError("a price curve needs a non-empty sample of finite estimates")
        slopes = hull_slopes(quality, cost)
        top = float(slopes.max()) if slopes.size else 1.0
        self.U = max(float(np.quantile(slopes, quantile)) if slopes.size else 1.0, 1e-12)
        self.prices = np.concatenate([[0.0], np.geomspace(top * 1e-7, top * 2, points)])
        rows = np.arange(len(quality))
        spends = []
        for price in self.prices:
            score = quality - price * cost
            best = score.max(axis=1, keepdims=True)
            tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
            spends.append(cost[rows, np.where(tied, cost, np.inf).argmin(axis=1)].mean())
        self.spends = np.minimum.accumulate(np.asarray(spends))  # non-increasing in price

    def price(self, rate: float) -> float:
        """The smallest tabulated price whose spend per query is at most ``rate``."""
        ok = np.flatnonzero(self.spends <= rate)
        return float(self.prices[ok[0]]) if ok.size else float(self.prices[-1])

    def bounds(self, rate: float) -> tuple[float, float]:
        L = self.price(rate)
        U = max(self.U, L * (1 + 1e-9))
        return max(L, U * 1e-9), U


def efficiency_bounds(quality: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """[L, U] from per-model mean quality / mean cost of (n, m) matrices (NaN = missing)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.nanmean(np.asarray(quality, dtype=np.float64), axis=0)
        c = np.nanmean(np.asarray(cost, dtype=np.float64), axis=0)
        eff = q / c
    eff = eff[np.isfinite(eff) & (eff > 0)]
    if eff.size == 0:
        raise BudgetError("cannot bound efficiency: no model has positive quality and cost")
    lo, hi = float(eff.min()), float(eff.max())
    return lo, max(hi, lo * (1 + 1e-9))


@dataclass
class Choice:
    """The knapsack's pick for one query (``index`` None: nothing affordable)."""

    index: int | None
    threshold: float
    efficiency: np.ndarray
    feasible: np.ndarray


def knapsack_choice(
    quality: np.ndarray, cost: np.ndarray, reserve: np.ndarray, remaining: float, z: float,
    L: float, U: float, allowed: np.ndarray | None = None, request_cap: float | None = None,
) -> Choice:
    """Pure decision rule (see the module docstring): among the feasible models, the
    best ``quality - psi(z) * cost``, a vertex of the estimates' hull; ties go to the
    cheaper model."""
    quality = np.asarray(quality, dtype=np.float64).reshape(-1)
    cost = np.asarray(cost, dtype=np.float64).reshape(-1)
    reserve = np.asarray(reserve, dtype=np.float64).reshape(-1)
    feasible = reserve <= remaining
    if allowed is not None:
        feasible &= np.asarray(allowed, dtype=bool).reshape(-1)
    if request_cap is not None:
        feasible &= reserve <= request_cap
    eff = quality / np.maximum(cost, 1e-12)
    psi = hull_threshold(z, L, U)
    if not feasible.any():
        return Choice(None, psi, eff, feasible)
    score = np.where(feasible, quality - psi * cost, -np.inf)
    best = score.max()
    tied = score >= best - 1e-12 * max(1.0, abs(best))
    return Choice(int(np.where(tied, cost, np.inf).argmin()), psi, eff, feasible)


# ---- account positions (mirrored exactly by the Lua scripts) ---------------------------------
@dataclass
class AccountView:
    """An account's budget state at decision time."""

    account: str
    amount: float
    spent: float
    reserved: float
    queries: int
    window: int
    bin: int
    bin_start: float
    n_bins: int
    total: float = 0.0

    @property
    def remaining(self) -> float:
        return self.amount - self.spent - self.reserved

    @property
    def bin_budget(self) -> float:
        return self.amount * (self.bin + 1) / self.n_bins - self.bin_start

    @property
    def z(self) -> float:
        """Fraction of the current bin's budget used (1 when the bin has none)."""
        budget = self.bin_budget
        if budget <= 0:
            return 1.0
        return min(max((self.spent + self.reserved - self.bin_start) / budget, 0.0), 1.0)


_FIELDS = ("spent", "reserved", "queries", "window", "bin", "bin_start", "start", "total")


def _advance(acct: dict[str, float], spec: BudgetSpec, now: float, count: bool) -> None:
    """Move an account to the window/bin of this moment; count the query if asked."""
    if "start" not in acct:
        acct["start"] = now
    for key in _FIELDS:
        acct.setdefault(key, 0.0)
    w, k = 0, 0
    if spec.horizon is not None:
        if spec.clock == "queries":
            p = acct["queries"] / spec.horizon
        else:
            p = (now - acct["start"]) / spec.horizon
        p = max(p, 0.0)
        if spec.renew:
            w = math.floor(p)
            frac = p - w
        else:
            frac = p
        k = min(math.floor(frac * spec.n_bins), spec.n_bins - 1)
    if w != acct["window"]:
        acct["spent"] = 0.0
        acct["window"] = w
        acct["bin"] = k
        acct["bin_start"] = acct["reserved"]
    elif k != acct["bin"]:
        acct["bin"] = k
        acct["bin_start"] = acct["spent"] + acct["reserved"]
    if count:
        acct["queries"] += 1


def _view(name: str, acct: dict[str, float], spec: BudgetSpec) -> AccountView:
    return AccountView(
        account=name, amount=spec.amount, spent=acct["spent"], reserved=acct["reserved"],
        queries=int(acct["queries"]), window=int(acct["window"]), bin=int(acct["bin"]),
        bin_start=acct["bin_start"], n_bins=spec.n_bins, total=acct["total"],
    )


Accounts = Sequence[tuple[str, BudgetSpec]]


class SpendLedger:
    """Interface: per-account spend, reservations, query counts."""

    def begin(self, accounts: Accounts, now: float) -> list[AccountView]:
        """Count one query on every account and return their views."""
        raise NotImplementedError

    def view(self, accounts: Accounts, now: float) -> list[AccountView]:
        raise NotImplementedError

    def reserve(self, accounts: Accounts, amount: float, now: float, ttl: float) -> str | None:
        """Atomically hold ``amount`` on every account if it fits all; the reservation id."""
        raise NotImplementedError

    def settle(self, rid: str, accounts: Accounts, actual: float, now: float) -> None:
        """Free reservation ``rid`` and record ``actual`` as spent (0 for a release)."""
        raise NotImplementedError

    def reset(self, accounts: Sequence[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""


class EmbeddedLedger(SpendLedger):
    """In-process ledger (thread-safe); with ``path`` it is saved atomically as JSON on
    every commit/release and reloaded on start."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._accounts: dict[str, dict[str, float]] = {}
        self._res: dict[str, tuple[float, tuple[str, ...], float]] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self._accounts = {k: dict(v) for k, v in data["accounts"].items()}
                self._res = {k: (v[0], tuple(v[1]), v[2]) for k, v in data["reservations"].items()}
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                raise BudgetError(f"{self.path}: unreadable budget ledger ({exc})") from exc

    def _reap(self, now: float) -> None:
        for rid in [r for r, (_, _, exp) in self._res.items() if exp <= now]:
            self._unhold(rid)

    def _unhold(self, rid: str) -> None:
        amount, names, _ = self._res.pop(rid)
        for name in names:
            acct = self._accounts.get(name)
            if acct is not None:
                acct["reserved"] = max(acct["reserved"] - amount, 0.0)

    def _acct(self, name: str) -> dict[str, float]:
        return self._accounts.setdefault(name, {})

    def begin(self, accounts: Accounts, now: float) -> list[AccountView]:
        return self._views(accounts, now, count=True)

    def view(self, accounts: Accounts, now: float) -> list[AccountView]:
        return self._views(accounts, now, count=False)

    def _views(self, accounts: Accounts, now: float, count: bool) -> list[AccountView]:
        with self._lock:
            self._reap(now)
            out = []
            for name, spec in accounts:
                acct = self._acct(name)
                _advance(acct, spec, now, count=count)
                out.append(_view(name, acct, spec))
            return out

    def reserve(self, accounts: Accounts, amount: float, now: float, ttl: float) -> str | None:
        with self._lock:
            self._reap(now)
            for name, spec in accounts:
                acct = self._acct(name)
                _advance(acct, spec, now, count=False)
                if acct["spent"] + acct["reserved"] + amount > spec.amount:
                    return None
            for name, _ in accounts:
                self._accounts[name]["reserved"] += amount
            rid = uuid.uuid4().hex
            self._res[rid] = (amount, tuple(n for n, _ in accounts), now + ttl)
            return rid

    def settle(self, rid: str, accounts: Accounts, actual: float, now: float) -> None:
        with self._lock:
            if rid in self._res:
                self._unhold(rid)
            for name, spec in accounts:
                acct = self._acct(name)
                _advance(acct, spec, now, count=False)
                acct["spent"] += actual
                acct["total"] += actual
            self._save()

    def reset(self, accounts: Sequence[str]) -> None:
        with self._lock:
            for name in accounts:
                self._accounts.pop(name, None)
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"accounts": self._accounts,
                "reservations": {k: [a, list(n), e] for k, (a, n, e) in self._res.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        with self._lock:
            self._save()


# ---- Redis -----------------------------------------------------------------------------------
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


# ---- the policy ------------------------------------------------------------------------------
@dataclass
class Reservation:
    """Money held for one routed request until :meth:`OnlineKnapsack.commit`/``release``."""

    id: str
    amount: float
    accounts: tuple[tuple[str, BudgetSpec], ...]
    model_index: int


@dataclass
class BudgetDecision:
    index: int
    reservation: Reservation | None
    z: float
    threshold: float
    remaining: float
    views: list[AccountView] = field(default_factory=list)


def key_account(api_key: str) -> str:
    """Ledger account name of an API key (a hash: keys are never stored)."""
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


class OnlineKnapsack:
    """Budget-aware model choice with reservations (one object per gateway replica).

    ``global_budget`` applies to all traffic, ``key_budgets`` maps an API key to its own
    budget (``default_key_budget`` for keys not listed). The price range of
    :func:`hull_threshold`: fixed ``L``/``U`` if given; else ``L`` is the dual price of the
    budgets' *remaining* rate (what is left over the queries left in the window, for a
    query clock; ``amount / horizon`` times the mean gap between recent queries, for a
    seconds clock; no horizon: no price), looked up on a :class:`PriceCurve` of
    ``price_sample`` (an (n, m) quality and cost pair, e.g. the policy's train
    estimates) or, without one, of the last ``window`` queries' estimates (re-tabulated
    every ``recalibrate`` decisions). A fixed sample follows the policy's cost estimates:
    when a model's estimated cost moves more than ``COST_MOVE`` from what the curve was
    tabulated at (a price change), the sample's costs of that model are rescaled to it
    and the curve re-tabulated, so the price of a dollar keeps pacing the real spend. The price rises from ``L`` toward ``U`` only as a
    bin's spend runs ahead of its share of the bin's queries.
    """

    def __init__(
        self,
        ledger: SpendLedger | None = None,
        global_budget: BudgetSpec | None = None,
        key_budgets: Mapping[str, BudgetSpec] | None = None,
        default_key_budget: BudgetSpec | None = None,
        L: float | None = None,
        U: float | None = None,
        reservation_ttl: float = 600.0,
        retries: int = 8,
        clock=time.time,
        window: int = 256,
        recalibrate: int = 16,
        price_sample: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.ledger = ledger if ledger is not None else EmbeddedLedger()
        self.global_budget = global_budget
        self.key_budgets = dict(key_budgets or {})
        self.default_key_budget = default_key_budget
        if (L is None) != (U is None):
            raise BudgetError("give both efficiency bounds L and U, or neither")
        if L is not None:
            L, U = _number(L, "L"), _number(U, "U")
            if not 0 < L <= U:
                raise BudgetError(f"efficiency bounds need 0 < L <= U, got L={L}, U={U}")
        self.L, self.U = L, U
        self.reservation_ttl = _number(reservation_ttl, "reservation_ttl")
        self.retries = retries
        self.clock = clock
        self._recent: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=max(window, 1))
        self._recalibrate = max(int(recalibrate), 1)
        self._since = 0
        self._fixed_curve = price_sample is not None
        self._curve: PriceCurve | None = None if price_sample is None else PriceCurve(
            *price_sample)
        self._sample = None
        if price_sample is not None:
            q, c = (np.asarray(a, dtype=np.float64) for a in price_sample)
            c = np.broadcast_to(c, q.shape)
            self._sample = (q, c, np.maximum(c.mean(axis=0), 1e-300))
            self._tabulated = self._sample[2]
        self._recent_lock = threading.Lock()

    def accounts(self, api_key: str | None = None) -> tuple[tuple[str, BudgetSpec], ...]:
        out = []
        if self.global_budget is not None:
            out.append(("global", self.global_budget))
        if api_key is not None:
            spec = self.key_budgets.get(api_key, self.default_key_budget)
            if spec is not None:
                out.append((key_account(api_key), spec))
        return tuple(out)

    def _rate(self, accounts: Accounts, views: Sequence[AccountView], times: np.ndarray
              ) -> float | None:
        """The tightest per-query budget rate left (None: no account is paced)."""
        rates = []
        for (_, spec), v in zip(accounts, views, strict=True):
            if spec.horizon is None:
                continue
            if spec.clock == "queries":  # the current query is counted in v.queries
                left = spec.horizon * (v.window + 1) - v.queries + 1
                rates.append(max(v.remaining, 0.0) / max(left, 1.0))
            elif len(times) > 1:
                gap = float(times[-1] - times[0]) / (len(times) - 1)
                rates.append(spec.amount / spec.horizon * gap)
        return min(rates) if rates else None

    @staticmethod
    def _ahead(accounts: Accounts, views: Sequence[AccountView]) -> float:
        """How far spend runs ahead of the bin's elapsed share of queries, in [0, 1]."""
        out = 0.0
        for (_, spec), v in zip(accounts, views, strict=True):
            tau = 0.0
            if spec.horizon is not None and spec.clock == "queries":
                p = (v.queries - 1) / spec.horizon - v.window
                tau = min(max(p * spec.n_bins - v.bin, 0.0), 1.0)
            out = max(out, (v.z - tau) / (1.0 - tau) if v.z > tau and tau < 1 else 0.0)
        return min(out, 1.0)

    def _bounds(self, quality: np.ndarray, cost: np.ndarray, accounts: Accounts,
                views: Sequence[AccountView], now: float) -> tuple[float, float]:
        if self.L is not None:
            return self.L, self.U
        with self._recent_lock:
            self._recent.append((quality, cost, now))
            self._since += 1
            self._follow_costs(cost)
            if not self._fixed_curve and (self._curve is None
                                          or self._since >= self._recalibrate):
                self._since = 0
                self._curve = PriceCurve(np.stack([q for q, _, _ in self._recent]),
                                         np.stack([c for _, c, _ in self._recent]))
            curve = self._curve
            times = np.array([t for _, _, t in self._recent])
        rate = self._rate(accounts, views, times)
        if rate is None:
            return curve.U * 1e-9, curve.U
        return curve.bounds(rate)

    def _follow_costs(self, cost: np.ndarray) -> None:
        """Re-tabulate a fixed sample's curve at the current cost estimates when one has
        moved more than ``COST_MOVE`` (relative) since the last tabulation."""
        if self._sample is None:
            return
        q, c, base = self._sample
        cost = np.broadcast_to(np.asarray(cost, dtype=np.float64).reshape(-1), base.shape)
        if not np.isfinite(cost).all() or (cost <= 0).any():
            return
        if np.abs(np.log(cost / self._tabulated)).max() <= math.log1p(COST_MOVE):
            return
        self._tabulated = cost.copy()
        self._curve = PriceCurve(q, c * (cost / base))

    def decide(
        self,
        quality: np.ndarray,
        cost: np.ndarray,
        reserve: np.ndarray | None = None,
        api_key: str | None = None,
        request_cap: float | None = None,
        allowed: np.ndarray | None = None,
        now: float | None = None,
    ) -> BudgetDecision:
        """Pick a model for one query and hold its reservation on every budget that applies.

        ``quality``/``cost`` are the policy's (m,) estimates, ``reserve`` the (m,) amounts to
        hold (default: ``cost``). Raises :class:`BudgetExhausted` if nothing fits.
        """
        quality = np.asarray(quality, dtype=np.float64).reshape(-1)
        cost = np.asarray(cost, dtype=np.float64).reshape(-1)
        reserve = cost if reserve is None else np.asarray(reserve, dtype=np.float64).reshape(-1)
        if not (quality.shape == cost.shape == reserve.shape):
            raise BudgetError("quality, cost and reserve must have one entry per model")
        if not (np.isfinite(quality).all() and np.isfinite(cost).all() and np.isfinite(reserve).all()):
            raise BudgetError("quality, cost and reserve estimates must be finite")
        if (cost < 0).any() or (reserve < 0).any():
            raise BudgetError("cost estimates must be >= 0")
        if request_cap is not None:
            request_cap = _number(request_cap, "request budget")
        now = self.clock() if now is None else now
        accounts = self.accounts(api_key)
        views = self.ledger.begin(accounts, now) if accounts else []
        L, U = self._bounds(quality, cost, accounts, views, now)
        for _ in range(self.retries):
            # "fits" is the ledger's own check, spent + reserved + amount <= B, with the
            # same float arithmetic, so a fitting pick never fails it for round-off
            fits = np.ones(len(reserve), dtype=bool)
            for v in views:
                fits &= v.spent + v.reserved + reserve <= v.amount
            remaining = min((v.remaining for v in views), default=math.inf)
            z = max((v.z for v in views), default=0.0)
            if self.L is None:  # priced from the estimates: rise only when ahead of pace
                z = self._ahead(accounts, views)
            ok = fits if allowed is None else fits & np.asarray(allowed, dtype=bool).reshape(-1)
            choice = knapsack_choice(quality, cost, reserve, math.inf, z, L, U, ok, request_cap)
            if choice.index is None:
                if views and not fits.any():
                    scope = min(views, key=lambda v: v.remaining).account
                else:
                    scope = "request"
                raise BudgetExhausted(
                    f"budget exhausted ({scope}): no model fits the remaining "
                    f"${max(remaining, 0):.6g}" + (
                        f" and the request cap ${request_cap:.6g}" if request_cap is not None else ""),
                    scope=scope,
                )
            idx = choice.index
            if not accounts:
                return BudgetDecision(idx, None, z, choice.threshold, remaining, views)
            amount = float(reserve[idx])
            rid = self.ledger.reserve(accounts, amount, now, self.reservation_ttl)
            if rid is not None:
                res = Reservation(rid, amount, accounts, idx)
                return BudgetDecision(idx, res, z, choice.threshold, remaining, views)
            views = self.ledger.view(accounts, now)  # lost a race: decide again on fresh state
        raise BudgetExhausted("budget contention: could not reserve after retries", "global")

    def reserve(self, index: int, amount: float, api_key: str | None = None,
                now: float | None = None) -> Reservation | None:
        """Hold ``amount`` for a model picked elsewhere (e.g. a fallback backend after a
        failure) without counting a new query; None if it does not fit."""
        amount = _number(amount, "reservation amount")
        if amount < 0:
            raise BudgetError(f"reservation amount must be >= 0, got {amount}")
        accounts = self.accounts(api_key)
        if not accounts:
            return Reservation("", amount, (), int(index))
        now = self.clock() if now is None else now
        rid = self.ledger.reserve(accounts, amount, now, self.reservation_ttl)
        return None if rid is None else Reservation(rid, amount, accounts, int(index))

    def commit(self, reservation: Reservation | BudgetDecision | None, actual_cost: float,
               now: float | None = None) -> None:
        """Record the call's actual cost and free its reservation."""
        res = reservation.reservation if isinstance(reservation, BudgetDecision) else reservation
        actual = _number(actual_cost, "actual cost")
        if actual < 0:
            raise BudgetError(f"actual cost must be >= 0, got {actual}")
        if res is None or not res.accounts:
            return
        self.ledger.settle(res.id, res.accounts, actual, self.clock() if now is None else now)

    def release(self, reservation: Reservation | BudgetDecision | None,
                now: float | None = None) -> None:
        """Free a reservation whose call was never made (or failed without cost)."""
        self.commit(reservation, 0.0, now)

    def status(self, api_key: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
        accounts = self.accounts(api_key)
        views = self.ledger.view(accounts, self.clock() if now is None else now) if accounts else []
        return [{**asdict(v), "remaining": v.remaining, "bin_budget": v.bin_budget, "z": v.z}
                for v in views]
