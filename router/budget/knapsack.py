"""The online knapsack policy: reservations, decisions and per-key accounts.

Part of :mod:`router.budget` (the module docstring there describes the whole policy).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from router.budget.ledger import Accounts, AccountView, EmbeddedLedger, SpendLedger
from router.budget.pricing import PriceCurve, knapsack_choice
from router.budget.spec import COST_MOVE, BudgetError, BudgetExhausted, BudgetSpec, _number


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
    and the curve re-tabulated, so the price of a dollar keeps pacing the real spend; a
    caller whose quality estimates moved (a detected change) replaces the sample with
    :meth:`resample`. The price rises from ``L`` toward ``U`` only as a
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
        self._curve: PriceCurve | None = None
        self._sample = None
        self._recent_lock = threading.Lock()
        if price_sample is not None:
            self.resample(*price_sample)

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
                self._curve = PriceCurve(*_rows(self._recent))
            curve = self._curve
            times = np.array([t for _, _, t in self._recent])
        rate = self._rate(accounts, views, times)
        if rate is None:
            return curve.U * 1e-9, curve.U
        return curve.bounds(rate)

    def resample(self, quality: np.ndarray, cost: np.ndarray,
                 allowed: np.ndarray | None = None) -> None:
        """Replace the fixed price sample with (n, m) estimates and re-tabulate the curve:
        what a policy calls when its estimates of a model moved as a whole (a detected
        change), so the price of a dollar is the dual price of the models as they are now
        (a degraded best model no longer takes the sample's spend at the old price), and
        when the set of available models changed: ``allowed`` (m,) leaves the others out
        of the sample (a removed model no longer takes its spend, an added one enters)."""
        q, c = (np.asarray(a, dtype=np.float64) for a in (quality, cost))
        c = np.broadcast_to(c, q.shape)
        if allowed is not None:
            keep = np.asarray(allowed, dtype=bool).reshape(-1)
            if keep.shape != q.shape[1:]:
                raise BudgetError("allowed must have one entry per model of the sample")
            q = np.where(keep, q, np.nan)  # missing: no hull vertex (hull_segments)
        curve = PriceCurve(q, c)  # raises on an empty or non-finite sample
        with self._recent_lock:
            self._fixed_curve = True
            self._curve = curve
            self._sample = (q, c, np.maximum(c.mean(axis=0), 1e-300))
            self._tabulated = self._sample[2]

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


def _rows(recent: Sequence[tuple[np.ndarray, np.ndarray, float]]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(n, m) quality and cost of recent decisions' estimates; a decision among fewer
    candidates (a backend removed or added, a fallback retry) is padded with NaN, which
    adds no hull vertex, so the rows of any candidate count share one price curve."""
    m = max(len(q) for q, _, _ in recent)
    quality = np.full((len(recent), m), np.nan)
    cost = np.full((len(recent), m), np.nan)
    for r, (q, c, _) in enumerate(recent):
        quality[r, :len(q)], cost[r, :len(c)] = q, c
    return quality, cost
