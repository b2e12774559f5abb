"""Choose the online bandit's exploration and forgetting on *train* replays only.

The train split is cut (seeded, 70/30) into a fit part, on which the LinUCB prior is
fitted, and a replay part, streamed through the budget knapsack as the test stream would
be (:mod:`eval.online`), in three worlds (:mod:`eval.scenarios`): ``stationary``,
``degrade`` and ``price``. Candidates are ``alpha`` (the optimism bonus) and the store's
:class:`~router.state.bandit_store.Forgetting` (discount, change detection, cost change
detection); the prior is fitted once and each candidate starts from a copy of it.

Selection: among candidates whose stationary replay stays at or above the frozen prior
at every budget (minus ``slack``), the best mean after-change accuracy over degrade and
price; ties to the earlier (simpler) candidate. Run it::

    python -m eval.online_tune [--data DIR] [--budgets 0.1,0.25,0.5] [--prior] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from eval.scenarios import Split, build_world
from policies.linucb import LinUCBPolicy
from router.budget import BudgetSpec, EmbeddedLedger, OnlineKnapsack, auto_bins
from router.state.bandit_store import EmbeddedBanditStore, Forgetting

#: candidates, simplest first: (alpha, Forgetting, confidence gate kappa)
OFF = Forgetting()
DETECT = Forgetting(threshold=3.0, slack=0.3, shrink=0.1, cost_threshold=2.0, cost_slack=0.5)
CANDIDATES: list[tuple[float, Forgetting, float]] = [
    (0.0, OFF, 0.0),
    (0.05, OFF, 0.0),
    (0.0, Forgetting(discount=0.995), 0.0),
    (0.0, Forgetting(threshold=3.0, slack=0.3, shrink=0.1), 0.0),
    (0.0, DETECT, 0.0),
    (0.0, DETECT, 0.5),
    (0.0, DETECT, 1.0),
    (0.0, DETECT, 2.0),
    (0.05, DETECT, 0.5),
    # a cost change needs a stronger signal: at cost_threshold 2 the cost detector fired in
    # a stationary train replay (a kNN-features prior at 50% budget, -0.010 accuracy)
    # quality detector thresholds below 2 were tried: 1 fires in stationary train replays
    # (-0.025), 1.5 in the synthetic worlds of tests/test_bandit_drift.py (eval.online)
    *[(0.0, Forgetting(threshold=t, slack=0.3, shrink=0.1, cost_threshold=4.0,
                       cost_slack=0.5), 0.5) for t in (3.0, 2.0)],
]
WORLDS = ("stationary", "degrade", "price")
#: the optimism of a backend without train outcomes, tried on the train swap world
COLD_ALPHAS = (None, 0.25, 0.5, 1.0, 2.0)
#: the prior's candidates (``--prior``): kNN estimates as features or not x ridge penalty
#: x projection; judged by the frozen prior's stationary replay
PRIOR_CANDIDATES: list[dict[str, Any]] = [
    {"knn_features": kf, "reg": reg, "proj_dim": pd}
    for kf in (False, True) for reg in (10.0, 100.0, 1000.0) for pd in (None, 8)
]


def clone(policy: LinUCBPolicy, alpha: float, forgetting: Forgetting,
          confidence: float = 0.0) -> LinUCBPolicy:
    """A copy of a fitted policy with its own store, ``alpha``, forgetting and gate."""
    state = policy.bandit_state()
    state.forgetting = forgetting.to_array()
    out = copy.copy(policy)
    out.alpha = alpha
    out.confidence = confidence
    for key, value in (("discount", forgetting.discount), ("drift_threshold", forgetting.threshold),
                       ("drift_slack", forgetting.slack), ("drift_shrink", forgetting.shrink),
                       ("cost_threshold", forgetting.cost_threshold),
                       ("cost_slack", forgetting.cost_slack)):
        setattr(out, key, value)
    out._store = EmbeddedBanditStore()
    out._store.initialize(state)
    return out


def _run(policy: LinUCBPolicy, world, budget: float, bins: int, sample, learn: bool,
         X_fit: np.ndarray | None = None):
    """One replay; with ``X_fit`` the price sample is re-derived there on a detected change
    (:data:`eval.online.REPRICE`)."""
    from eval.online import REPRICE
    from eval.stream import decision_values, replay

    ks = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(budget, horizon=world.T, n_bins=bins),
                        price_sample=sample)
    again = (None if X_fit is None or not REPRICE
             else lambda p: decision_values(p, X_fit))
    return replay(policy, world.X, world.quality, world.cost, ks, learn=learn,
                  allowed=world.allowed, resample=again)


def fit_replay(train: Split, seed: int) -> tuple[Split, Split]:
    """A seeded 70/30 cut of train: the prior's part and the replayed part (unobserved
    outcomes of the replay filled: quality 0, cost the fit part's mean)."""
    perm = np.random.default_rng(seed).permutation(len(train.X))
    cut = int(0.7 * len(perm))

    def part(idx: np.ndarray) -> Split:
        return Split(train.X[idx], train.quality[idx], train.cost[idx],
                     [train.tasks[i] for i in idx])

    fit, rep = part(perm[:cut]), part(perm[cut:])
    return fit, Split(rep.X, np.nan_to_num(rep.quality, nan=0.0),
                      np.where(np.isnan(rep.cost), np.nanmean(fit.cost, axis=0), rep.cost),
                      rep.tasks)


