"""Choose the cost knob ``lam`` on a sample of the user's own prompts.

The policy's estimates for the sample (the same estimates the gateway routes on) give, for
every ``lam``, the models :func:`policies.base.choose` picks, so the expected model mix,
the expected spend (the estimated cost of each chosen model, in USD per 1k queries) and the
expected quality (the estimated quality of each choice). :func:`calibrate` sweeps ``lam``
(0 and a log grid spanning the estimates' cost scale), then bisects between the two grid
points around the target to the step where the choice flips, and returns the ``lam`` whose
expected spend (or the target model's share) is closest to the target; ties go to the
better quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.base import choose

GRID_POINTS = 240
BISECT_STEPS = 40


@dataclass
class Operating:
    """What routing a sample at one ``lam`` is expected to do."""

    lam: float
    usd_per_1k: float
    quality: float
    mix: dict[str, float]  # model -> share of queries

    def as_dict(self) -> dict[str, object]:
        return {"lam": self.lam, "usd_per_1k": self.usd_per_1k, "quality": self.quality,
                "mix": self.mix}


def operating(est_q: np.ndarray, est_c: np.ndarray, models: list[str], lam: float
              ) -> Operating:
    pick = choose(est_q, est_c, lam=lam)
    rows = np.arange(len(pick))
    counts = np.bincount(pick, minlength=len(models)) / max(1, len(pick))
    return Operating(float(lam), float(est_c[rows, pick].mean() * 1000),
                     float(est_q[rows, pick].mean()),
                     {m: float(s) for m, s in zip(models, counts, strict=True)})


def lam_grid(est_c: np.ndarray, n: int = GRID_POINTS) -> np.ndarray:
    """0 plus ``n`` log-spaced values: from where cost barely matters to where it dominates."""
    means = est_c.mean(axis=0)
    pos = means[means > 0]
    if pos.size == 0:
        return np.array([0.0])
    lo, hi = 1e-3 / float(pos.max()), 1e3 / float(pos.min())
    return np.concatenate(([0.0], np.geomspace(lo, hi, n)))


def calibrate(est_q: np.ndarray, est_c: np.ndarray, models: list[str], *,
              target_usd_per_1k: float | None = None,
              target_share: tuple[str, float] | None = None
              ) -> tuple[Operating, list[Operating]]:
    """The operating point closest to the target, and the sweep it was chosen from."""
    if (target_usd_per_1k is None) == (target_share is None):
        raise ValueError("give exactly one of target_usd_per_1k and target_share")
    est_q = np.asarray(est_q, dtype=np.float64)
    est_c = np.asarray(est_c, dtype=np.float64)
    if target_share is not None:
        model, _ = target_share
        if model not in models:
            raise ValueError(f"--target-share: {model!r} is not a model of the artifact; it "
                             f"routes between {models}")

    def value(op: Operating) -> float:
        if target_usd_per_1k is not None:
            return op.usd_per_1k
        return op.mix[target_share[0]]

    target = float(target_usd_per_1k if target_usd_per_1k is not None else target_share[1])
    sweep = [operating(est_q, est_c, models, float(lam)) for lam in lam_grid(est_c)]
    best = min(sweep, key=lambda op: (abs(value(op) - target), -op.quality))
    # refine: bisect every grid interval whose ends straddle the target
    for a, b in zip(sweep, sweep[1:], strict=False):
        va, vb = value(a) - target, value(b) - target
        if va == 0 or vb == 0 or (va > 0) == (vb > 0):
            continue
        lo, hi = a, b
        for _ in range(BISECT_STEPS):
            mid = operating(est_q, est_c, models, (lo.lam + hi.lam) / 2)
            if (value(mid) - target > 0) == (va > 0):
                lo = mid
            else:
                hi = mid
            if hi.lam - lo.lam <= 1e-9 * max(1.0, hi.lam):
                break
        for op in (lo, hi):
            if (abs(value(op) - target), -op.quality) < (abs(value(best) - target),
                                                         -best.quality):
                best = op
    return best, sweep


def spend_interval(est_q: np.ndarray, est_c: np.ndarray, lam: float, level: float = 0.9,
                   n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the expected $ per 1k queries at ``lam`` over resamples of the
    sample's prompts: how far another sample of the same traffic may spend from it."""
    pick = choose(est_q, est_c, lam=lam)
    per_row = np.asarray(est_c, dtype=np.float64)[np.arange(len(pick)), pick] * 1000
    rng = np.random.default_rng(seed)
    means = per_row[rng.integers(0, len(per_row), (n_boot, len(per_row)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
