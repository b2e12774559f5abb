"""Answer-aware cascades: call cheap models first, accept when their answers agree, else
escalate (FrugalGPT, AutoMix, Yue et al. 2024).

The contract shared by the offline evaluation and the gateway:

* :class:`CascadePlan` holds an answer kind and stages of models; :meth:`CascadePlan.first`
  names the models to call first (concurrently), :meth:`CascadePlan.step` takes the raw
  responses gathered so far (``None`` = a failed or timed-out call, which counts as
  disagreement) and says whether to stop (and whose answer to return, and which models
  agree with it) or which models to call next.
* :class:`CascadePolicy` (registry name ``"cascade"``) learns, on the train split only, one
  list of plans per answer kind (:mod:`policies.answers`), each plan optimal for a range of
  ``lam`` (:mod:`policies.cascade_search`); :meth:`CascadePolicy.plan` infers a prompt's
  kind from its text and returns the plan for ``lam``, or within a ``budget`` (mean USD
  per query: two adjacent train plans mixed by a hash of the prompt,
  :mod:`policies.cascade_budget`).

Decision rule of :meth:`CascadePlan.step`, stage by stage: once every model of stage k has
answered, each answer of stages 1..k with an answer key counts the answers that agree with
it (itself included; :func:`policies.answers.agree` at the plan's ``threshold``, 1.0 =
equal keys); when the most agreed-with answer reaches ``min_agree`` the cascade stops and
returns it (ties: the preferred model, ``prefer`` order, by default later calls first).
The last stage is accepted unconditionally: the same count among *its* models' responses
(a response without an answer key agrees only with itself); when every model of the last
stage failed, the same rule runs over all responses gathered. A non-final stage is never
called when no stage from it to the last non-final one can reach its ``min_agree`` any
more (the answers so far disagree too much): the cascade goes straight to the last stage,
so ``a+b>=3 -> c>=3 -> d`` decides as ``a+b+c>=3 -> d`` but calls ``c`` only when ``a``
and ``b`` agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import answers as A
from policies._priors import TaskTable, fill_cost
from policies.base import Estimate, Policy, PolicyError, TrainData, check_budget, check_lam
from policies.cascade_budget import BudgetMix, HullPoint, mix_for_budget, upper_hull

ALL_KINDS = "*"  # plans learned on every train prompt, for kinds the train split lacks
ALL_SINGLE = "*1"  # single-model plans learned likewise, for unseen code and free text


@dataclass(frozen=True)
class CascadeStage:
    """Models called concurrently; accept when >= ``min_agree`` answers so far agree."""

    models: tuple[str, ...]
    min_agree: int

    def __post_init__(self) -> None:
        if not self.models:
            raise PolicyError("a cascade stage needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise PolicyError(f"a cascade stage names a model twice: {self.models}")
        if int(self.min_agree) < 1:
            raise PolicyError(f"min_agree must be >= 1, got {self.min_agree}")


@dataclass(frozen=True)
class CascadeStep:
    """What to do after the answers gathered so far.

    ``agreed`` lists the models whose answer key equals the returned one's, ``model``
    included (just ``model`` when its response has no answer key).
    """

    done: bool
    model: str | None
    next_models: tuple[str, ...]
    agreed: tuple[str, ...]


@dataclass(frozen=True)
class CascadePlan:
    """An answer kind and stages; the last stage's answer is accepted unconditionally."""

    kind: str
    stages: tuple[CascadeStage, ...]
    prefer: tuple[str, ...] = field(default=())  # representative order (first = best)
    #: answers agree when their answers.similarity reaches this (1.0: equal answer keys;
    #: lower values matter for code and free text only)
    threshold: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in A.KINDS:
            raise PolicyError(f"unknown answer kind {self.kind!r}; kinds: {A.KINDS}")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise PolicyError(f"threshold must be in (0, 1], got {self.threshold!r}")
        if not self.stages:
            raise PolicyError("a cascade plan needs at least one stage")
        called = self.models
        if len(set(called)) != len(called):
            raise PolicyError(f"a cascade plan calls a model twice: {called}")

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the plan may call, in call order."""
        return tuple(m for s in self.stages for m in s.models)

    def first(self) -> tuple[str, ...]:
        """The models to call first (concurrently)."""
        return self.stages[0].models

    @property
    def compares(self) -> bool:
        """Whether any decision compares two answers: a stage of several models, or a
        non-final stage needing two or more agreeing answers. A plan that never does
        (one model, or one model with fallbacks for a missing answer) picks one model
        for every prompt of its kind."""
        last = len(self.stages) - 1
        return any(len(s.models) > 1 or (k < last and s.min_agree > 1)
                   for k, s in enumerate(self.stages))

    def rank(self) -> dict[str, int]:
        """Preference rank per model (0 = most preferred): ``prefer`` first, then the
        remaining models, later calls first."""
        order = [m for m in self.prefer if m in self.models]
        order += [m for m in reversed(self.models) if m not in order]
        return {m: i for i, m in enumerate(order)}

    def keys(self, answers: Mapping[str, str | None]) -> dict[str, str | None]:
        """Answer key of each gathered response, in call order."""
        return {m: A.extract(answers[m], self.kind) for m in self.models if m in answers}

    def step(self, answers: Mapping[str, str | None]) -> CascadeStep:
        """The decision after ``answers`` (model -> raw response text, None = failed)."""
        rank = self.rank()
        unknown = [m for m in answers if m not in rank]
        if unknown:
            raise PolicyError(f"answers from models the plan does not call: {unknown}")
        keys = self.keys(answers)
        last = len(self.stages) - 1
        k = 0
        while True:
            if k < last and not self._may_accept(k, keys, rank):
                k = last  # no later stage can reach its min_agree: skip to the last
            stage = self.stages[k]
            missing = tuple(m for m in stage.models if m not in answers)
            if missing:
                return CascadeStep(False, None, missing, ())
            if k == last:
                return self._final(answers, keys, stage.models, rank)
            gathered = {m: keys[m] for s in self.stages[: k + 1] for m in s.models}
            model, size = self._best(gathered, rank)
            if model is not None and size >= stage.min_agree:
                return CascadeStep(True, model, (), self._agreeing(model, keys))
            k += 1

    def _may_accept(self, k: int, keys: Mapping[str, str | None],
                    rank: Mapping[str, int]) -> bool:
        """Whether some non-final stage from ``k`` on can still accept, given the answers
        of stages before ``k``: the most agreements any answer can then have is the best
        count so far (exact agreement; with a threshold below 1, agreement is not
        transitive, so every keyed answer so far) plus the models called up to there."""
        before = {m: keys[m] for s in self.stages[:k] for m in s.models}
        base = (self._best(before, rank)[1] if self.threshold >= 1.0
                else sum(v is not None for v in before.values()))
        calls = 0
        for stage in self.stages[k:-1]:
            calls += len(stage.models)
            if base + calls >= stage.min_agree:
                return True
        return False

    def _same(self, a: str | None, b: str | None) -> bool:
        if a is not None and b is not None and (a[:1] == "\0" or b[:1] == "\0"):
            return a == b  # a keyless response (final stage) agrees only with itself
        return A.agree(a, b, self.kind, self.threshold)

    def _best(self, keys: Mapping[str, str | None],
              rank: Mapping[str, int]) -> tuple[str | None, int]:
        """The model agreeing with the most answers (itself included) and that count;
        ties to the preferred model. Models without a key take no part."""
        best: tuple[int, int] | None = None
        model = None
        for m, k in keys.items():
            if k is None:
                continue
            size = sum(self._same(k, other) for other in keys.values())
            score = (-size, rank[m])
            if best is None or score < best:
                best, model = score, m
        return model, 0 if best is None else -best[0]

    def _agreeing(self, model: str, keys: Mapping[str, str | None]) -> tuple[str, ...]:
        key = keys.get(model)
        if key is None:
            return (model,)
        return tuple(m for m in keys if m == model or self._same(key, keys[m]))

    def _final(self, answers: Mapping[str, str | None], keys: dict[str, str | None],
               last: tuple[str, ...], rank: dict[str, int]) -> CascadeStep:
        for pool in (last, tuple(keys)):
            alive = [m for m in pool if answers.get(m) is not None]
            if not alive:
                continue
            # responses without a key agree only with themselves
            labelled = {m: keys[m] if keys[m] is not None else f"\0{m}" for m in alive}
            model, _ = self._best(labelled, rank)
            assert model is not None
            return CascadeStep(True, model, (), self._agreeing(model, keys))
        return CascadeStep(True, None, (), ())

    # ---- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "prefer": list(self.prefer), "threshold": self.threshold,
                "stages": [{"models": list(s.models), "min_agree": s.min_agree}
                           for s in self.stages]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CascadePlan:
        try:
            stages = tuple(CascadeStage(tuple(str(m) for m in s["models"]), int(s["min_agree"]))
                           for s in obj["stages"])
            return cls(str(obj["kind"]), stages, tuple(str(m) for m in obj.get("prefer", ())),
                       float(obj.get("threshold", 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"not a cascade plan: {json.dumps(obj)[:200]} ({exc})") from exc

    def describe(self) -> str:
        """Short text: 'Yi+claude-instant>=2 -> gpt-4'."""
        parts = []
        for i, s in enumerate(self.stages):
            names = "+".join(_short(m) for m in s.models)
            last = i == len(self.stages) - 1
            parts.append(names if last or (len(s.models) == 1 and s.min_agree == 1)
                         else f"{names}>={s.min_agree}")
        text = " -> ".join(parts)
        return text if self.threshold >= 1.0 else f"{text} (agree at {self.threshold:g})"


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


# ---- the policy -------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanChoice:
    """A learned plan with the lam range it is chosen for and its train figures."""

    plan: CascadePlan
    lam_low: float  # chosen for lam in [lam_low, next choice's lam_low)
    quality: float  # train mean quality of the returned answer
    cost: float  # train mean cost per query (every call)

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "lam_low": self.lam_low,
                "quality": self.quality, "cost": self.cost}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PlanChoice:
        return cls(CascadePlan.from_json(obj["plan"]), float(obj["lam_low"]),
                   float(obj["quality"]), float(obj["cost"]))


class CascadePolicy(Policy):
    """Answer-aware cascades learned per answer kind from recorded train responses.

    ``folds`` cross-validation folds of train choose, per lam, how large a plan family
    to search (single models; + two stages; + three stages), guarding against plans tuned
    to the train prompts; ``max_first`` caps the models of the first stage. ``lazy``
    (default True) also searches plans that call a third model only once a pair agrees:
    cheaper for the same decisions, one more round of calls when the pair agrees (set it
    False where that latency matters more than the cost).
    """

    name = "cascade"
    requires = frozenset({"responses"})
    uses_embeddings = False

    def __init__(self, folds: int = 5, max_first: int = 3, seed: int = 0,
                 lazy: bool = True) -> None:
        self.folds = folds
        self.max_first = max_first
        self.seed = seed
        self.lazy = lazy

    # ---- fitting ------------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        from policies.cascade_search import search_plans

        if data.texts is None or data.responses is None:
            raise PolicyError("cascade: fitting needs texts and responses")
        if int(self.folds) < 2:
            raise PolicyError(f"cascade: folds must be >= 2, got {self.folds!r}")
        if not 1 <= int(self.max_first) <= 3:
            raise PolicyError(f"cascade: max_first must be 1, 2 or 3, got {self.max_first!r}")
        kinds = [A.infer_kind(t) for t in data.texts]
        quality = np.nan_to_num(data.quality, nan=0.0)
        cost = fill_cost(data.cost)
        found, info = search_plans(
            kinds, data.responses, quality, cost, data.models,
            folds=int(self.folds), max_first=int(self.max_first), seed=int(self.seed),
            lazy=bool(self.lazy))
        self.plans_ = found
        self.search_ = info
        self.mixes_: dict[tuple, BudgetMix] = {}
        # per-kind single-model means for predict(); task labels map to their usual kind
        names = sorted(set(kinds))
        codes = np.array([names.index(k) for k in kinds], dtype=np.int64)
        self.kind_table_ = TaskTable.fit(data.quality, cost, codes, names, 0.0)
        self.task_kinds_ = _task_kinds(data.tasks, kinds)

    # ---- planning -----------------------------------------------------------------------
    @property
    def kinds_(self) -> list[str]:
        return [k for k in self.plans_ if k not in (ALL_KINDS, ALL_SINGLE)]

    def choices(self, kind: str) -> list[PlanChoice]:
        """The learned plans for ``kind``. A kind the train split lacks gets the plans
        learned on all train prompts: any plan for kinds whose answers agree exactly
        (numbers, yes/no, letters), single models for code and free text, where how
        much agreement means was never learned."""
        self._check_fitted()
        found = self.plans_.get(kind)
        if found:
            return found
        if kind in A.GRADED_KINDS and self.plans_.get(ALL_SINGLE):
            return self.plans_[ALL_SINGLE]
        return self.plans_[ALL_KINDS]

    def plan(self, text: str, x: np.ndarray | None = None, lam: float = 0.0,
             budget: float | None = None) -> CascadePlan:
        """The cascade for prompt ``text`` at cost weight ``lam``, or within ``budget``
        (mean USD per query over the train mix of kinds; :meth:`budget_mix`: the prompt's
        text decides which of two adjacent train plans it gets)."""
        return self.plan_for_kind(A.infer_kind(text), lam=lam, budget=budget, text=text)

    def plans_for(self, kinds: Sequence[str], X: np.ndarray | None, lam: float = 0.0,
                  budget: float | None = None, texts: Sequence[str] | None = None,
                  mix: BudgetMix | None = None) -> list[CascadePlan]:
        """One plan per prompt of the inferred ``kinds`` (``X``, their embeddings, unused
        here: see policies.cascade_routed); with ``budget`` (or its precomputed ``mix``)
        the prompts' ``texts`` choose between the mixed plans."""
        lams = self.prompt_lams(kinds, texts, lam, budget, mix)
        memo: dict[tuple[str, float], CascadePlan] = {}
        out = []
        for k, lam_i in zip(kinds, lams, strict=True):
            if (k, lam_i) not in memo:
                memo[(k, lam_i)] = self.plan_for_kind(k, lam=lam_i)
            out.append(memo[(k, lam_i)])
        return out

    def prompt_lams(self, kinds: Sequence[str], texts: Sequence[str] | None, lam: float,
                    budget: float | None, mix: BudgetMix | None = None) -> list[float]:
        """The lam each prompt is planned at: ``lam``, or under ``budget`` / ``mix`` the
        lam of the mixed plan its text's hash picks."""
        lam, budget = check_lam(lam), check_budget(budget)
        if mix is None and budget is None:
            return [lam] * len(kinds)
        if texts is None or len(texts) != len(kinds):
            raise PolicyError("cascade: a budget needs the prompts' texts (they pick the "
                              "mixed plan)")
        mix = mix if mix is not None else self.budget_mix(budget)  # type: ignore[arg-type]
        return [mix.lam_for(k, t) for k, t in zip(kinds, texts, strict=True)]

    def budget_mix(self, budget: float, kinds: Sequence[str] | None = None) -> BudgetMix:
        """The train plans that spend ``budget`` (mean USD per query) best: every kind
        at a vertex of its train hull but one, which mixes two adjacent plans so that the
        expected train cost is ``budget`` (:mod:`policies.cascade_budget`). Kinds
        weigh by their train prompts; ``kinds`` restricts the mix to those (e.g. one
        task's budget)."""
        budget = check_budget(budget)  # type: ignore[assignment]
        self._check_fitted()
        key = (budget, None if kinds is None else tuple(sorted(set(kinds))))
        memo = self.__dict__.setdefault("mixes_", {})  # cleared by fit and load
        if key in memo:
            return memo[key]
        rows = {k: int(v.get("rows", 0)) for k, v in self.search_.get("kinds", {}).items()}
        use = self.kinds_ if kinds is None else [k for k in self.kinds_ if k in kinds]
        if not use:
            raise PolicyError(f"cascade: no train plans for the kinds {list(kinds or [])}")
        hulls = {k: upper_hull(self._hull_points(k)) for k in use}
        weights = {k: float(rows.get(k, 0) or 1) for k in use}
        memo[key] = mix_for_budget(hulls, weights, budget)
        return memo[key]

    def _hull_points(self, kind: str) -> list[HullPoint]:
        """Train (lam, cost, quality) of what ``kind``'s prompts get at each lam."""
        return [HullPoint(c.lam_low, c.cost, c.quality) for c in self.plans_[kind]]

    def plan_for_kind(self, kind: str, lam: float = 0.0, budget: float | None = None,
                      text: str | None = None) -> CascadePlan:
        """The plan of ``kind`` at ``lam`` (or within ``budget``, for prompt ``text``)."""
        if budget is not None:
            if text is None:
                raise PolicyError("cascade: a budget needs the prompt's text")
            lam = self.prompt_lams([kind], [text], lam, budget)[0]
        lam = check_lam(lam)
        options = self.choices(kind)
        pick = options[0]
        for c in options:
            if c.lam_low <= lam:
                pick = c
        plan = pick.plan
        if plan.kind != kind and kind in A.KINDS:  # all-kinds plan: extract as this kind
            plan = CascadePlan(kind, plan.stages, plan.prefer, plan.threshold)
        return plan

    # ---- the generic single-model estimate ----------------------------------------------
    def _predict(self, X, tasks, truth) -> Estimate:
        kinds = None if tasks is None else [self.task_kinds_.get(t, "") for t in tasks]
        q, c = self.kind_table_.lookup(kinds, X.shape[0])
        return Estimate(q, c)

    def _check_fitted(self) -> None:
        if not hasattr(self, "plans_"):
            raise PolicyError("cascade: not fitted (call fit or load an artifact)")

    # ---- artifacts ----------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return self.kind_table_.arrays(), {
            "plans": {k: [c.to_json() for c in v] for k, v in self.plans_.items()},
            "kinds": self.kind_table_.names,
            "task_kinds": self.task_kinds_,
            "search": self.search_,
        }

    def _set_state(self, arrays, meta) -> None:
        try:
            self.plans_ = {str(k): [PlanChoice.from_json(c) for c in v]
                           for k, v in meta["plans"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise PolicyError(f"cascade artifact: no readable plans ({exc})") from exc
        if ALL_KINDS not in self.plans_ or not self.plans_[ALL_KINDS]:
            raise PolicyError("cascade artifact: the all-kinds plans are missing")
        self.kind_table_ = TaskTable.from_arrays(arrays, list(meta.get("kinds", [])))
        self.task_kinds_ = {str(k): str(v) for k, v in meta.get("task_kinds", {}).items()}
        self.search_ = dict(meta.get("search", {}))
        self.mixes_ = {}


def _task_kinds(tasks: Sequence[str] | None, kinds: Sequence[str]) -> dict[str, str]:
    """Each task label's most common inferred kind (a training signal for predict only)."""
    if tasks is None:
        return {}
    counts: dict[str, dict[str, int]] = {}
    for t, k in zip(tasks, kinds, strict=True):
        counts.setdefault(t, {}).setdefault(k, 0)
        counts[t][k] += 1
    return {t: max(c, key=c.__getitem__) for t, c in counts.items()}
