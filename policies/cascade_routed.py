"""Cascades where answers can agree, a prompt-only router where they cannot.

:class:`RoutedCascadePolicy` (registry name ``"cascade-routed"``) learns the same
per-kind cascade plans as :class:`~policies.cascade.CascadePolicy` and, beside them, a
prompt-only router (``cscr`` by default, any embedding policy by name) on the same train
rows. For an answer kind whose cross-validated plan family is *single models* (agreement
between answers did not pay on train: code and free text on RouterBench), a fixed
per-kind model is what the cascade would call; the router picks the model per prompt at
the same ``lam`` instead (within a budget: at the lam of the prompt's mixed plan). Kinds whose plans use agreement keep them. Which
kinds are routed is decided on train only, from the cascade search's own cross-validation.

``route="single"`` (the default) also routes, at a ``lam`` (or budget), the prompts of any
other kind whose plan there compares no answers (:attr:`CascadePlan.compares` is False:
one model, possibly with a fallback), e.g. multiple choice at high ``lam``, where the
cascade too would call one fixed model. On the RouterBench subset's train split, 5-fold
held-out utility of the router (cscr) beat those fixed models by +0.0016 (multiple choice)
and +0.0013 (code) on average over the lams below 3000 where the plans are single models
(eval/README.md). ``route="kinds"`` routes only the single-model kinds (artifacts saved
before this parameter existed load with it).

The served plan is always a :class:`~policies.cascade.CascadePlan` (a routed prompt gets a
one-stage, one-model plan), so the gateway and the offline replay run it like any cascade;
:meth:`plan` needs the prompt's embedding for routed kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policies import answers as A
from policies._priors import fill_cost
from policies.base import Policy, PolicyError, TrainData, choose
from policies.cascade import ALL_KINDS, ALL_SINGLE, CascadePlan, CascadePolicy, CascadeStage
from policies.cascade_budget import BudgetMix, HullPoint

ROUTER_DIR = "router"  # the inner router's artifact, inside this artifact's directory
ROUTE_MODES = ("single", "kinds")


class RoutedCascadePolicy(CascadePolicy):
    """Cascade plans per answer kind; a prompt-only ``router`` for single-model kinds."""

    name = "cascade-routed"
    uses_embeddings = True

    def __init__(self, router: str = "cscr", route: str = "single", folds: int = 5,
                 max_first: int = 3, seed: int = 0, lazy: bool = True) -> None:
        super().__init__(folds=folds, max_first=max_first, seed=seed, lazy=lazy)
        self.router = router
        self.route = route

    # ---- fitting ------------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        from policies import get_policy_class, make_policy

        if self.route not in ROUTE_MODES:
            raise PolicyError(f"cascade-routed: route must be one of {ROUTE_MODES}, got "
                              f"{self.route!r}")
        klass = get_policy_class(str(self.router))
        if issubclass(klass, CascadePolicy) or "responses" in klass.requires or klass.online \
                or klass.evaluation_only or not getattr(klass, "uses_embeddings", True):
            raise PolicyError(f"cascade-routed: router must be an offline prompt-only policy "
                              f"that reads embeddings (knn, cscr, mlp, routerdc), got "
                              f"{self.router!r}")
        super()._fit(data)
        inner = make_policy(str(self.router))
        inner.fit(data.X, data.quality, data.cost, data.models, tasks=data.tasks,
                  texts=data.texts)
        self.router_ = inner
        levels = {k: v.get("level") for k, v in self.search_.get("kinds", {}).items()}
        self.routed_ = sorted(k for k, lvl in levels.items() if lvl == 1 and k != ALL_KINDS)
        self.lam_points_ = self._train_points(data)

    def _train_points(self, data: TrainData) -> dict[str, list[list[float]]]:
        """Per kind, the train (in-sample) [lam, mean cost, mean quality] of what its
        prompts get at each lam of the search grid: the kind's plan, or where the router
        takes them (routed kinds; with ``route="single"`` a plan comparing no answers)
        the router's picks. The budget mode's hulls (:meth:`budget_mix`) are built on
        these, so a budget counts the router's train cost, not the replaced plan's."""
        quality = np.nan_to_num(np.asarray(data.quality, float), nan=0.0)
        cost = fill_cost(data.cost)
        kinds = np.array([A.infer_kind(t) for t in data.texts or []])
        lams = [float(v) for v in self.search_.get("lams", [0.0])]
        est = (None if type(self.router_).route is not Policy.route
               else self.router_.predict(np.asarray(data.X)))
        out: dict[str, list[list[float]]] = {}
        for kind in self.kinds_:
            rows = np.flatnonzero(kinds == kind)
            if rows.size == 0:
                continue
            points = []
            for lam in lams:
                plan = self.plan_for_kind(kind, lam=lam)
                if not (self.routes(kind) or self._routes_plan(plan)):
                    pick = next(c for c in reversed(self.plans_[kind]) if c.lam_low <= lam)
                    points.append([lam, pick.cost, pick.quality])
                    continue
                chosen = (self.router_.route(np.asarray(data.X)[rows], lam=lam) if est is None
                          else choose(est.quality[rows], est.cost[rows], lam=lam))
                cols = np.array([data.models.index(self.router_.models_[int(j)])
                                 for j in chosen], dtype=np.int64)
                points.append([lam, float(cost[rows, cols].mean()),
                               float(quality[rows, cols].mean())])
            out[kind] = points
        return out

    def _hull_points(self, kind: str) -> list[HullPoint]:
        points = getattr(self, "lam_points_", {}).get(kind)
        if not points:  # artifacts saved before the budget mode: the plans' figures
            return super()._hull_points(kind)
        return [HullPoint(lam, c, q) for lam, c, q in points]

    def routes(self, kind: str) -> bool:
        """Whether prompts of ``kind`` go to the router: their train plans are single
        models, or the train split lacks the kind and it is code or free text (whose
        agreement was never learned)."""
        self._check_fitted()
        if kind in self.routed_:
            return True
        return kind not in self.plans_ and kind in A.GRADED_KINDS

    # ---- planning -----------------------------------------------------------------------
    def plan(self, text: str, x: np.ndarray | None = None, lam: float = 0.0,
             budget: float | None = None) -> CascadePlan:
        kind = A.infer_kind(text)
        if not self.routes(kind):
            plan = self.plan_for_kind(kind, lam=lam, budget=budget, text=text)
            if x is None or not self._routes_plan(plan):
                return plan  # without the embedding a single-model plan is served as is
        elif x is None:
            raise PolicyError("cascade-routed: routing a prompt of kind "
                              f"{kind!r} needs its embedding")
        return self.plans_for([kind], np.atleast_2d(x), lam=lam, budget=budget,
                              texts=[text])[0]

    def plans_for(self, kinds: Sequence[str], X: np.ndarray | None, lam: float = 0.0,
                  budget: float | None = None, texts: Sequence[str] | None = None,
                  mix: BudgetMix | None = None) -> list[CascadePlan]:
        """One plan per prompt (``kinds`` inferred from the prompts, ``X`` their
        embeddings): the router's model for routed kinds (and, with ``route="single"``,
        for prompts whose kind's plan compares no answers), the kind's cascade otherwise.
        Within a ``budget`` each prompt is planned at the lam of the mixed train plan its
        text picks (:meth:`budget_mix`, from the cascade plans' train figures), and a
        routed prompt is routed at that lam."""
        lams = self.prompt_lams(kinds, texts, lam, budget, mix)
        out = super().plans_for(kinds, None, lam=lam, budget=budget, texts=texts, mix=mix)
        rows = [i for i, k in enumerate(kinds) if self.routes(k)]
        if rows and X is None:
            raise PolicyError("cascade-routed: routed kinds need the prompts' embeddings")
        if X is not None:
            rows += [i for i, k in enumerate(kinds)
                     if not self.routes(k) and self._routes_plan(out[i])]
        for lam_g in sorted({lams[i] for i in rows}):
            group = [i for i in rows if lams[i] == lam_g]
            picks = self.router_.route(np.asarray(X)[group], lam=lam_g)
            for i, j in zip(group, picks, strict=True):
                kind = kinds[i] if kinds[i] in A.KINDS else "text"
                model = self.router_.models_[int(j)]
                out[i] = CascadePlan(kind, (CascadeStage((model,), 1),), (model,))
        return out

    def _routes_plan(self, plan: CascadePlan) -> bool:
        """Whether a prompt of a cascade kind is routed under ``plan`` (route="single")."""
        return self.route == "single" and not plan.compares

    def _check_fitted(self) -> None:
        super()._check_fitted()
        if not hasattr(self, "router_"):
            raise PolicyError("cascade-routed: not fitted (call fit or load an artifact)")

    # ---- artifacts ----------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super()._get_state()
        return arrays, {**meta, "routed": list(self.routed_), "route": self.route,
                        "lam_points": self.lam_points_}

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        self.routed_ = [str(k) for k in meta.get("routed", [])]
        self.lam_points_ = {str(k): [[float(x) for x in p] for p in v]
                            for k, v in meta.get("lam_points", {}).items()}
        # artifacts saved before route existed routed only the single-model kinds
        self.route = str(meta.get("route", "kinds"))
        if self.route not in ROUTE_MODES:
            raise PolicyError(f"cascade-routed artifact: unknown route {self.route!r}")
        unknown = [k for k in self.routed_ if k not in self.plans_ and k != ALL_SINGLE]
        if unknown:
            raise PolicyError(f"cascade-routed artifact: routed kinds without plans {unknown}")

    def _save_files(self, path: Path) -> None:
        self.router_.save(path / ROUTER_DIR)

    def _load_files(self, path: Path) -> None:
        inner = Policy.load(path / ROUTER_DIR)
        if inner.models_ != self.models_:
            raise PolicyError(f"{path / ROUTER_DIR}: the router's models {inner.models_} are "
                              f"not the cascade's {self.models_}")
        self.router_ = inner

    def own_encoder(self) -> dict[str, Any] | None:
        return self.router_.own_encoder() if hasattr(self, "router_") else None
