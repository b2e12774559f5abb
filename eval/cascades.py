"""Offline replay of cascades over recorded responses (RouterBench ``|model_response``,
JSONL ``responses``).

For every lam of the sweep, each test prompt gets its plan from
:meth:`policies.cascade.CascadePolicy.plan` (kind inferred from the prompt text) and
:meth:`~policies.cascade.CascadePlan.step` runs on the recorded responses, exactly as the
gateway runs it on live calls: the cost of a query is the sum of every call made, its
quality that of the returned answer (0 when no call answered). Beside the lam sweep,
:func:`budget_sweep` replays the budget mode (policies.cascade_budget) at budgets spread
over the range the train plans can spend.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.answers import infer_kind
from policies.cascade import CascadePlan, CascadePolicy
from policies.cascade_budget import BudgetMix
from router.dataset import RoutingDataset

#: budgets of the budget sweep (router eval), spread over what the train plans can spend
BUDGET_POINTS = 12


class CascadeEvalError(ValueError):
    """A dataset a cascade cannot be replayed on (no recorded responses, unknown model)."""


@dataclass
class Replay:
    """Per (lam, query) outcome of a cascade sweep, each (L, n)."""

    quality: np.ndarray
    cost: np.ndarray
    returned: np.ndarray  # dataset column of the returned answer (-1: none)
    calls: np.ndarray  # number of calls made
    plans: list[dict[str, str]]  # per lam: kind -> plan description


def no_responses_note(data: RoutingDataset) -> str | None:
    """Why cascades cannot be replayed on ``data`` (None: they can)."""
    if data.responses is None or all(r is None for row in data.responses for r in row):
        return (f"{data.name}: no recorded responses (RouterBench '|model_response' columns "
                "or JSONL 'responses'), so cascades are skipped")
    return None


def replay(policy: CascadePolicy, test: RoutingDataset, lams: Sequence[float],
           budget: float | None = None, X: np.ndarray | None = None,
           mixes: Sequence[BudgetMix] | None = None) -> Replay:
    """Run ``policy``'s plans over ``test``'s recorded responses at every lam (``X``: the
    test embeddings, for policies that route some kinds on the prompt); with ``mixes``
    (:meth:`CascadePolicy.budget_mix`), at each budget mix instead (``lams`` unused)."""
    note = no_responses_note(test)
    if note:
        raise CascadeEvalError(note)
    quality, cost = test.eval_matrices()
    col = {m: j for j, m in enumerate(test.models)}
    kinds = [infer_kind(p) for p in test.prompts]
    points: list[tuple[float, BudgetMix | None]] = (
        [(0.0, m) for m in mixes] if mixes is not None else [(float(v), None) for v in lams])
    n, L = len(test), len(points)
    out_q, out_c = np.zeros((L, n)), np.zeros((L, n))
    out_r, out_k = np.full((L, n), -1, dtype=np.int64), np.zeros((L, n), dtype=np.int64)
    plans: list[dict[str, str]] = []
    memo: dict[tuple[CascadePlan, int], tuple[int, float, int]] = {}
    for li, (lam, mix) in enumerate(points):
        per_row = policy.plans_for(kinds, X, lam=lam, budget=budget, texts=test.prompts,
                                   mix=mix)
        plans.append(_describe(kinds, per_row))
        for i, plan in enumerate(per_row):
            key = (plan, i)
            if key not in memo:
                memo[key] = _run(plan, test.responses[i], cost[i], col)  # type: ignore[index]
            r, c, k = memo[key]
            out_r[li, i], out_c[li, i], out_k[li, i] = r, c, k
            out_q[li, i] = quality[i, r] if r >= 0 else 0.0
    return Replay(out_q, out_c, out_r, out_k, plans)


def _describe(kinds: Sequence[str], plans: Sequence[CascadePlan]) -> dict[str, str]:
    """kind -> its plan's description; a kind routed per prompt (several one-model
    plans) -> 'routed: <share of each model>'."""
    out: dict[str, str] = {}
    for kind in sorted(set(kinds)):
        seen = [p for k, p in zip(kinds, plans, strict=True) if k == kind]
        if len(set(seen)) == 1:
            out[kind] = seen[0].describe()
            continue
        top = Counter(p.describe() for p in seen).most_common(4)
        out[kind] = "routed: " + ", ".join(f"{d} {n / len(seen):.0%}" for d, n in top)
    return out


def _run(plan: CascadePlan, responses: Sequence[str | None], cost: np.ndarray,
         col: dict[str, int]) -> tuple[int, float, int]:
    """(returned column, total cost, calls) of one prompt under ``plan``."""
    missing = [m for m in plan.models if m not in col]
    if missing:
        raise CascadeEvalError(f"the cascade calls models the dataset lacks: {missing}")
    answers: dict[str, str | None] = {}
    spent, calls = 0.0, 0
    step = plan.step(answers)
    while not step.done:
        for m in step.next_models:
            answers[m] = responses[col[m]]
            spent += float(cost[col[m]])
            calls += 1
        step = plan.step(answers)
    return (-1 if step.model is None else col[step.model]), spent, calls


def sweep_cascade(policy: CascadePolicy, test: RoutingDataset, lams: Sequence[float],
                  X: np.ndarray | None = None
                  ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict, float, float]:
    """The harness's sweep of a cascade: (returned column (L, n), (quality, cost) (L, n),
    results.json extras, plan seconds, replay seconds)."""
    import time

    t0 = time.perf_counter()
    kinds = sorted({infer_kind(p) for p in test.prompts})
    for kind in kinds:
        policy.plan_for_kind(kind)  # fails early on an unfitted policy
    t1 = time.perf_counter()
    out = replay(policy, test, lams, X=X)
    budgets = budget_sweep(policy, test, X)
    t2 = time.perf_counter()
    search = getattr(policy, "search_", {}).get("kinds", {})
    extra = {"cascade": {
        "test_kinds": {k: sum(infer_kind(p) == k for p in test.prompts) for k in kinds},
        "mean_calls": out.calls.mean(axis=1).round(4).tolist(),
        "plans": out.plans,
        "search": {k: {"rows": v.get("rows"), "candidates": v.get("candidates")}
                   for k, v in search.items()},
        "budget_sweep": budgets,
    }}
    return out.returned, (out.quality, out.cost), extra, t1 - t0, t2 - t1


def budget_grid(policy: CascadePolicy, points: int = BUDGET_POINTS) -> list[float]:
    """``points`` budgets (USD/query), log-spaced from the cheapest train mix of plans
    to the dearest (lam 0 for every kind): train figures only."""
    lo = policy.budget_mix(0.0).train_cost
    hi = policy.budget_mix(1e9).train_cost
    if not 0 < lo < hi:
        return [hi] if hi > 0 else []
    return [float(b) for b in np.geomspace(lo, hi, points)]


def budget_sweep(policy: CascadePolicy, test: RoutingDataset, X: np.ndarray | None = None,
                 budgets: Sequence[float] | None = None) -> list[dict]:
    """results.json's ``budget_sweep`` of a cascade: per budget (default
    :func:`budget_grid`) its train mix (expected train cost and quality, price lam, the
    mixing share per kind) and the test replay's mean cost, quality, calls, per task."""
    budgets = budget_grid(policy) if budgets is None else list(budgets)
    mixes = [policy.budget_mix(b) for b in budgets]
    out = replay(policy, test, [], X=X, mixes=mixes)
    tasks = np.asarray(test.tasks)
    rows = []
    for i, mix in enumerate(mixes):
        rows.append({
            "budget": mix.budget, "lam": mix.lam,
            "train_cost": mix.train_cost, "train_quality": mix.train_quality,
            "shares": {k: m.share for k, m in mix.kinds.items() if m.share > 0},
            "cost": float(out.cost[i].mean()), "quality": float(out.quality[i].mean()),
            "mean_calls": float(out.calls[i].mean()), "plans": out.plans[i],
            "per_task": {t: {"cost": float(out.cost[i, tasks == t].mean()),
                             "quality": float(out.quality[i, tasks == t].mean())}
                         for t in sorted(set(test.tasks))},
        })
    return rows