def _cut(train: Split, models: list[str], params: dict[str, Any], fractions: list[float],
         ref_idx: int, seed: int) -> tuple[LinUCBPolicy, dict, dict]:
    """One seeded 70/30 fit/replay cut of train: its prior, the worlds per budget and the
    frozen prior's after-change accuracy in each."""
    from eval.stream import decision_values

    fit, rep = fit_replay(train, seed)
    prior = LinUCBPolicy(**{**params, "alpha": 0.0}).fit(fit.X, fit.quality, fit.cost, models,
                                                         fit.tasks)
    base = build_world("stationary", {}, fit, rep, models, seed)
    ref_spend = float(base.cost[:, ref_idx].sum())
    worlds, frozen = {}, {}
    for frac in fractions:
        B = frac * ref_spend
        bins = auto_bins(B, float(np.nanmax(fit.cost)), base.T)
        p0 = clone(prior, 0.0, OFF)
        sample = decision_values(p0, fit.X)
        r0 = _run(p0, base, B, bins, sample, learn=False)
        first = r0.chosen[:base.T // 2]
        busiest = int(np.bincount(first[first >= 0], minlength=len(models)).argmax())
        for name in WORLDS:
            world = build_world(name, {}, fit, rep, models, seed, busiest=busiest)
            worlds[(name, frac)] = (world, B, bins, fit.X)
            r = _run(clone(prior, 0.0, OFF), world, B, bins, sample, learn=False)
            frozen[(name, frac)] = float(r.reward[world.change:].mean()
                                         if world.change < world.T else r.reward.mean())
    return prior, worlds, frozen


def tune(train: Split, models: list[str], params: dict[str, Any], fractions: list[float],
         ref_idx: int, seed: int = 0, slack: float = 0.0, candidates=None, say=print,
         replays: int = 1) -> dict[str, Any]:
    """Replay every candidate on ``replays`` seeded fit/replay cuts of ``train`` (seeds
    ``seed``, ``seed + 1``, ...); the table and the pick. A candidate is stationary-ok when
    it stays at or above the frozen prior (minus ``slack``) at every budget on every cut."""
    from eval.stream import decision_values

    candidates = candidates or CANDIDATES
    cuts = [_cut(train, models, params, fractions, ref_idx, seed + r) for r in range(replays)]
    rows: list[dict[str, Any]] = []
    for i, (alpha, forget, kappa) in enumerate(candidates):
        row: dict[str, Any] = {"alpha": alpha, "forgetting": forget.__dict__,
                               "confidence": kappa, "runs": {}}
        for r, (prior, worlds, frozen) in enumerate(cuts):
            for (name, frac), (world, B, bins, X_fit) in worlds.items():
                pol = clone(prior, alpha, forget, kappa)
                sample = decision_values(pol, X_fit)
                rep = _run(pol, world, B, bins, sample, learn=True, X_fit=X_fit)
                k = world.change if world.change < world.T else 0
                row["runs"][f"{name}@{frac}#{r}"] = {
                    "quality": float(rep.reward[k:].mean()), "frozen": frozen[(name, frac)],
                    "cost_per_1k": float(1000 * rep.cost[k:].mean())}
        stat = [v for key, v in row["runs"].items() if key.startswith("stationary@")]
        gains = [s["quality"] - s["frozen"] for s in stat]
        row["stationary_ok"] = all(g >= -slack for g in gains)
        row["stationary_gain"] = float(np.mean(gains))
        row["stationary_worst"] = float(min(gains))
        row["drift_quality"] = float(np.mean([
            v["quality"] for key, v in row["runs"].items() if not key.startswith("stationary@")]))
        rows.append(row)
        say(f"candidate {i}: alpha {alpha} {forget} confidence {kappa}: stationary gain "
            f"{row['stationary_gain']:+.4f} (worst {row['stationary_worst']:+.4f}, ok "
            f"{row['stationary_ok']}), after-change accuracy {row['drift_quality']:.4f}")
    ok = [r for r in rows if r["stationary_ok"]] or rows
    best = max(ok, key=lambda r: r["drift_quality"])  # max keeps the first of ties
    return {"fit_queries": int(0.7 * len(train.X)), "replays": replays, "fractions": fractions,
            "frozen": {f"{n}@{f}#{r}": v for r, (_, _, fr) in enumerate(cuts)
                       for (n, f), v in fr.items()},
            "candidates": rows, "chosen": {"alpha": best["alpha"],
                                           "forgetting": best["forgetting"],
                                           "confidence": best["confidence"]}}


def tune_prior(train: Split, models: list[str], params: dict[str, Any],
               fractions: list[float], ref_idx: int, seed: int = 0, replays: int = 3,
               candidates=None, say=print) -> dict[str, Any]:
    """The prior's parameters (``knn_features``, ``reg``, ``proj_dim``): the best mean
    accuracy of the frozen prior (no online updates) replayed through the budget knapsack
    on ``replays`` seeded 70/30 fit/replay cuts of train, every budget; ties to the
    earlier (simpler) candidate."""
    from eval.stream import decision_values

    rows = []
    candidates = candidates or PRIOR_CANDIDATES
    cuts = [fit_replay(train, seed + r) for r in range(replays)]
    for cand in candidates:
        runs = []
        for r, (fit, rep) in enumerate(cuts):
            prior = LinUCBPolicy(**{**params, **cand, "alpha": 0.0}).fit(
                fit.X, fit.quality, fit.cost, models, fit.tasks)
            world = build_world("stationary", {}, fit, rep, models, seed + r)
            sample = decision_values(prior, fit.X)
            for frac in fractions:
                B = frac * float(world.cost[:, ref_idx].sum())
                bins = auto_bins(B, float(np.nanmax(fit.cost)), world.T)
                res = _run(clone(prior, 0.0, OFF), world, B, bins, sample, learn=False)
                runs.append({"budget": frac, "cut": r, "quality": float(res.reward.mean()),
                             "cost_per_1k": float(1000 * res.cost.mean())})
        row = {**cand, "runs": runs, "quality": float(np.mean([x["quality"] for x in runs]))}
        rows.append(row)
        say(f"prior {cand}: frozen stationary accuracy {row['quality']:.4f}")
    best = max(rows, key=lambda r: r["quality"])
    return {"candidates": rows, "chosen": {k: best[k] for k in candidates[0]}}


def tune_cold(train: Split, models: list[str], params: dict[str, Any], fractions: list[float],
              ref_idx: int, values=COLD_ALPHAS, seed: int = 0, replays: int = 1,
              say=print) -> dict[str, Any]:
    """``cold_alpha`` (the optimism of a backend without train outcomes) on the train swap
    world (the busiest model removed halfway, a held-out one appearing): the best mean
    after-change accuracy over budgets and cuts. It changes nothing where every arm has
    train outcomes (the stationary, degrade and price worlds)."""
    from eval.drift import replay_world

    rows = []
    for value in values:
        accs = []
        for r in range(replays):
            fit, rep = fit_replay(train, seed + r)
            base = build_world("stationary", {}, fit, rep, models, seed + r)
            ref_spend = float(base.cost[:, ref_idx].sum())
            for frac in fractions:
                B = frac * ref_spend
                frozen = replay_world(base, models, params, B, learn=False)
                first = frozen.chosen[:base.T // 2]
                busiest = int(np.bincount(first[first >= 0], minlength=len(models)).argmax())
                world = build_world("swap", {}, fit, rep, models, seed + r, busiest=busiest)
                res = replay_world(world, models, {**params, "cold_alpha": value}, B, True)
                accs.append(float(res.reward[world.change:].mean()))
        rows.append({"cold_alpha": value, "swap_quality": float(np.mean(accs))})
        say(f"cold_alpha {value}: swap after-change accuracy {rows[-1]['swap_quality']:.4f}")
    best = max(rows, key=lambda r: r["swap_quality"])
    return {"candidates": rows, "chosen": best["cold_alpha"]}


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    ap = argparse.ArgumentParser(prog="python -m eval.online_tune", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared"
                                          / "datasets" / "routerbench-subset"))
    ap.add_argument("--budgets", default="0.1,0.25,0.5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replays", type=int, default=3,
                    help="seeded fit/replay cuts of train (default 3)")
    ap.add_argument("--slack", type=float, default=0.0025,
                    help="stationary tolerance below the frozen prior (default 0.0025: one "
                         "query of a 400-query replay)")
    ap.add_argument("--prior", action="store_true",
                    help="first choose the prior (knn_features, reg, proj_dim) by the frozen "
                         "prior's stationary replay, then tune the online part on it")
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)
    import router.datasets as D
    from eval.online import DEFAULT_PARAMS
    from router.encoding.encoder import embed_dataset
    from router.encoding.select import default_encoder

    if not Path(args.data).exists():
        print(f"online_tune: --data {args.data}: no such file or directory", file=sys.stderr)
        return 2
    split = D.load_split(args.data, seed=args.seed)
    train = split.train
    X = np.asarray(embed_dataset(train, default_encoder(), progress=False), np.float32)
    models = list(train.models)
    with np.errstate(invalid="ignore"):
        ref = int(np.nanargmax(np.nanmean(train.quality, axis=0)))
    params = {k: v for k, v in DEFAULT_PARAMS.items()
              if k in ("prior_weight", "reg", "proj_dim", "knn_features")}
    fractions = [float(b) for b in args.budgets.split(",")]
    prior_table = None
    if args.prior:
        prior_table = tune_prior(Split(X, train.quality, train.cost, list(train.tasks)),
                                 models, params, fractions, ref, seed=args.seed,
                                 replays=args.replays)
        params.update(prior_table["chosen"])
        print(json.dumps({"prior": prior_table["chosen"]}), flush=True)
    result = tune(Split(X, train.quality, train.cost, list(train.tasks)), models, params,
                  fractions, ref, seed=args.seed, slack=args.slack, replays=args.replays)
    chosen = result["chosen"]
    f = chosen["forgetting"]
    bandit = {**params, "alpha": chosen["alpha"], "confidence": chosen["confidence"],
              "discount": f["discount"], "drift_threshold": f["threshold"],
              "drift_slack": f["slack"], "drift_shrink": f["shrink"],
              "cost_threshold": f["cost_threshold"], "cost_slack": f["cost_slack"]}
    result["cold"] = tune_cold(Split(X, train.quality, train.cost, list(train.tasks)), models,
                               bandit, fractions, ref, seed=args.seed, replays=args.replays)
    chosen["cold_alpha"] = result["cold"]["chosen"]
    if prior_table is not None:
        result["prior"] = prior_table
        chosen.update(prior_table["chosen"])
    print(json.dumps(chosen))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

