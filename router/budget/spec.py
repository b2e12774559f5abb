"""Budget specifications and errors: what a budget is (amount, horizon, bins, clock).

Part of :mod:`router.budget` (the module docstring there describes the whole policy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
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
