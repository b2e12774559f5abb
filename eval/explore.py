"""Choosing the exploration share of online policies on a replay of the TRAIN split.

The train split is cut (seeded) into a fitting part and a stream part (``stream_fraction``);
LinUCB's prior is fitted on the fitting part and the stream part is replayed query by query
with bandit feedback, deciding exactly as the gateway does (:mod:`router.exploration`):
exploit on the posterior means, explore (means + bonus) only when the optimistic choice
differs and the :class:`~router.exploration.ExplorationGate` of that share allows it. Each
share is compared with the *frozen prior* (the same fitted policy, never updated, always
exploiting) at several ``lam`` values, averaged over seeds (each seed: another cut and
order). Each share's ``drop`` is its mean quality loss against the frozen prior, and
``explore_cost`` its loss against share 0 (the same online learning without exploring:
what exploring itself costs). The recommended share is the largest of the grid such that it
and every smaller share keep ``explore_cost`` within ``tolerance`` at every lam and
condition (monotone, so one lucky large share does not pass over a failing smaller one);
the drop against the frozen prior is reported beside it (online learning alone can exceed
the tolerance, e.g. on a new task, whatever the share).
The test split is never read.

``router eval --explore`` calls :func:`run_explore` with the evaluation's train split and
embeddings; direct use: ``run_explore(train=ds, X_train=X)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from policies.linucb import LinUCBPolicy
from router.dataset import RoutingDataset
from router.exploration import EXPLORE_TOLERANCE, ExplorationGate, check_share, choices
from router.state.bandit_store import EmbeddedBanditStore

SHARES = (0.0, 0.02, 0.05, 0.1, 0.2)
SEEDS = (0, 1, 2, 3, 4)
LAM_POINTS = 3  # lam grid: 0 plus this many log-spaced values over the cost range
#: replay conditions: (label, share of the fitting part's (query, model) cells the prior
#: sees, LinUCB parameter overrides). With full information every arm's bonus is about equal
#: and exploring rarely differs from exploiting; a prior from sparse logs (10% of the cells)
#: gives arms different bonuses, and a wide bonus (alpha 1) makes exploring bind. NEW_TASK
#: is traffic the router has never seen: the prior fitted on the other tasks' rows, the
#: stream drawn from the left-out task (each task in turn; needs two task labels)
NEW_TASK = "new task"
CONDITIONS: tuple[tuple[str, float, dict[str, Any]], ...] = (
    ("full", 1.0, {}), ("sparse", 0.1, {}), ("sparse, alpha 1", 0.1, {"alpha": 1.0}),
    (NEW_TASK, 1.0, {}))


class ExploreEvalError(ValueError):
    """A bad exploration replay request."""


def _fresh(base: LinUCBPolicy) -> LinUCBPolicy:
    """A copy of a fitted policy with its own in-memory bandit state (the prior)."""
    policy = copy.copy(base)
    return policy.attach_store(EmbeddedBanditStore())


def replay_share(policy: LinUCBPolicy, X: np.ndarray, quality: np.ndarray, cost: np.ndarray,
                 lam: float, share: float, learn: bool = True) -> dict[str, float]:
    """Stream X through ``policy`` deciding as the gateway does; bandit feedback."""
    gate = ExplorationGate(share)
    T = len(X)
    reward = np.zeros(T)
    spent = np.zeros(T)
    for t in range(T):
        est = policy.estimates(X[t:t + 1])
        ch = choices(est.mean[0], est.bonus[0], est.cost[0], lam)
        a = ch.optimistic if gate.decide(ch.differs) else ch.exploit
        reward[t], spent[t] = quality[t, a], cost[t, a]
        if learn:
            policy.update(X[t], a, reward[t], spent[t])
    return {"quality": float(reward.mean()), "cost_per_1k": float(1000 * spent.mean()),
            "explored": gate.realised}


def run_explore(
    ctx: Any = None, *, train: RoutingDataset | None = None, X_train: np.ndarray | None = None,
    shares: Sequence[float] = SHARES, seeds: Sequence[int] = SEEDS,
    lams: Sequence[float] | None = None, tolerance: float = EXPLORE_TOLERANCE,
    stream_fraction: float = 0.3, params: dict[str, Any] | None = None,
    conditions: Sequence[tuple[str, float, dict[str, Any]]] = CONDITIONS,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Replay shares x lams x seeds on the train split; a JSON-able result with the choice."""
    from policies._anchor import lam_grid

    train = train if train is not None else getattr(ctx, "train", None)
    X_train = X_train if X_train is not None else getattr(ctx, "X_train", None)
    if train is None:
        raise ExploreEvalError("the exploration replay needs the train split")
    if X_train is None:  # e.g. `router eval --explore` with embedding-free policies only
        from router.encoding.encoder import embed_dataset
        from router.encoding.select import default_encoder

        encoder = getattr(ctx, "encoder", None) or default_encoder()
        X_train = embed_dataset(train, encoder, progress=False)
    X_train = np.asarray(X_train, np.float32)
    if X_train.shape[0] != len(train):
        raise ExploreEvalError("train embeddings do not match the train split's size")
    if not 0 < stream_fraction < 1:
        raise ExploreEvalError(f"stream_fraction must be in (0, 1), got {stream_fraction}")
    shares = sorted({check_share(s) for s in shares} | {0.0})
    if not seeds:
        raise ExploreEvalError("give at least one seed")
    conditions = [(str(label), float(frac), dict(over)) for label, frac, over in conditions]
    if not conditions or any(not 0 < frac <= 1 for _, frac, _ in conditions):
        raise ExploreEvalError("conditions need observed fractions in (0, 1], got "
                               f"{[c[1] for c in conditions]}")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ExploreEvalError(f"tolerance must be a number >= 0, got {tolerance}")
    n_stream = int(round(stream_fraction * len(train)))
    if n_stream < 10 or len(train) - n_stream < 10:
        raise ExploreEvalError(f"{len(train)} train rows are too few to cut into fit and stream")
    if params is None:
        from eval.online import DEFAULT_PARAMS

        params = dict(DEFAULT_PARAMS)
    q_all, c_all = train.eval_matrices()
    # lam_grid's last point is where the cheapest model outweighs any quality gap: nothing
    # is explored there, so it is left out
    lams = [float(v) for v in (lam_grid(c_all, LAM_POINTS)[:-1] if lams is None else lams)]
    progress = (not getattr(getattr(ctx, "args", None), "quiet", True)) if progress is None \
        else progress
    bar = None
    if progress:
        from tqdm import tqdm

        n_tasks = len(set(train.tasks))
        cuts = sum(n_tasks if label == NEW_TASK and n_tasks > 1 else 1
                   for label, _, _ in conditions)
        bar = tqdm(total=cuts * len(seeds) * len(lams) * (len(shares) + 1),
                   desc="explore replay", leave=False)
    tables = {}
    for label, frac, overrides in conditions:
        # runs[lam][label] -> list over seeds; label "frozen" or the share
        runs: dict[float, dict[str, list[dict[str, float]]]] = {
            lam: {k: [] for k in ["frozen", *map(str, shares)]} for lam in lams}
        cuts = list(_cuts(train, seeds, n_stream, label == NEW_TASK))
        if not cuts:  # NEW_TASK without two tasks
            continue
        for rng, fit_idx, stream in cuts:
            base = _prior(train.subset(fit_idx), X_train[fit_idx], {**params, **overrides},
                          frac, rng)
            Xs, qs, cs = X_train[stream], q_all[stream], c_all[stream]
            for lam in lams:
                runs[lam]["frozen"].append(replay_share(_fresh(base), Xs, qs, cs, lam, 0.0,
                                                        learn=False))
                if bar is not None:
                    bar.update(1)
                for share in shares:
                    runs[lam][str(share)].append(
                        replay_share(_fresh(base), Xs, qs, cs, lam, share))
                    if bar is not None:
                        bar.update(1)
        tables[label] = _table(runs, lams, shares)
    if bar is not None:
        bar.close()
    return _summarise(tables, conditions, lams, shares, tolerance, len(seeds), n_stream, params)


