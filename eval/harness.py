"""Offline evaluation harness: train or load policies, sweep ``lam``, score the curves.

The flow is: :func:`lam_grid` (:mod:`eval.specs`, with the policy list) picks the trade-off values from the training costs;
:func:`sweep_policy` predicts once per policy and lets the shared ``choose`` pick a model
per query at every ``lam`` (so one sweep costs one prediction); :class:`Evaluation` turns
the chosen models into per-query-averaged (cost, quality) curves on the test split, with
the metrics of :mod:`eval.metrics`, per-task breakdowns, paired bootstrap intervals and
each policy's comparison with task-static at matched costs (:mod:`eval.compare`).

Quality and cost come from ``RoutingDataset.eval_matrices()``: a missing quality counts
as 0, a missing cost as that model's mean cost. Costs are USD per query throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval import metrics as M
from eval.compare import BASELINE, compare_hulls
from eval.specs import (  # noqa: F401 (re-exported: callers use eval.harness.NAME)
    ANSWER_AWARE,
    BASELINE_POLICIES,
    DEFAULT_LAM_POINTS,
    EMBEDDING_FREE,
    NOT_DEFAULT,
    EvalError,
    PolicySpec,
    _parse_value,
    available_policy,
    cost_scale,
    default_policy_names,
    lam_grid,
    needs_embeddings,
    parse_policies,
)
from policies import make_policy
from policies.base import Policy, choose
from router.dataset import RoutingDataset

CI_LEVEL = 0.95


# ---- training and sweeping --------------------------------------------------------------
def fit_policy(spec: PolicySpec, train: RoutingDataset, X_train: np.ndarray) -> Policy:
    """A fresh policy from ``spec`` fitted on the train split (missing quality stays NaN)."""
    return make_policy(spec.name, **spec.params).fit_dataset(train, X_train)


def model_map(policy: Policy, models: Sequence[str], label: str) -> np.ndarray:
    """Dataset column of each of the policy's models (errors on unknown models)."""
    unknown = [m for m in policy.models_ if m not in models]
    if unknown:
        raise EvalError(
            f"{label}: the policy routes to models the dataset lacks: {unknown}; "
            f"dataset models: {list(models)}"
        )
    return np.array([list(models).index(m) for m in policy.models_], dtype=np.int64)


