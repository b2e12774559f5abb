"""Drift scenarios for the online replay: the world changes halfway through the stream.

Each scenario turns a train/test split into a :class:`World`: what the bandit's prior is
fitted on, the stream (test queries in a seeded order, with the change applied from
``change`` on), which models are available at each step, and the training data of a
*full-information* policy refitted after the change (the yardstick). Defaults for the
affected model come from the frozen prior's own traffic (the model it sends most of the
first half to), so each scenario hits the backend that matters.

* ``stationary``: nothing changes (the yardstick is the policy fitted on train).
* ``degrade``: the affected model's quality drops to 0 from the change on.
* ``price``: the affected model's price (every call's cost) triples from the change on.
* ``swap``: the affected model is removed at the change, and a new one, held out of the
  prior's training data (an arm with no train outcomes), becomes available. Default new
  model: the best train-mean-quality model whose train-mean cost is below the removed one's.
* ``new-task``: a task absent from the prior's training data (default: the smallest task)
  arrives at the change: the first half holds only the other tasks' queries, the second
  the rest of them and every query of the new task, shuffled.

Parameters: ``NAME:model=M`` (affected), ``new=M`` (swap), ``task=T`` (new-task),
``factor=F`` (price, default 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCENARIOS = ("stationary", "degrade", "price", "swap", "new-task")
PARAMS = {"stationary": (), "degrade": ("model",), "price": ("model", "factor"),
          "swap": ("model", "new"), "new-task": ("task",)}


class ScenarioError(ValueError):
    """An unknown scenario or a parameter that does not fit the data."""


@dataclass
class Split:
    """Embeddings and outcome matrices of one split (NaN = unobserved)."""

    X: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    tasks: list[str]


@dataclass
class World:
    """One scenario: prior training data, the stream, and the refit's training data."""

    name: str
    prior: Split  # what the bandit's prior is fitted on
    refit: Split  # what the full-information yardstick is fitted on (after the change)
    X: np.ndarray  # (T, d) the stream, in order
    quality: np.ndarray  # (T, m) realised quality (the change applied)
    cost: np.ndarray  # (T, m) realised cost (the change applied)
    tasks: list[str]
    allowed: np.ndarray  # (T, m) models available at each step
    change: int
    affected: int | None = None
    new: int | None = None
    task: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.X)