def _cuts(train: RoutingDataset, seeds: Sequence[int], n_stream: int, new_task: bool):
    """(rng, fit rows, stream rows) per seed: a random cut, or each task left out in turn
    (fit on the other tasks, stream at most ``n_stream`` of its rows in a seeded order)."""
    tasks = np.asarray(train.tasks, dtype=object).astype(str)
    names = sorted(set(tasks))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if not new_task:
            order = rng.permutation(len(train))
            yield rng, order[n_stream:], order[:n_stream]
            continue
        if len(names) < 2:
            return
        for name in names:
            held = np.flatnonzero(tasks == name)
            yield rng, np.flatnonzero(tasks != name), rng.permutation(held)[:n_stream]


def _prior(part: RoutingDataset, X: np.ndarray, params: dict[str, Any], frac: float,
           rng: np.random.Generator) -> LinUCBPolicy:
    """LinUCB fitted on ``part`` with only ``frac`` of its (query, model) cells observed."""
    policy = LinUCBPolicy(**params)
    if frac >= 1:
        return policy.fit_dataset(part, X)
    quality = np.array(part.quality, dtype=np.float64)
    hide = rng.random(quality.shape) >= frac
    hide[np.arange(len(quality)), rng.integers(0, quality.shape[1], len(quality))] = False
    quality[hide] = np.nan  # every row keeps at least one observed model
    _, cost = part.eval_matrices()
    return policy.fit(X, quality, cost, part.models, part.tasks)


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def _table(runs, lams, shares) -> list[dict[str, Any]]:
    table = []
    for lam in lams:
        frozen = runs[lam]["frozen"]
        fq, fc = _mean(frozen, "quality"), _mean(frozen, "cost_per_1k")
        row = {"lam": lam, "frozen": {"quality": fq, "cost_per_1k": fc}, "shares": {}}
        for share in shares:
            rs = runs[lam][str(share)]
            drops = [f["quality"] - r["quality"] for f, r in zip(frozen, rs, strict=True)]
            base = runs[lam][str(shares[0])]
            row["shares"][str(share)] = {
                "quality": _mean(rs, "quality"), "cost_per_1k": _mean(rs, "cost_per_1k"),
                "explored": _mean(rs, "explored"), "drop": float(np.mean(drops)),
                "drop_worst_seed": float(np.max(drops)),
                "explore_cost": float(np.mean([b["quality"] - r["quality"]
                                               for b, r in zip(base, rs, strict=True)])),
            }
        table.append(row)
    return table