def sweep_policy(
    policy: Policy,
    X: np.ndarray,
    lams: np.ndarray,
    tasks: Sequence[str],
    truth: tuple[np.ndarray, np.ndarray],
    columns: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """Chosen dataset column per (lam, query), shape (L, n), plus predict and route seconds.

    ``truth`` is the (quality, cost) of the test queries in dataset column order; it is
    handed to evaluation-only policies (the oracle) in the policy's own model order.
    ``columns`` maps the policy's model index to the dataset column.
    """
    truth_p = (truth[0][:, columns], truth[1][:, columns])
    given = truth_p if policy.evaluation_only else None
    t0 = time.perf_counter()
    custom_route = type(policy).route is not Policy.route
    est = None if custom_route else policy.predict(X, tasks=tasks, truth=given)
    t1 = time.perf_counter()
    out = np.empty((len(lams), X.shape[0]), dtype=np.int64)
    for i, lam in enumerate(lams):
        if custom_route:
            out[i] = policy.route(X, lam=float(lam), tasks=tasks, truth=given)
        else:
            out[i] = choose(est.quality, est.cost, lam=float(lam))
    t2 = time.perf_counter()
    return columns[out], t1 - t0, t2 - t1


# ---- references and scores --------------------------------------------------------------
@dataclass
class Reference:
    """Single models and the oracle on a set of test queries (means per query)."""

    models: list[str]
    model_cost: np.ndarray
    model_quality: np.ndarray
    oracle_cost: float
    oracle_quality: float
    weak: int
    strong: int
    best: int  # best single model on these queries (ties: cheaper)

    @property
    def c_min(self) -> float:
        return float(self.model_cost.min())

    @property
    def c_max(self) -> float:
        return float(self.model_cost.max())

    @property
    def weak_anchor(self) -> M.Anchor:
        return M.Anchor(float(self.model_cost[self.weak]), float(self.model_quality[self.weak]))

    @property
    def strong_anchor(self) -> M.Anchor:
        return M.Anchor(
            float(self.model_cost[self.strong]), float(self.model_quality[self.strong])
        )

    @property
    def best_quality(self) -> float:
        return float(self.model_quality[self.best])


def best_single(model_quality: np.ndarray, model_cost: np.ndarray) -> int:
    top = np.flatnonzero(model_quality >= model_quality.max() - 1e-12)
    return int(top[np.argmin(model_cost[top])])


def make_reference(
    models: Sequence[str],
    quality: np.ndarray,
    cost: np.ndarray,
    weak: int | None = None,
    strong: int | None = None,
) -> Reference:
    """Reference points of (n, m) eval matrices; default weak = cheapest model, default
    strong = best single model."""
    mq, mc = quality.mean(axis=0), cost.mean(axis=0)
    pick = choose(quality, cost, lam=0.0)  # oracle: best true quality, ties to the cheaper
    rows = np.arange(quality.shape[0])
    best = best_single(mq, mc)
    return Reference(
        models=list(models),
        model_cost=mc,
        model_quality=mq,
        oracle_cost=float(cost[rows, pick].mean()),
        oracle_quality=float(quality[rows, pick].mean()),
        weak=int(np.argmin(mc)) if weak is None else weak,
        strong=best if strong is None else strong,
        best=best,
    )


def fixed_costs(c_min: float, c_max: float, k: int = 5) -> list[float]:
    """k budgets (USD/query) spread geometrically over [c_min, c_max], rounded to two
    significant digits in $/1k queries."""
    if c_min <= 0 or c_max <= c_min:
        return [c_max] if c_max > 0 else []
    raw = np.geomspace(c_min, c_max, k + 2)[1:-1] * 1000.0
    nice = sorted({float(f"{v:.2g}") for v in raw})
    return [v / 1000.0 for v in nice]


def score_curve(cost: np.ndarray, quality: np.ndarray, ref: Reference) -> dict[str, Any]:
    """Point metrics of one curve against ``ref`` (see eval/README.md)."""
    hull = M.pareto_hull(cost, quality)
    weak, strong = ref.weak_anchor, ref.strong_anchor
    apgr, coverage = M.apgr(hull, weak, strong)
    cpt50, cpt80 = M.cpt(hull, weak, strong, 0.5), M.cpt(hull, weak, strong, 0.8)
    return {
        "aiq": M.aiq(hull, ref.c_min, ref.c_max),
        "hull": hull,
        "max_quality": float(hull[-1, 1]),
        "cost_at_max_quality": float(hull[-1, 0]),
        "cost_at_best_single_quality": M.cost_to_reach(hull, ref.best_quality),
        "apgr": apgr,
        "apgr_coverage": coverage,
        "cpt50": cpt50,
        "cpt80": cpt80,
    }


@dataclass
class PolicyResult:
    """A policy's sweep over the test queries."""

    label: str
    name: str
    source: str  # "trained" or the artifact directory
    params: dict[str, Any]
    choices: np.ndarray  # (L, n) dataset column per lam and query
    timings: dict[str, float] = field(default_factory=dict)
    #: (quality, cost), each (L, n), when they are not those of the chosen column (a
    #: cascade's cost is every call it made; ``choices`` is then the returned answer's)
    outcomes: tuple[np.ndarray, np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # policy-specific results.json data


class Evaluation:
    """Scores policy sweeps on a test split against single-model and oracle references."""

    def __init__(
        self,
        test: RoutingDataset,
        lams: np.ndarray,
        weak: str | None = None,
        strong: str | None = None,
    ) -> None:
        if len(test) == 0:
            raise EvalError(f"{test.name}: the test split is empty")
        self.test = test
        self.lams = np.asarray(lams, dtype=np.float64)
        self.quality, self.cost = test.eval_matrices()
        self.models = list(test.models)
        weak_i = None if weak is None else self._model_index(weak, "--weak")
        strong_i = None if strong is None else self._model_index(strong, "--strong")
        self.ref = make_reference(self.models, self.quality, self.cost, weak_i, strong_i)
        self.tasks = np.asarray(test.tasks)
        self.task_names = test.task_names
        self.task_refs = {
            t: make_reference(
                self.models,
                self.quality[self.tasks == t],
                self.cost[self.tasks == t],
                self.ref.weak,
                self.ref.strong,
            )
            for t in self.task_names
        }
        self.results: list[PolicyResult] = []

    def _model_index(self, name: str, flag: str) -> int:
        if name not in self.models:
            raise EvalError(f"{flag} {name!r}: no such model; models: {', '.join(self.models)}")
        return self.models.index(name)

    def add(self, result: PolicyResult) -> None:
        if result.choices.shape != (len(self.lams), len(self.test)):
            raise EvalError(f"{result.label}: choices have shape {result.choices.shape}")
        self.results.append(result)

    def selected(self, choices: np.ndarray | PolicyResult) -> tuple[np.ndarray, np.ndarray]:
        """(L, n) quality and cost of the chosen models (of a result: its own outcomes
        when it has them)."""
        if isinstance(choices, PolicyResult):
            if choices.outcomes is not None:
                return choices.outcomes
            choices = choices.choices
        rows = np.arange(choices.shape[1])[None, :]
        return self.quality[rows, choices], self.cost[rows, choices]

    # ---- scoring ------------------------------------------------------------------------
    def score(
        self,
        n_boot: int = 1000,
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Per-policy metrics, curves, per-task breakdowns and bootstrap intervals."""
        counts = M.bootstrap_counts(len(self.test), n_boot, seed)
        budgets = fixed_costs(self.ref.c_min, self.ref.c_max)
        boot_ref = self._bootstrap_reference(counts)
        boot_ref["top"] = self._cost_top(counts)
        top = self._cost_top()
        boot_hulls: dict[str, list[np.ndarray]] = {}
        out: dict[str, Any] = {}
        for res in self.results:
            if progress:
                progress(res.label)
            qsel, csel = self.selected(res)
            cost, quality = csel.mean(axis=1), qsel.mean(axis=1)
            s = score_curve(cost, quality, self.ref)
            strong_share = (res.choices == self.ref.strong).mean(axis=1)
            entry: dict[str, Any] = {
                "policy": res.name,
                "params": res.params,
                "source": res.source,
                "aiq": s["aiq"],
                "aiq_routerbench": M.aiq_routerbench(s["hull"], float(top[0])),
                "curve": [
                    {"lam": float(lam), "cost": float(c), "quality": float(q),
                     "strong_share": float(f)}
                    for lam, c, q, f in zip(self.lams, cost, quality, strong_share, strict=True)
                ],
                "hull": [{"cost": float(c), "quality": float(q)} for c, q in s["hull"]],
                "max_quality": s["max_quality"],
                "cost_at_max_quality": s["cost_at_max_quality"],
                "cost_at_best_single_quality": s["cost_at_best_single_quality"],
                "apgr": s["apgr"],
                "apgr_coverage": s["apgr_coverage"],
                "cpt50": s["cpt50"],
                "cpt80": s["cpt80"],
                "quality_at_cost": [
                    {"cost": b, "quality": M.quality_at_cost(s["hull"], b)} for b in budgets
                ],
            }
            boot_hulls[res.label] = []
            entry.update(self._bootstrap(qsel, csel, counts, boot_ref, budgets, entry,
                                         boot_hulls[res.label]))
            entry["per_task"] = self._per_task(qsel, csel, top[1:])
            entry["learned"] = res.name not in BASELINE_POLICIES
            entry["timings"] = res.timings
            entry["answer_aware"] = res.name in ANSWER_AWARE
            if res.extra:
                entry.update(res.extra)
            out[res.label] = entry
        self._compare_to_baseline(out, boot_hulls)
        self._compare_to_prompt_only(out, boot_hulls, boot_ref)
        return out

    def _compare_to_prompt_only(self, out: dict[str, Any], boot_hulls: dict[str, list],
                                boot_ref: dict[str, np.ndarray]) -> None:
        """``vs_best_prompt_only`` of every answer-aware policy (cascades): against the
        learned prompt-only policy of best test AIQ, the matched-cost comparison of
        eval.compare plus the paired bootstrap AIQ difference."""
        prompt_only = [k for k, e in out.items() if e["learned"] and not e["answer_aware"]]
        best = max(prompt_only, key=lambda k: (out[k]["aiq"], k), default=None)
        for label, entry in out.items():
            if not entry["answer_aware"]:
                continue
            if best is None:
                entry["vs_best_prompt_only"] = None
                continue
            cmp = compare_hulls(_hull_array(entry["hull"]), _hull_array(out[best]["hull"]),
                                boot_hulls[label], boot_hulls[best], level=CI_LEVEL,
                                baseline=best)
            mc = boot_ref["mc"]
            diff = np.array([
                M.aiq(h, float(mc[b].min()), float(mc[b].max()))
                - M.aiq(g, float(mc[b].min()), float(mc[b].max()))
                for b, (h, g) in enumerate(zip(boot_hulls[label], boot_hulls[best],
                                               strict=True))])
            cmp.update(aiq_diff=entry["aiq"] - out[best]["aiq"],
                       aiq_diff_ci=M.percentile_ci(diff, CI_LEVEL) if diff.size else None)
            entry["vs_best_prompt_only"] = cmp

    def baseline_label(self) -> str | None:
        """Label of the task-static result the others are compared with (None: absent)."""
        found = [r for r in self.results if r.name == BASELINE]
        plain = [r for r in found if not r.params] or found
        return plain[0].label if plain else None

    def _compare_to_baseline(
        self, out: dict[str, Any], boot_hulls: dict[str, list[np.ndarray]]
    ) -> None:
        """``vs_task_static`` of every other policy (eval.compare), paired resamples."""
        base = self.baseline_label()
        for label, entry in out.items():
            if base is None or label == base:
                entry["vs_task_static"] = None
                continue
            entry["vs_task_static"] = compare_hulls(
                _hull_array(entry["hull"]), _hull_array(out[base]["hull"]),
                boot_hulls[label], boot_hulls[base], level=CI_LEVEL,
            )

    def _cost_top(self, counts: np.ndarray | None = None) -> np.ndarray:
        """The largest cost of all curves and single models (RouterBench's AIQ range):
        (1 + t,) overall then per task; with bootstrap ``counts`` (B, n), (B,) overall."""
        if counts is not None:
            n = len(self.test)
            tops = [(counts @ self.cost / n).max(axis=1)]
            tops += [(counts @ self.selected(r)[1].T / n).max(axis=1)
                     for r in self.results]
            return np.max(tops, axis=0)
        groups = [np.ones(len(self.test), dtype=bool)]
        groups += [self.tasks == t for t in self.task_names]
        costs = [self.selected(r)[1] for r in self.results]
        return np.array([max([float(self.cost[g].mean(axis=0).max())]
                             + [float(c[:, g].mean(axis=1).max()) for c in costs])
                         for g in groups])

    def _per_task(self, qsel: np.ndarray, csel: np.ndarray,
                  tops: np.ndarray | None = None) -> dict[str, Any]:
        per: dict[str, Any] = {}
        for i, t in enumerate(self.task_names):
            rows = self.tasks == t
            ref = self.task_refs[t]
            s = score_curve(csel[:, rows].mean(axis=1), qsel[:, rows].mean(axis=1), ref)
            top = ref.c_max if tops is None else float(tops[i])
            per[t] = {
                "n": int(rows.sum()),
                "aiq": s["aiq"],
                "aiq_routerbench": M.aiq_routerbench(s["hull"], top),
                "max_quality": s["max_quality"],
                "cost_at_max_quality": s["cost_at_max_quality"],
                "cost_at_best_single_quality": s["cost_at_best_single_quality"],
                "apgr": s["apgr"],
                "hull": [{"cost": float(c), "quality": float(q)} for c, q in s["hull"]],
            }
        return per

    def _bootstrap_reference(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        n = len(self.test)
        mq, mc = counts @ self.quality / n, counts @ self.cost / n
        return {"mq": mq, "mc": mc}

    def _bootstrap(
        self,
        qsel: np.ndarray,
        csel: np.ndarray,
        counts: np.ndarray,
        boot_ref: dict[str, np.ndarray],
        budgets: list[float],
        point: dict[str, Any],
        hulls: list[np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Percentile intervals from resampled test queries (the same resamples for every
        policy, so differences between policies are paired). Each resample's hull is
        appended to ``hulls`` when given."""
        if counts.shape[0] == 0:
            return {"aiq_ci": None, "aiq_routerbench_ci": None, "max_quality_ci": None,
                    "apgr_ci": None}
        n = len(self.test)
        cb, qb = counts @ csel.T / n, counts @ qsel.T / n  # (B, L)
        mq, mc = boot_ref["mq"], boot_ref["mc"]
        w, s = self.ref.weak, self.ref.strong
        n_boot = counts.shape[0]
        aiq = np.empty(n_boot)
        aiq_rb = np.full(n_boot, np.nan)
        maxq = np.empty(n_boot)
        apgr = np.full(n_boot, np.nan)
        qac = np.full((n_boot, len(budgets)), np.nan)
        for b in range(n_boot):
            hull = M.pareto_hull(cb[b], qb[b])
            if hulls is not None:
                hulls.append(hull)
            aiq[b] = M.aiq(hull, float(mc[b].min()), float(mc[b].max()))
            if "top" in boot_ref:
                aiq_rb[b] = M.aiq_routerbench(hull, float(boot_ref["top"][b]))
            maxq[b] = hull[-1, 1]
            value, _ = M.apgr(
                hull, M.Anchor(mc[b, w], mq[b, w]), M.Anchor(mc[b, s], mq[b, s])
            )
            if value is not None:
                apgr[b] = value
            for k, budget in enumerate(budgets):
                v = M.quality_at_cost(hull, budget)
                if v is not None:
                    qac[b, k] = v
        for k, item in enumerate(point["quality_at_cost"]):
            item["ci"] = None if item["quality"] is None else M.percentile_ci(qac[:, k], CI_LEVEL)
        return {
            "aiq_ci": M.percentile_ci(aiq, CI_LEVEL),
            "aiq_routerbench_ci": M.percentile_ci(aiq_rb, CI_LEVEL),
            "max_quality_ci": M.percentile_ci(maxq, CI_LEVEL),
            "apgr_ci": None if point["apgr"] is None else M.percentile_ci(apgr, CI_LEVEL),
        }

    # ---- references ---------------------------------------------------------------------
    def reference_json(self) -> dict[str, Any]:
        """Every single model's and the oracle's cost and quality, overall and per task,
        plus the single-model hull ("zero router") and its AIQ (both conventions)."""
        top = self._cost_top()
        return {
            **_reference_dict(self.ref, float(top[0])),
            "per_task": {t: _reference_dict(r, float(top[1 + i]))
                         for i, (t, r) in enumerate(self.task_refs.items())},
        }


def _hull_array(points: list[dict[str, float]]) -> np.ndarray:
    return np.array([[p["cost"], p["quality"]] for p in points], dtype=np.float64)


def _reference_dict(ref: Reference, top: float | None = None) -> dict[str, Any]:
    hull = M.pareto_hull(ref.model_cost, ref.model_quality)
    why = M.gap_defined(ref.weak_anchor, ref.strong_anchor)
    return {
        "models": {
            m: {"cost": float(c), "quality": float(q)}
            for m, c, q in zip(ref.models, ref.model_cost, ref.model_quality, strict=True)
        },
        "oracle": {"cost": ref.oracle_cost, "quality": ref.oracle_quality},
        "cheapest_model": ref.models[int(np.argmin(ref.model_cost))],
        "best_single": ref.models[ref.best],
        "weak": ref.models[ref.weak],
        "strong": ref.models[ref.strong],
        "apgr_undefined": why,
        "cost_range": [ref.c_min, ref.c_max],
        "zero_router": {
            "aiq": M.aiq(hull, ref.c_min, ref.c_max),
            "aiq_routerbench": M.aiq_routerbench(hull, ref.c_max if top is None else top),
            "hull": [{"cost": float(c), "quality": float(q)} for c, q in hull],
        },
        "aiq_routerbench_cost_top": ref.c_max if top is None else top,
    }
