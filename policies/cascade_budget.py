"""Budget mode of the cascade policies: the best mix of train plans within ``B`` USD/query.

A lam picks one plan per answer kind, so a lam sweep only reaches the vertices of each
kind's train cost-quality hull. Given a budget ``B`` (USD per query, the mean over the
train split's mix of kinds), :func:`mix_for_budget` instead spends it where a dollar buys
the most train quality: every kind starts at its cheapest hull vertex, and the hull
segments of all kinds are taken steepest first (quality gained per dollar of mean cost,
each kind weighted by its share of the train prompts) until the next segment no longer
fits. That segment's kind mixes its two adjacent plans, with the share of the dearer one
set so that the expected train cost equals ``B`` exactly (the optimum of the concave
allocation: every other kind sits at the vertex where the segment's slope, the price of
a dollar ``lam``, puts it). Its train quality is the interpolation of the two plans'.

Which plan a prompt of the mixed kind gets is decided by a stable hash of its text
(:func:`prompt_share`, blake2b, uniform in [0, 1)): the same prompt always gets the same
plan, in the offline replay and in the gateway. A kind the split lacks takes its plan at
the price ``lam``. Below the cheapest mix every kind keeps its cheapest plan; above the
dearest, its best (lam 0) plan: the returned :class:`BudgetMix` says what train cost and
quality it expects either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HullPoint:
    """A plan on a kind's train hull: the lam that selects it and its train figures."""

    lam: float
    cost: float
    quality: float


@dataclass(frozen=True)
class KindMix:
    """Two adjacent hull plans of one kind; ``share`` of its prompts get ``high``."""

    low: HullPoint
    high: HullPoint
    share: float

    @property
    def cost(self) -> float:
        return (1.0 - self.share) * self.low.cost + self.share * self.high.cost

    @property
    def quality(self) -> float:
        return (1.0 - self.share) * self.low.quality + self.share * self.high.quality


@dataclass(frozen=True)
class BudgetMix:
    """The plans of a budget: per kind a :class:`KindMix`, the price lam, train figures."""

    budget: float
    lam: float  # slope of the segment the budget ends in (unseen kinds plan at it)
    kinds: Mapping[str, KindMix]
    weights: Mapping[str, float]  # train share of each kind's prompts

    @property
    def train_cost(self) -> float:
        """Expected mean train cost per query (= budget when the budget is reachable)."""
        return sum(self.weights[k] * m.cost for k, m in self.kinds.items())

    @property
    def train_quality(self) -> float:
        return sum(self.weights[k] * m.quality for k, m in self.kinds.items())

    def lam_for(self, kind: str, text: str) -> float:
        """The lam whose plan prompt ``text`` of ``kind`` gets."""
        mix = self.kinds.get(kind)
        if mix is None:
            return self.lam
        if mix.share > 0.0 and prompt_share(text) < mix.share:
            return mix.high.lam
        return mix.low.lam

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget, "lam": self.lam, "train_cost": self.train_cost,
                "train_quality": self.train_quality,
                "kinds": {k: {"low_lam": m.low.lam, "high_lam": m.high.lam,
                              "share": m.share, "weight": self.weights[k]}
                          for k, m in self.kinds.items()}}


def prompt_share(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from the prompt's text."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def upper_hull(points: Sequence[HullPoint]) -> list[HullPoint]:
    """The concave upper hull of ``points``, cheapest first, quality strictly rising."""
    out: list[HullPoint] = []
    for p in sorted(points, key=lambda p: (p.cost, -p.quality, p.lam)):
        if out and p.quality <= out[-1].quality:
            continue  # costs more, gains nothing
        while len(out) >= 2:
            a, b = out[-2], out[-1]
            if (b.cost - a.cost) * (p.quality - a.quality) \
                    - (b.quality - a.quality) * (p.cost - a.cost) >= 0:
                out.pop()  # b lies on or under the chord a -> p
            else:
                break
        out.append(p)
    return out


def mix_for_budget(hulls: Mapping[str, Sequence[HullPoint]], weights: Mapping[str, float],
                   budget: float) -> BudgetMix:
    """The mix of adjacent hull plans per kind that spends ``budget`` (mean USD per
    train query) steepest segment first; see the module docstring."""
    kinds = sorted(k for k in hulls if hulls[k] and weights.get(k, 0.0) > 0.0)
    total = sum(weights[k] for k in kinds)
    if not kinds or total <= 0:
        raise ValueError("a budget mix needs at least one kind with train plans")
    w = {k: weights[k] / total for k in kinds}
    at = {k: 0 for k in kinds}  # index of each kind's current vertex
    left = budget - sum(w[k] * hulls[k][0].cost for k in kinds)
    segments = sorted(
        ((hulls[k][j + 1].quality - hulls[k][j].quality)
         / max(hulls[k][j + 1].cost - hulls[k][j].cost, 1e-300), k, j)
        for k in kinds for j in range(len(hulls[k]) - 1))
    segments.reverse()  # steepest first (ties: a fixed order)
    lam = 0.0 if not segments else segments[0][0]
    share: dict[str, float] = {}
    for slope, k, j in segments:
        lam = slope
        step = w[k] * (hulls[k][j + 1].cost - hulls[k][j].cost)
        if left >= step * (1.0 - 1e-9):  # (rounding: a budget at a vertex takes it)
            left -= step
            at[k] = j + 1
            continue
        share[k] = max(left, 0.0) / step
        break
    else:
        lam = 0.0  # every segment fits: every kind at its best plan
    mixes = {}
    for k in kinds:
        low = hulls[k][at[k]]
        high = hulls[k][min(at[k] + 1, len(hulls[k]) - 1)]
        mixes[k] = KindMix(low, high, share.get(k, 0.0))
    return BudgetMix(float(budget), float(lam), mixes, w)
