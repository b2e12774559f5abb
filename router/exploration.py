"""Bounded exploration for online policies: who may use the optimism bonus, and how often.

An online policy (LinUCB) gives per model a posterior mean quality in [0, 1] and a separate
optimism bonus. Serving *exploits* by default: the shared trade-off rule
(:func:`policies.base.choose`) on the posterior means. A decision *explores* only when the
optimistic choice (the same rule on ``mean + bonus``, unclipped so optimistic arms do not
tie at 1) differs from the exploiting one **and** the :class:`ExplorationGate` allows it:
the gate keeps the explored decisions at or below ``share`` of all decisions at every
moment (``explored + 1 <= share * seen``), deterministically, so ``share = 0`` never
explores and ``share = 0.05`` explores at most 50 of any first 1,000 requests. Each gateway
replica keeps its own gate, so the fleet's share is bounded by the same figure.

The online replay (:mod:`eval.explore`) uses the same gate and rule, which is how the
default share (``DEFAULT_SHARE``) was chosen.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from policies.base import PolicyError, choose

#: default share of an online policy's decisions that may explore. Chosen by
#: ``router eval --explore`` on the RouterBench-subset *train* split (seeded fit/stream cuts
#: of train and a left-out-task stream, 5 seeds; never the test split): the largest share of
#: {0, 0.02, 0.05, 0.1, 0.2} that, with every smaller one, costs at most EXPLORE_TOLERANCE
#: quality against share 0 at every lam and condition (worst +0.0020; 0.05 costs +0.0054).
DEFAULT_SHARE = 0.02
#: the stated quality the default share's exploring may cost (against not exploring)
EXPLORE_TOLERANCE = 0.005


class ExplorationError(ValueError):
    """A bad exploration setting (share outside [0, 1])."""


def check_share(share: float) -> float:
    """``share`` as a float in [0, 1], else :class:`ExplorationError`."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        raise ExplorationError(f"exploration share must be a number in [0, 1], got {share!r}"
                               ) from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ExplorationError(f"exploration share must be a number in [0, 1], got {share!r}")
    return value


class ExplorationGate:
    """Allows at most ``share`` of the decisions it counts to explore (thread-safe)."""

    def __init__(self, share: float) -> None:
        self.share = check_share(share)
        self.seen = 0
        self.explored = 0
        self._lock = threading.Lock()

    def decide(self, wants: bool) -> bool:
        """Count one decision; True when it may explore (``wants`` and within the share)."""
        with self._lock:
            self.seen += 1
            if wants and self.explored + 1 <= self.share * self.seen + 1e-9:
                self.explored += 1
                return True
            return False

    @property
    def realised(self) -> float:
        """Share of counted decisions that explored so far."""
        return self.explored / self.seen if self.seen else 0.0


@dataclass
class Choice:
    """The exploiting and the optimistic choice of one query (indices into the models)."""

    exploit: int
    optimistic: int

    @property
    def differs(self) -> bool:
        return self.exploit != self.optimistic


def pick(value: np.ndarray, cost: np.ndarray, lam: float, budget: float | None,
         allowed: np.ndarray) -> int:
    """:func:`policies.base.choose` for one query on any value vector (not clipped)."""
    try:
        return int(choose(np.asarray(value, np.float64)[None], np.asarray(cost, np.float64)[None],
                          lam=lam, budget=budget, allowed=allowed)[0])
    except PolicyError as exc:
        raise ExplorationError(str(exc)) from None


def choices(mean: np.ndarray, bonus: np.ndarray, cost: np.ndarray, lam: float,
            budget: float | None = None, allowed: np.ndarray | None = None) -> Choice:
    """Exploit (posterior means) and optimistic (means + bonus) choices of one query."""
    mean = np.asarray(mean, dtype=np.float64)
    allowed = np.ones(mean.shape[0], bool) if allowed is None else np.asarray(allowed, bool)
    return Choice(pick(mean, cost, lam, budget, allowed),
                  pick(mean + np.asarray(bonus, dtype=np.float64), cost, lam, budget, allowed))
