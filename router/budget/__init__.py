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

from router.budget.knapsack import (
    BudgetDecision,
    OnlineKnapsack,
    Reservation,
    key_account,
)
from router.budget.ledger import (
    Accounts,
    AccountView,
    EmbeddedLedger,
    SpendLedger,
)
from router.budget.pricing import (
    Choice,
    PriceCurve,
    dual_price,
    efficiency_bounds,
    hull_slopes,
    hull_threshold,
    knapsack_choice,
    price_bounds,
    zcl_threshold,
)
from router.budget.redis_ledger import (
    RedisLedger,
)
from router.budget.spec import (
    CLOCKS,
    COST_MOVE,
    BudgetError,
    BudgetExhausted,
    BudgetSpec,
    auto_bins,
)

__all__ = [
    "AccountView",
    "Accounts",
    "BudgetDecision",
    "BudgetError",
    "BudgetExhausted",
    "BudgetSpec",
    "CLOCKS",
    "COST_MOVE",
    "Choice",
    "EmbeddedLedger",
    "OnlineKnapsack",
    "PriceCurve",
    "RedisLedger",
    "Reservation",
    "SpendLedger",
    "auto_bins",
    "dual_price",
    "efficiency_bounds",
    "hull_slopes",
    "hull_threshold",
    "key_account",
    "knapsack_choice",
    "price_bounds",
    "zcl_threshold",
]