def parse_scenario(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[:key=value,...]`` -> (name, params), checked against :data:`SCENARIOS`."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    params: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in PARAMS[name]:
            allowed = ", ".join(PARAMS[name]) or "none"
            raise ScenarioError(f"scenario {name}: bad parameter {item!r} (allowed: {allowed})")
        params[key] = value
    return name, params


def _model(models: list[str], name: str, what: str) -> int:
    if name not in models:
        raise ScenarioError(f"{what} {name!r} is not one of the models {models}")
    return models.index(name)


def build_world(
    name: str, params: dict[str, str], train: Split, test: Split, models: list[str],
    seed: int, busiest: int | None = None,
) -> World:
    """The :class:`World` of scenario ``name`` (``busiest``: the default affected model)."""
    rng = np.random.default_rng(seed)
    T = len(test.X)
    order = rng.permutation(T)
    m = len(models)
    affected = _model(models, params["model"], "model") if "model" in params else busiest
    if name in ("degrade", "price", "swap") and affected is None:
        raise ScenarioError(f"scenario {name} needs model=NAME")

    def stream(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        return (test.X[idx], test.quality[idx].copy(), test.cost[idx].copy(),
                [test.tasks[i] for i in idx])

    X, q, c, tasks = stream(order)
    change = T // 2 if name != "stationary" else T
    allowed = np.ones((T, m), dtype=bool)
    prior, refit = train, train
    world: dict[str, Any] = {}
    if name == "degrade":
        q[change:, affected] = 0.0
        rq = train.quality.copy()
        rq[:, affected] = np.where(np.isnan(rq[:, affected]), np.nan, 0.0)
        refit = Split(train.X, rq, train.cost, train.tasks)
    elif name == "price":
        factor = float(params.get("factor", 3.0))
        if not np.isfinite(factor) or factor <= 0:
            raise ScenarioError(f"scenario price: factor must be > 0, got {factor}")
        c[change:, affected] *= factor
        rc = train.cost.copy()
        rc[:, affected] *= factor
        refit = Split(train.X, train.quality, rc, train.tasks)
        world["params"] = {"factor": factor}
    elif name == "swap":
        new = _model(models, params["new"], "new model") if "new" in params else None
        if new is None:
            with np.errstate(invalid="ignore"):
                mq = np.nanmean(train.quality, axis=0)
                mc = np.nanmean(train.cost, axis=0)
            cheaper = [j for j in range(m) if j != affected and mc[j] < mc[affected]]
            if not cheaper:
                raise ScenarioError("scenario swap: no model is cheaper than the removed one; "
                                    "name one with new=NAME")
            new = max(cheaper, key=lambda j: mq[j])
        if new == affected:
            raise ScenarioError("scenario swap: the new model must differ from the removed one")
        pq = train.quality.copy()
        pq[:, new] = np.nan  # held out of the prior's training data
        prior = Split(train.X, pq, train.cost, train.tasks)
        allowed[:change, new] = False
        allowed[change:, affected] = False
        world["new"] = new
    elif name == "new-task":
        names = sorted(set(train.tasks))
        task = params.get("task") or min(names, key=lambda t: sum(x == t for x in train.tasks))
        if task not in names or task not in test.tasks:
            raise ScenarioError(f"scenario new-task: task {task!r} is not in both splits "
                                f"(train tasks: {names})")
        if len(names) < 2:
            raise ScenarioError("scenario new-task needs at least two tasks")
        keep = np.array([t != task for t in train.tasks])
        prior = Split(train.X[keep], train.quality[keep], train.cost[keep],
                      [t for t, k in zip(train.tasks, keep, strict=True) if k])
        old = order[np.array([test.tasks[i] != task for i in order])]
        fresh = order[np.array([test.tasks[i] == task for i in order])]
        change = min(T // 2, len(old))
        second = rng.permutation(np.concatenate([old[change:], fresh]))
        X, q, c, tasks = stream(np.concatenate([old[:change], second]))
        world["task"] = task
    return World(name=name, prior=prior, refit=refit, X=X, quality=q, cost=c, tasks=tasks,
                 allowed=allowed, change=change, affected=affected, **world)


def settle(values: np.ndarray, ok, window: int = 50) -> int | None:
    """Queries after the change until ``ok(tail mean)`` holds for every tail from there on.

    ``values`` is the after-change series (e.g. 1 where the affected model was chosen);
    the tail mean from k is ``values[k:].mean()``; tails shorter than ``window`` are not
    judged. None when it never settles.
    """
    n = len(values)
    if n == 0:
        return None
    sums = np.cumsum(values[::-1])[::-1]
    tail = sums / np.arange(n, 0, -1)
    last = max(n - window, 0)
    good = np.array([bool(ok(v)) for v in tail[:last + 1]])
    if not good[-1]:
        return None
    bad = np.flatnonzero(~good)
    return 0 if bad.size == 0 else int(bad[-1] + 1)


def settle_near(values: np.ndarray, target: float | np.ndarray, tolerance: float,
                window: int = 50, above: bool = False) -> int | None:
    """:func:`settle` for a share: the tail mean within ``tolerance`` of ``target`` (at
    least ``target - tolerance`` when ``above``) up to its sampling error, 1.96 binomial
    standard errors of ``target`` over the tail's length (a tail of 50 queries at a share
    of 0.4 has a standard error of 0.07: a tolerance of 0.05 alone fails on chance).
    ``target`` is one share, or a reference series as long as ``values`` (another
    replay's 0/1 choices): then each tail is held to the reference's same tail."""
    n = len(values)
    if n == 0:
        return None
    lengths = np.arange(n, 0, -1)
    tail = np.cumsum(values[::-1])[::-1] / lengths
    if np.ndim(target):
        ref = np.asarray(target, dtype=np.float64)
        if ref.shape != (n,):
            raise ValueError(f"settle_near: a reference series needs {n} values")
        target = np.cumsum(ref[::-1])[::-1] / lengths
    p = np.clip(target, 0.0, 1.0)
    allow = tolerance + 1.96 * np.sqrt(p * (1 - p) / lengths)
    good = (tail >= target - allow) if above else (np.abs(tail - target) <= allow)
    good = good[:max(n - window, 0) + 1]
    if not good[-1]:
        return None
    bad = np.flatnonzero(~good)
    return 0 if bad.size == 0 else int(bad[-1] + 1)


def rolling_share(chosen: np.ndarray, model: int, window: int = 50) -> np.ndarray:
    """Share of the last ``window`` queries routed to ``model``, at every step."""
    hit = (chosen == model).astype(np.float64)
    csum = np.concatenate([[0.0], np.cumsum(hit)])
    t = np.arange(1, len(hit) + 1)
    lo = np.maximum(t - window, 0)
    return (csum[t] - csum[lo]) / (t - lo)