def _summarise(tables, conditions, lams, shares, tolerance, n_seeds, n_stream, params
               ) -> dict[str, Any]:
    rows = [r for table in tables.values() for r in table]
    chosen = 0.0
    for share in shares:  # ascending: stop at the first share that costs too much
        if any(r["shares"][str(share)]["explore_cost"] > tolerance for r in rows):
            break
        chosen = share
    return {"config": {"shares": list(shares), "lams": list(lams), "seeds": n_seeds,
                       "stream_queries": n_stream, "tolerance": tolerance, "params": params,
                       "conditions": [{"label": label, "observed": frac, "params": over}
                                      for label, frac, over in conditions if label in tables],
                       "split": "train (fit / stream cut of the train split; test unread)"},
            "conditions": tables, "recommended_share": chosen,
            "worst_drop_at_recommended": max(r["shares"][str(chosen)]["drop"] for r in rows),
            "worst_explore_cost_at_recommended": max(r["shares"][str(chosen)]["explore_cost"]
                                                     for r in rows)}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Plain-text table of :func:`run_explore`'s result."""
    cfg = result["config"]
    lines = [f"exploration replay on train ({cfg['stream_queries']} streamed queries x "
             f"{cfg['seeds']} seeds; drop = frozen prior - share, mean over seeds)"]
    for cond in cfg["conditions"]:
        table = result["conditions"][cond["label"]]
        lines.append(f" {cond['label']}: the prior sees {cond['observed']:.0%} of the fitting "
                     f"cells{', ' + str(cond['params']) if cond['params'] else ''}")
        for row in table:
            f = row["frozen"]
            lines.append(f"  lam {row['lam']:<10.4g} frozen prior {f['quality']:.4f} "
                         f"${f['cost_per_1k']:.3f}/1k")
            for share, r in row["shares"].items():
                lines.append(f"    share {float(share):<5.2f} quality {r['quality']:.4f} "
                             f"(drop {r['drop']:+.4f}, worst seed {r['drop_worst_seed']:+.4f}, "
                             f"vs share 0 {r['explore_cost']:+.4f}) "
                             f"${r['cost_per_1k']:.3f}/1k explored {r['explored']:.3f}")
    lines.append(f"  recommended share {result['recommended_share']:g} (largest that, with every "
                 f"smaller share, costs <= {cfg['tolerance']:g} against share 0 at every lam; "
                 f"worst {result['worst_explore_cost_at_recommended']:+.4f}; worst drop vs the "
                 f"frozen prior "
                 f"{result['worst_drop_at_recommended']:+.4f})")
    return lines
