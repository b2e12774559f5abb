"""One stream through the bandit and the budget knapsack, query by query.

:func:`replay` is the loop every online evaluation runs (``router eval --online``, the
drift scenarios of :mod:`eval.drift`, the train-split tuning of :mod:`eval.online_tune`):
for each query, the policy's estimates (:func:`decision_values`) go to the knapsack,
which picks an affordable model; only that model's outcome is revealed and, when
learning, folded in with ``update`` (bandit feedback). The gateway's bandit state
machinery is the same (:mod:`router.proxy.bandit`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.linucb import LinUCBPolicy
from router.budget import BudgetExhausted, OnlineKnapsack


@dataclass
class Replay:
    """One stream: what was chosen and what it brought, query by query."""

    chosen: np.ndarray  # (T,) model index, -1 where the budget refused the query
    reward: np.ndarray  # (T,)
    cost: np.ndarray  # (T,)
    seconds: float


def decision_values(policy: LinUCBPolicy, X: np.ndarray, explore: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """What the knapsack ranks for queries X: (n, m) quality values and (n, m) costs.

    The posterior mean clipped to [0, 1] (as serving reports it), plus the optimism bonus
    ``alpha * width`` when ``explore``; the policy's running mean costs.
    """
    if hasattr(policy, "estimates"):  # serving's estimates (mean backed off, bonus apart)
        est = policy.estimates(X)
        value = est.mean + (est.bonus if explore else 0.0)
        return value, est.cost
    mean, width, cost = policy.predict_parts(X)
    value = np.clip(mean, 0.0, 1.0) + (float(policy.alpha) * width if explore else 0.0)
    return value, np.broadcast_to(cost, value.shape)


def resets(policy: Any) -> int:
    """How many changes the policy's detectors have flagged so far (0 without a store)."""
    store = getattr(policy, "store", None)
    if store is None:
        return 0
    with store.read() as st:
        return 0 if st.resets is None else int(np.sum(st.resets))


def replay(
    policy: LinUCBPolicy, X: np.ndarray, quality: np.ndarray, cost: np.ndarray,
    knapsack: OnlineKnapsack, learn: bool = True, progress: Any = None,
    allowed: np.ndarray | None = None, switch: tuple[int, LinUCBPolicy] | None = None,
    resample: Callable[[LinUCBPolicy], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Replay:
    """Stream X (in the given order) through ``policy`` and ``knapsack``; bandit feedback.

    ``allowed`` (T, m) marks the models available at each step (drift scenarios);
    ``switch`` = (k, other): from step k on, ``other`` decides (and learns) instead;
    ``resample``: the knapsack's price sample of a policy (e.g. its estimates on the train
    prompts), re-derived (:meth:`OnlineKnapsack.resample`) whenever the policy's change
    detector fires (:func:`resets`) and, when learning, whenever the set of ``allowed``
    models changes (from all of them before the first step), over the models allowed."""
    T = len(X)
    chosen = np.full(T, -1, dtype=np.int64)
    reward = np.zeros(T)
    spent = np.zeros(T)
    t0 = time.perf_counter()
    fired = resets(policy)
    # the allowed set the price sample covers (None: every model, no mask)
    arms = None if allowed is None else np.ones(np.shape(allowed)[1], dtype=bool)
    for t in range(T):
        if switch is not None and t == switch[0]:
            policy = switch[1]
        if (learn and resample is not None and arms is not None
                and not np.array_equal(allowed[t], arms)):
            arms = np.asarray(allowed[t], dtype=bool).copy()
            knapsack.resample(*resample(policy), allowed=arms)
        value, est_cost = decision_values(policy, X[t:t + 1])
        try:
            d = knapsack.decide(value[0], est_cost[0], policy.reserve_cost(), now=float(t),
                                allowed=None if allowed is None else allowed[t])
        except BudgetExhausted:
            if progress is not None:
                progress.update(1)
            continue
        a = d.index
        chosen[t], reward[t], spent[t] = a, quality[t, a], cost[t, a]
        knapsack.commit(d, cost[t, a], now=float(t))
        if learn:
            policy.update(X[t], a, reward[t], cost[t, a])
            if resample is not None and (n := resets(policy)) != fired:
                fired = n
                knapsack.resample(*resample(policy), allowed=arms)
        if progress is not None:
            progress.update(1)
    return Replay(chosen, reward, spent, time.perf_counter() - t0)
