"""Replaying a drift scenario (:mod:`eval.scenarios`) through the bandit and its yardsticks.

For each budget, the *frozen prior* (``prior-only``) first streams the unchanged test
queries; the model it sends most of the first half to is the scenario's default affected
model. Then ``pilot`` (prior + online updates + forgetting) and ``prior-only`` stream the
changed world through the budget knapsack, and full-information policies (the ridge
prior and kNN) refitted on the changed training data (:attr:`World.refit`) are matched to
the pilot's after-change spend on the after-change queries (``ridge``, ``knn``: the lam
with the best realised quality at no more than that spend, chosen in hindsight). The
*informed replay* (``ridge-paced``) streams the same world through the same knapsack as
the frozen prior up to the change and the refitted ridge from the change on: the router
told of the change the moment it happens, paced as the bandit is. A learning replay
re-derives the knapsack's price sample from its estimates whenever a change detector
fires or the set of available models changes, over the models available
(:data:`eval.online.REPRICE`); the informed replay keeps the prior's sample.

Reported per variant: accuracy and $/1k before and after the change, the affected model's
share before and after (and the new model's, per task, for ``swap``), the new task's
accuracy (``new-task``), and ``adapt_queries``: how many queries after the change until
the tracked figure holds on every tail of the stream from there on (:func:`settle`):

* degrade: the affected model's share below 5%;
* price: the affected model's share within 0.05 of the informed replay's share on the
  same tail, up to the tail's sampling error (:func:`settle_near`);
* swap: the new model's share at least the informed replay's minus 0.05 (the same way);
* new-task: accuracy on the new task's queries at least the refitted ridge's minus 0.05.

Why the informed replay and not the matched refit for price and swap (``adapt_matched``
keeps the matched one): the issue asks that the bandit's spend and share *follow* the
change, i.e. end up where a router that knows it would be. The matched refit's share is
that of one hindsight lam at the pilot's whole after-change spend, and on the RouterBench
subset the affected model's share jumps between neighbouring lams (price, Yi-34B: 0.05,
0.20, 0.48, 0.70 at lam 8, 10, 13, 16), so the target moved with any change of spend,
including the knapsack's end-of-stream spending of what is left, which follows the
budget, not the change. The informed replay has the same budget, pacing and stream, so
what differs is only what the bandit has still to learn; the tolerance stays 0.05.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eval.scenarios import Split, World, build_world, rolling_share, settle, settle_near
from policies.base import choose
from policies.linucb import LinUCBPolicy
from router.budget import BudgetSpec, EmbeddedLedger, OnlineKnapsack, auto_bins

SHARE_LIMIT = 0.05  # degrade: the affected model's share must fall below this
TOLERANCE = 0.05  # price/swap/new-task: share or accuracy within this of the refit
WINDOW = 50  # rolling window of the share plots, and the shortest judged tail


def replay_world(world: World, models: list[str], params: dict[str, Any], budget: float,
                 learn: bool, n_bins: int | None = None, progress: Any = None,
                 after: LinUCBPolicy | None = None):
    """Fit LinUCB on ``world.prior`` and stream the world through the budget knapsack
    (``after``: the policy that decides from the change on, the informed replay)."""
    from eval.online import REPRICE
    from eval.stream import decision_values, replay

    pr = world.prior
    policy = LinUCBPolicy(**params).fit(pr.X, pr.quality, pr.cost, models, pr.tasks)
    bins = n_bins or auto_bins(budget, float(np.nanmax(pr.cost)), world.T)
    sample = decision_values(policy, pr.X) if policy.prior_weight > 0 else None
    knapsack = OnlineKnapsack(EmbeddedLedger(), BudgetSpec(budget, horizon=world.T, n_bins=bins),
                              price_sample=sample)
    again = (lambda p: decision_values(p, pr.X)) if sample is not None and REPRICE else None
    return replay(policy, world.X, world.quality, world.cost, knapsack, learn=learn,
                  progress=progress, allowed=world.allowed,
                  switch=None if after is None else (world.change, after), resample=again)


def _full_info(refit: Split, models: list[str], params: dict[str, Any], seed: int
               ) -> dict[str, Any]:
    """Full-information policies fitted on the changed training data."""
    out: dict[str, Any] = {
        "ridge": LinUCBPolicy(**{**params, "alpha": 0.0}).fit(
            refit.X, refit.quality, refit.cost, models, refit.tasks)}
    try:
        from policies.knn import KNNPolicy
    except ImportError:
        return out
    out["knn"] = KNNPolicy(seed=seed).fit(refit.X, refit.quality, refit.cost, models,
                                          refit.tasks)
    return out


def matched(policy, X: np.ndarray, quality: np.ndarray, cost: np.ndarray,
            allowed: np.ndarray, spend: float) -> np.ndarray:
    """Choices of a full-information policy on X with the lam (a price of a dollar) whose
    realised spend is at most ``spend`` with the best realised quality."""
    est = policy.predict(X)
    rows = np.arange(len(X))
    c_min = max(float(est.cost.min()), 1e-12)
    grid = [0.0, *np.geomspace(1e-3 / max(float(est.cost.max()), 1e-12), 1e3 / c_min, 80)]
    best, best_q = None, -np.inf
    for lam in grid:
        pick = choose(est.quality, est.cost, lam=float(lam), allowed=allowed)
        q, c = quality[rows, pick].mean(), cost[rows, pick].sum()
        if c <= spend * (1 + 1e-9) and q > best_q:
            best, best_q = pick, q
    if best is None:
        best = choose(est.quality, est.cost, lam=float(grid[-1]), allowed=allowed)
    return best


def _phase(chosen: np.ndarray, reward: np.ndarray, cost: np.ndarray, world: World,
           lo: int, hi: int) -> dict[str, Any]:
    sl = slice(lo, hi)
    n = max(hi - lo, 1)
    out: dict[str, Any] = {"queries": hi - lo, "quality": float(reward[sl].sum() / n),
                           "cost_per_1k": float(1000 * cost[sl].sum() / n)}
    if world.affected is not None:
        out["affected_share"] = float((chosen[sl] == world.affected).mean()) if hi > lo else 0.0
    if world.new is not None:
        out["new_share"] = float((chosen[sl] == world.new).mean()) if hi > lo else 0.0
        tasks = np.array(world.tasks[sl])
        out["new_share_by_task"] = {
            t: float((chosen[sl][tasks == t] == world.new).mean()) for t in sorted(set(tasks))}
    if world.task is not None:
        on = np.array([t == world.task for t in world.tasks[sl]])
        out["new_task_quality"] = float(reward[sl][on].mean()) if on.any() else None
    return out


def _adapt(world: World, chosen: np.ndarray, reward: np.ndarray, ref: np.ndarray,
           ref_reward: np.ndarray, paced: np.ndarray | None = None) -> int | None:
    """Queries after the change until the scenario's tracked figure settles (module doc);
    ``ref``/``ref_reward``: the matched refit's after-change choices and rewards,
    ``paced``: the informed replay's after-change choices (the price/swap share target)."""
    k = world.change
    after = chosen[k:]
    if world.name == "degrade":
        return settle((after == world.affected).astype(float), lambda v: v < SHARE_LIMIT,
                      WINDOW)
    if world.name in ("price", "swap"):
        arm = world.affected if world.name == "price" else world.new
        target = (float((ref == arm).mean()) if paced is None
                  else (paced == arm).astype(float))
        return settle_near((after == arm).astype(float), target, TOLERANCE, WINDOW,
                           above=world.name == "swap")
    if world.name == "new-task":
        on = np.array([t == world.task for t in world.tasks[k:]])
        target = float(ref_reward[on].mean()) if on.any() else 0.0
        return settle(reward[k:][on], lambda v: v >= target - TOLERANCE, WINDOW // 2)
    return None


def run_world(world: World, models: list[str], params: dict[str, Any], budget: float,
              seed: int, progress: Any = None, full: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Replay one world at one budget: per-variant phases, adaptation, the refits."""
    T, k = world.T, world.change
    runs: dict[str, Any] = {}
    reps = {}
    for name, learn in (("pilot", True), ("prior-only", False)):
        rep = replay_world(world, models, params, budget, learn, progress=progress)
        reps[name] = rep
        runs[name] = {
            "overall": _phase(rep.chosen, rep.reward, rep.cost, world, 0, T),
            "before": _phase(rep.chosen, rep.reward, rep.cost, world, 0, k),
            "after": _phase(rep.chosen, rep.reward, rep.cost, world, k, T),
            "over_budget": bool(np.cumsum(rep.cost).max(initial=0.0) > budget * (1 + 1e-9)),
        }
    full = full if full is not None else _full_info(world.refit, models, params, seed)
    rows = np.arange(k, T)
    refits: dict[str, Any] = {}
    ref_choice = ref_reward = paced = None
    spend_after = float(reps["pilot"].cost[k:].sum())
    for label, pol in full.items():
        if k >= T:
            break
        pick = matched(pol, world.X[k:], world.quality[k:], world.cost[k:], world.allowed[k:],
                       spend_after)
        r, c = world.quality[rows, pick], world.cost[rows, pick]
        refits[label] = _phase(np.concatenate([np.full(k, -1), pick]),
                               np.concatenate([np.zeros(k), r]),
                               np.concatenate([np.zeros(k), c]), world, k, T)
        if label == "ridge":
            ref_choice, ref_reward = pick, r
            # the informed replay: the frozen prior, then the refit from the change on,
            # through the same knapsack (what following the change means at this pacing)
            inf = replay_world(world, models, params, budget, False, progress=progress,
                               after=pol)
            refits["ridge-paced"] = _phase(inf.chosen, inf.reward, inf.cost, world, k, T)
            paced = inf.chosen[k:]
    for name, rep in reps.items():
        runs[name]["adapt_queries"] = (
            None if ref_choice is None
            else _adapt(world, rep.chosen, rep.reward, ref_choice, ref_reward, paced))
        if world.name in ("price", "swap") and ref_choice is not None:
            runs[name]["adapt_matched"] = _adapt(world, rep.chosen, rep.reward, ref_choice,
                                                 ref_reward)
        track = world.new if world.name == "swap" else world.affected
        if track is not None:
            runs[name]["share_curve"] = [float(v) for v in rolling_share(rep.chosen, track,
                                                                         WINDOW)]
    return {"budget_usd": budget, "budget_per_1k": 1000 * budget / T, "change": k,
            "affected": None if world.affected is None else models[world.affected],
            "new": None if world.new is None else models[world.new], "task": world.task,
            "runs": runs, "refit": refits}


def run_scenario(name: str, params: dict[str, str], train: Split, test: Split,
                 models: list[str], fractions: list[float], ref_idx: int,
                 bandit_params: dict[str, Any], seed: int, progress: bool = False,
                 say=None) -> dict[str, Any]:
    """Every budget of one scenario (budgets: ``fractions`` of always-``ref_idx`` spend)."""
    say = say or (lambda msg: None)
    base = build_world("stationary", {}, train, test, models, seed)
    ref_spend = float(base.cost[:, ref_idx].sum())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=base.T * 3 * len(fractions), desc=f"scenario {name}", leave=False)
    out: dict[str, Any] = {"scenario": name, "params": params, "seed": seed,
                           "queries": base.T, "budgets": []}
    fits: dict[tuple, dict[str, Any]] = {}
    for frac in fractions:
        B = frac * ref_spend
        frozen = replay_world(base, models, bandit_params, B, learn=False, progress=bar)
        first = frozen.chosen[:base.T // 2]
        busiest = int(np.bincount(first[first >= 0], minlength=len(models)).argmax())
        world = build_world(name, params, train, test, models, seed, busiest=busiest)
        key = (world.name, world.affected, world.new)
        if key not in fits:
            fits[key] = _full_info(world.refit, models, bandit_params, seed)
        entry = run_world(world, models, bandit_params, B, seed, progress=bar, full=fits[key])
        entry["fraction"] = frac
        out["budgets"].append(entry)
        p, f = entry["runs"]["pilot"], entry["runs"]["prior-only"]
        if entry["change"] >= world.T:  # stationary: one phase, nothing to adapt to
            say(f"scenario {name} @ {frac:.0%}: pilot {p['overall']['quality']:.3f} at "
                f"${p['overall']['cost_per_1k']:.3f}/1k over the whole stream (frozen prior "
                f"{f['overall']['quality']:.3f})")
        else:
            say(f"scenario {name} @ {frac:.0%}: after the change pilot "
                f"{p['after']['quality']:.3f} at ${p['after']['cost_per_1k']:.3f}/1k (frozen "
                f"prior {f['after']['quality']:.3f}), adapted in {p['adapt_queries']} queries")
    if bar is not None:
        bar.close()
    return out


def plot_scenario(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """share_<scenario>.png: the tracked model's rolling share over the stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["scenario"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, entry in enumerate(result["budgets"]):
        for ls, variant in (("-", "pilot"), ("--", "prior-only")):
            curve = entry["runs"][variant].get("share_curve")
            if curve is None:
                continue
            ax.plot(np.arange(1, len(curve) + 1), curve, color=f"C{i}", ls=ls,
                    label=f"{variant} @ {entry['fraction']:.0%}")
        ax.axvline(entry["change"], color="grey", lw=1, ls=":")
    first = result["budgets"][0] if result["budgets"] else {}
    tracked = first.get("new") if name == "swap" else first.get("affected")
    ax.set_xlabel("queries seen (dotted: the change)")
    ax.set_ylabel(f"share of the last {WINDOW} queries")
    ax.set_title(f"scenario {name}: traffic to {tracked}")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / f"share_{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Plain-text table of one scenario's result."""
    lines = [f"scenario {result['scenario']} ({result['queries']} queries, change halfway)"]
    for e in result["budgets"]:
        who = e["new"] if result["scenario"] == "swap" else (e["affected"] or e["task"])
        lines.append(f"  budget {e['fraction']:.0%} = ${e['budget_per_1k']:.3f}/1k, "
                     f"tracked: {who}")
        if e["change"] >= result["queries"]:  # stationary: nothing changes, one phase
            for n, r in e["runs"].items():
                lines.append(f"    {n:<18} whole stream {r['overall']['quality']:.3f} "
                             f"${r['overall']['cost_per_1k']:.3f}/1k")
            continue
        rows = [(n, r["before"], r["after"], r.get("adapt_queries")) for n, r in e["runs"].items()]
        rows += [(f"{n} (refit)", None, r, None) for n, r in e["refit"].items()]
        for n, before, after, adapt in rows:
            share = "new_share" if result["scenario"] == "swap" else "affected_share"
            b = (f"before {before['quality']:.3f} ${before['cost_per_1k']:.3f}/1k "
                 f"share {before.get(share, float('nan')):.2f}  ") if before else " " * 37
            a = (f"after {after['quality']:.3f} ${after['cost_per_1k']:.3f}/1k "
                 f"share {after.get(share, float('nan')):.2f}")
            if after.get("new_task_quality") is not None:
                a += f" new-task {after['new_task_quality']:.3f}"
            tail = "" if adapt is None and before is None else f"  adapt {adapt}"
            if n in e["runs"] and "adapt_matched" in e["runs"][n]:
                tail += f" (vs matched refit {e['runs'][n]['adapt_matched']})"
            lines.append(f"    {n:<18} {b}{a}{tail}")
    return lines
