"""A policy against a baseline policy (task-static) at matched costs, with paired CIs.

The product requirement is that every learned policy beats the per-task static router
over the whole cost range. :func:`compare_hulls` reads both hulls at the costs of
:func:`eval.metrics.comparison_costs` (the baseline's hull vertices plus a geometric
grid over the common cost range) and gives the quality difference at each, with a
percentile interval from the bootstrap resamples: resample ``b`` recomputes *both*
hulls from the same resampled test queries, so the intervals are paired. Definition
and wording of the verdicts: eval/README.md ("Against task-static").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eval import metrics as M

BASELINE = "task-static"
N_GRID = 20
TIE = 1e-9  # |difference| at or below this is a tie


def compare_hulls(
    hull: np.ndarray,
    base: np.ndarray,
    boot_hulls: Sequence[np.ndarray] = (),
    boot_base: Sequence[np.ndarray] = (),
    n_grid: int = N_GRID,
    level: float = 0.95,
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """Quality difference ``hull - base`` at matched costs, with paired bootstrap CIs.

    ``baseline`` names the policy of ``base`` in the result and its summary line.

    ``boot_hulls[b]`` and ``boot_base[b]`` must come from the same resample ``b``.
    Returns the points, the counts of better / tied / worse and significantly better /
    worse points, the mean difference over the points, the cost range where ``base``
    has operating points and ``hull`` has none, and a one-line summary.
    """
    if len(boot_hulls) != len(boot_base):
        raise ValueError("boot_hulls and boot_base must hold the same resamples")
    costs = M.comparison_costs(hull, base, n_grid)
    diff = M.hull_difference(hull, base, costs)
    boot = np.array([M.hull_difference(h, b, costs) for h, b in zip(boot_hulls, boot_base,
                                                                     strict=True)])
    vertices = base[:, 0]
    # a resample where c lies below either resampled hull's cheapest point gives no
    # evidence of a difference at c: counted as 0, not left out (leaving it out keeps only
    # the resamples whose cheap end moved down, which biases the interval away from 0 at
    # the range's cheap end: a tied point came out "significantly better")
    boot_ci = np.where(np.isfinite(boot), boot, 0.0) if len(boot) else boot
    points = []
    for k, c in enumerate(costs):
        ci = M.percentile_ci(boot_ci[:, k], level) if len(boot) else None
        points.append({
            "cost": float(c),
            "quality": float(M.hull_value(hull, c)),
            "baseline_quality": float(M.hull_value(base, c)),
            "diff": float(diff[k]),
            "ci": ci,
            "baseline_vertex": bool(np.isclose(vertices, c, rtol=1e-9, atol=0.0).any()),
        })
    better = [p for p in points if p["diff"] > TIE]
    worse = [p for p in points if p["diff"] < -TIE]
    # significant only where the estimate itself is on that side: a subset of better/worse
    sig_better = [p for p in better if p["ci"] is not None and p["ci"][0] > 0]
    sig_worse = [p for p in worse if p["ci"] is not None and p["ci"][1] < 0]
    boot_mean = _row_mean(boot)
    uncovered = None
    if float(hull[0, 0]) > float(base[0, 0]) * (1 + 1e-9) + TIE:
        uncovered = [float(base[0, 0]), float(hull[0, 0])]
    out: dict[str, Any] = {
        "baseline": baseline,
        "cost_range": [float(costs[0]), float(costs[-1])],
        "n_points": len(points),
        "better": len(better),
        "tied": len(points) - len(better) - len(worse),
        "worse": len(worse),
        "significantly_better": len(sig_better),
        "significantly_worse": len(sig_worse),
        "mean_diff": float(diff.mean()),
        "mean_diff_ci": M.percentile_ci(boot_mean, level) if len(boot) else None,
        "worst": min(points, key=lambda p: p["diff"]),
        "uncovered": uncovered,
        "never_worse": not worse and uncovered is None,
        "never_significantly_worse": not sig_worse and uncovered is None,
        "beats": not worse and uncovered is None and bool(better),
        "points": points,
    }
    out["verdict"] = verdict(out)
    out["summary"] = summary(out, [p["cost"] for p in sig_worse] or [p["cost"] for p in worse])
    return out


def _row_mean(boot: np.ndarray) -> np.ndarray:
    """Mean of each resample's finite differences (NaN for a resample without any)."""
    if boot.size == 0:
        return np.empty(0)
    ok = np.isfinite(boot)
    count = ok.sum(axis=1)
    total = np.where(ok, boot, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def verdict(cmp: dict[str, Any]) -> str:
    """``beats`` (better somewhere, worse nowhere, operates wherever the baseline does),
    ``ties`` (equal everywhere), ``worse, not significantly``, ``significantly worse``, or
    ``no cheap point`` (the baseline operates below the policy's cheapest point)."""
    if cmp["significantly_worse"]:
        return "significantly worse"
    if cmp["uncovered"]:
        return "no cheap point"
    if cmp["worse"]:
        return "worse, not significantly"
    return "beats" if cmp["better"] else "ties"


def _k(cost: float) -> str:
    from eval.report import per_1k

    return f"${per_1k(cost)}/1k"


def _span(lo: float, hi: float) -> str:
    return f"at {_k(lo)}" if _k(lo) == _k(hi) else f"{_k(lo)} to {_k(hi)}"


def summary(cmp: dict[str, Any], lossy: list[float]) -> str:
    """One line: where the policy beats the baseline and where it loses."""
    n, base = cmp["n_points"], cmp["baseline"]
    lo, hi = cmp["cost_range"]
    text = (f"better than {base} at {cmp['better']} of {n} cost points "
            f"({_span(lo, hi)}), significantly at {cmp['significantly_better']}")
    if cmp["tied"]:
        text += f"; tied at {cmp['tied']}"
    if cmp["significantly_worse"]:
        text += (f"; significantly worse at {cmp['significantly_worse']} "
                 f"({_span(min(lossy), max(lossy))})")
    elif cmp["worse"]:
        text += (f"; worse at {cmp['worse']} ({_span(min(lossy), max(lossy))}), "
                 "never significantly")
    else:
        text += "; never worse"
    w = cmp["worst"]
    if w["diff"] < -TIE:
        ci = "" if w["ci"] is None else f" [{w['ci'][0]:+.3f}, {w['ci'][1]:+.3f}]"
        text += f"; largest deficit {w['diff']:+.3f}{ci} at {_k(w['cost'])}"
    if cmp["uncovered"]:
        text += (f"; no operating point below {_k(cmp['uncovered'][1])} "
                 f"({base} starts at {_k(cmp['uncovered'][0])})")
    return text


def requirement(policies: dict[str, Any], baseline: str | None) -> dict[str, Any]:
    """Whether every learned policy beats ``baseline`` (results.json ``vs_task_static``).

    ``policies`` is the scored results (each entry with ``learned`` and
    ``vs_task_static``); the ``all_*`` fields are None when there is nothing to judge.
    """
    learned = [label for label, p in policies.items() if p.get("learned")]
    cmps = {label: policies[label].get("vs_task_static") for label in learned}
    judged = baseline is not None and bool(learned)
    return {
        "baseline": baseline,
        "learned": learned,
        "all_beat": all(c["beats"] for c in cmps.values()) if judged else None,
        "all_never_significantly_worse": (
            all(c["never_significantly_worse"] for c in cmps.values()) if judged else None
        ),
        "verdicts": {label: c["verdict"] for label, c in cmps.items() if c},
        "summaries": {label: c["summary"] for label, c in cmps.items() if c},
    }
