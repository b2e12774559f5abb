"""Online replay where the bandit learns from a cascade's automatic rewards alone.

``router eval --online --auto-rewards``. The same test stream, budgets and knapsack as
:func:`eval.online.run_online`; the extra variant ``auto`` is the same LinUCB prior, but
what it learns after each query is not the revealed quality of its choice (no feedback
at all): it is the agreement labels (:func:`router.auto_rewards.auto_labels`) of the
cascade that the same prompt gets when it is sent as ``router-cascade-<lam>`` (the
cascade policy fitted on train, replayed over the test split's recorded responses),
folded in with :func:`router.auto_rewards.weighted_update` -- what ``router serve`` does
with ``routing.auto_reward_weight``. The labels never read the test quality.

Reported per budget: the frozen prior (``prior-only``), ``auto``, the full-feedback bandit
(``pilot``) and full-information kNN with ``lam`` matched to ``auto``'s spend; ``gap_closed``
= (auto - prior) / (kNN - prior) in mean quality. ``all-labels`` is a ceiling, not a
router: the same bandit folding every model's *true* correctness on every query (weight 1),
i.e. the most any reward source could teach it on this stream. The label weight and the cascade's lam
are chosen on a validation split of *train* (fit on 70%, replay the other 30%), never on
test; the labels' agreement with the true correctness is reported too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from router.auto_rewards import auto_labels, weighted_update
from router.dataset import RoutingDataset

#: the choices searched on the train validation split
WEIGHTS = (0.25, 0.5, 1.0)
CASCADE_LAMS = (3.0, 10.0, 30.0)
VALIDATION_FRACTION = 0.3
Labels = list[tuple[int, float, float]]  # (model index, reward, cost of that call)


class AutoRewardError(ValueError):
    """The auto-reward replay cannot run (no responses, no cascade policy)."""


def _text(r: Any) -> str | None:
    return r if isinstance(r, str) else None


def cascade_labels(cascade: Any, ds: RoutingDataset, lam: float) -> list[Labels]:
    """Per row of ``ds``: the automatic labels of its cascade at ``lam``, call by call
    replayed from the recorded responses (a missing response is a failed call)."""
    models = list(ds.models)
    _, cost = ds.eval_matrices()
    out: list[Labels] = []
    for i, text in enumerate(ds.prompts):
        plan = cascade.plan(text, lam=lam)
        answers: dict[str, str | None] = {}
        todo = plan.first()
        while True:
            for m in todo:
                answers[m] = _text(ds.responses[i][models.index(m)])
            step = plan.step(answers)
            if step.done:
                break
            todo = step.next_models
        labels = auto_labels(plan, answers, step.model, step.agreed)
        out.append([(models.index(m), r, float(cost[i, models.index(m)]))
                    for m, r in labels.items()])
    return out


class AutoRewardBandit:
    """A LinUCB policy whose ``update`` folds the current query's automatic labels
    (looked up by its embedding) instead of the reward the replay reveals."""

    def __init__(self, policy: Any, labels: dict[bytes, Labels], weight: float) -> None:
        self._policy = policy
        self._labels = labels
        self._weight = weight
        self.folded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def update(self, x: np.ndarray, model: Any, reward: float, cost: float) -> None:
        x = np.asarray(x, dtype=np.float32)
        for j, r, c in self._labels.get(x.tobytes(), ()):
            weighted_update(self._policy, x, j, r, c, self._weight)
            self.folded += 1


def learner(X: np.ndarray, labels: Sequence[Labels], weight: float
            ) -> Callable[[Any, np.ndarray], AutoRewardBandit]:
    """The ``run_online(learners=...)`` entry: wraps the fitted prior of each budget."""
    by_key = {np.asarray(x, np.float32).tobytes(): lab for x, lab in zip(X, labels,
                                                                         strict=True)}

    def make(policy: Any, order: np.ndarray) -> AutoRewardBandit:
        return AutoRewardBandit(policy, by_key, weight)

    return make


def label_accuracy(ds: RoutingDataset, labels: Sequence[Labels]) -> dict[str, float]:
    """How often a label equals the true correctness (quality >= 0.5), and labels/query."""
    q, _ = ds.eval_matrices()
    hits = [float(r == float(q[i, j] >= 0.5)) for i, lab in enumerate(labels) for j, r, _ in lab]
    return {"labels_per_query": len(hits) / max(len(labels), 1),
            "label_accuracy": float(np.mean(hits)) if hits else float("nan")}


def _fit_cascade(train: RoutingDataset, X: np.ndarray, seed: int) -> Any:
    from policies import make_policy

    try:
        cascade = make_policy("cascade", seed=seed)
    except Exception as exc:  # not registered / not importable
        raise AutoRewardError(f"the cascade policy is unavailable ({exc})") from None
    return cascade.fit_dataset(train, X)


def _runs(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["runs"] for e in res["budgets"]]


def choose_on_train(train: RoutingDataset, X_train: np.ndarray, budgets: Sequence[float],
                    seed: int, say, weights: Sequence[float] = WEIGHTS,
                    lams: Sequence[float] = CASCADE_LAMS) -> dict[str, Any]:
    """Weight and cascade lam of the best mean ``auto`` quality over the budgets, replaying
    a validation part of train (fit on the rest)."""
    from eval.online import run_online

    idx = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(round(VALIDATION_FRACTION * len(train))))
    val, fit = np.sort(idx[:n_val]), np.sort(idx[n_val:])
    tr, va = train.subset(fit), train.subset(val)
    X_tr, X_va = X_train[fit], X_train[val]
    cascade = _fit_cascade(tr, X_tr, seed)
    learners = {}
    for lam in lams:
        labels = cascade_labels(cascade, va, lam)
        for w in weights:
            learners[f"auto-w{w:g}-lam{lam:g}"] = learner(X_va, labels, w)
    say(f"online auto: choosing weight x cascade lam on train ({len(fit)} fit / {len(val)} "
        f"validation prompts, {len(learners)} combinations)")
    res = run_online(train=tr, test=va, X_train=X_tr, X_test=X_va, budgets=budgets,
                     seed=seed, variants=("prior-only",), learners=learners, compare=False,
                     plots=False, progress=False)
    scores = {name: float(np.mean([r[name]["quality"] for r in _runs(res)]))
              for name in learners}
    best = max(scores, key=scores.__getitem__)
    w, lam = (float(v) for v in best[len("auto-w"):].split("-lam"))
    return {"weight": w, "cascade_lam": lam, "validation_quality": scores,
            "prior_validation_quality": float(np.mean([r["prior-only"]["quality"]
                                                       for r in _runs(res)]))}


def run_online_auto(ctx: Any = None, *, train: RoutingDataset | None = None,
                    test: RoutingDataset | None = None, X_train: np.ndarray | None = None,
                    X_test: np.ndarray | None = None, weight: float | None = None,
                    cascade_lam: float | None = None, budgets: Sequence[float] | None = None,
                    seed: int | None = None, progress: bool | None = None,
                    weights: Sequence[float] = WEIGHTS, lams: Sequence[float] = CASCADE_LAMS,
                    ) -> dict[str, Any]:
    """The auto-reward replay (see the module docstring); a JSON-able result dict.

    ``weight`` / ``cascade_lam`` left None are chosen on train among ``weights`` /
    ``lams``."""
    from eval import online
    from eval.online import _full_info, _match_spend, run_online

    say = getattr(ctx, "say", None) or (lambda msg: None)
    args = getattr(ctx, "args", None)
    train = train if train is not None else getattr(ctx, "train", None)
    test = test if test is not None else getattr(ctx, "test", None)
    X_train = X_train if X_train is not None else getattr(ctx, "X_train", None)
    X_test = X_test if X_test is not None else getattr(ctx, "X_test", None)
    if train is None or test is None or X_train is None or X_test is None:
        raise AutoRewardError("the auto-reward replay needs train/test splits and embeddings")
    if train.responses is None or test.responses is None:
        raise AutoRewardError(f"{train.name}: no recorded responses, so no cascade answers "
                              "to agree on (the auto-reward replay needs them)")
    seed = int(seed if seed is not None else getattr(args, "seed", 0) or 0)
    progress = (not getattr(args, "quiet", True)) if progress is None else progress
    budgets = tuple(budgets or online.DEFAULT_BUDGETS)
    X_train = np.asarray(X_train, np.float32)
    X_test = np.asarray(X_test, np.float32)

    chosen: dict[str, Any] = {}
    if weight is None or cascade_lam is None:
        chosen = choose_on_train(train, X_train, budgets, seed, say,
                                 weights=weights if weight is None else (weight,),
                                 lams=lams if cascade_lam is None else (cascade_lam,))
        weight, cascade_lam = chosen["weight"], chosen["cascade_lam"]
    say(f"online auto: weight {weight:g}, cascade lam {cascade_lam:g}")
    cascade = _fit_cascade(train, X_train, seed)
    labels = cascade_labels(cascade, test, cascade_lam)
    q_test, c_test = test.eval_matrices()
    every = [[(j, float(q_test[i, j] >= 0.5), float(c_test[i, j]))
              for j in range(len(test.models))] for i in range(len(test))]
    res = run_online(train=train, test=test, X_train=X_train, X_test=X_test, budgets=budgets,
                     seed=seed, variants=("prior-only", "pilot"),
                     learners={"auto": learner(X_test, labels, weight),
                               "all-labels": learner(X_test, every, 1.0)},
                     compare=False, plots=False, progress=progress)
    order = np.random.default_rng(seed).permutation(len(test))
    qs, cs = q_test[order], c_test[order]
    params = res["config"]["params"]
    full = {k: (q[order], c[order]) for k, (q, c) in
            _full_info(train, X_train, X_test, params, seed, say).items()}
    rows = []
    for entry in res["budgets"]:
        runs = entry["runs"]
        row: dict[str, Any] = {"fraction": entry["fraction"],
                               "budget_per_1k": entry["budget_per_1k"]}
        for name in ("prior-only", "auto", "pilot", "all-labels"):
            row[name] = {k: runs[name][k] for k in ("quality", "cost_per_1k", "spend_fraction")}
        if "knn" in full:
            knn = _match_spend(*full["knn"], qs, cs, runs["auto"]["cost_usd"])
            row["knn"] = {"quality": knn["quality"], "cost_per_1k": knn["cost_per_1k"],
                          "lam": knn["lam"]}
            gap = knn["quality"] - runs["prior-only"]["quality"]
            for name, key in (("auto", "gap_closed"), ("all-labels", "gap_closed_all_labels")):
                row[key] = ((runs[name]["quality"] - runs["prior-only"]["quality"]) / gap
                            if gap > 0 else None)
        rows.append(row)
    return {"weight": weight, "cascade_lam": cascade_lam, "chosen_on_train": chosen,
            "labels": label_accuracy(test, labels), "budgets": rows, "replay": res}


def summary_lines(result: dict[str, Any]) -> list[str]:
    lab = result["labels"]
    lines = [f"online auto rewards (weight {result['weight']:g}, cascade lam "
             f"{result['cascade_lam']:g}; {lab['labels_per_query']:.2f} labels/query, "
             f"{lab['label_accuracy']:.3f} agree with the true correctness)"]
    for row in result["budgets"]:
        parts = [f"  budget {row['fraction']:.0%} (${row['budget_per_1k']:.3f}/1k):"]
        for name in ("prior-only", "auto", "pilot", "all-labels", "knn"):
            if name in row:
                parts.append(f"{name} {row[name]['quality']:.4f} @ ${row[name]['cost_per_1k']:.3f}")
        gap, ceiling = row.get("gap_closed"), row.get("gap_closed_all_labels")
        parts.append("gap closed " + ("n/a (kNN not above the prior)" if gap is None
                                      else f"{gap:.0%} (all-labels ceiling {ceiling:.0%})"))
        lines.append("  ".join(parts))
    return lines
