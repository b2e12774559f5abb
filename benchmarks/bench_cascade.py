"""Answer-aware cascades on the RouterBench subset: the done-when figures of issue #12.

Every choice is made on the train split: the cascade policies search their plans on the
train responses (policies/cascade_search.py; ``cascade-routed`` also fits its prompt-only
router, cscr, on the train embeddings, cached on disk) and the lam grid is `router eval`'s
``auto`` grid from the train costs. Printed per cascade policy, from the recorded test
responses:

0. per answer-aware kind, the train (in-sample) hull of every candidate plan of the search,
   with the best plan inside each hull segment (a plan off the hull is never chosen);
1. overall: the cheapest sweep point reaching gpt-4's test accuracy (and the hull's cost
   to reach it, i.e. mixing two neighbouring plans), against the $2.00 / $1.50 per 1k
   targets, plus the sweep points around it;
2. ARC-Challenge alone: the cheapest point reaching 0.935 (99% of gpt-4) and 0.944, as a
   share of gpt-4's cost there (targets 35% / 40%), and the budget mode
   (policies/cascade_budget.py) at 35% / 40% of gpt-4's mean ARC cost on the *train*
   split: two adjacent train plans mixed by a hash of the prompt so that the expected
   train cost is the budget; its test accuracy and test cost share, whatever they are;
   the budget sweep of every kind together is printed under 1.;
3. (unless ``--no-aiq``) a full ``router eval`` with the cascade, task-static and the
   prompt-only learned policies (knn, mlp, routerdc, cscr; embeddings cached on disk):
   AIQ of each with its bootstrap interval, and each cascade's paired AIQ difference
   against the best prompt-only policy, by cost segment of AIQ's range (where it gains or
   loses), and that of the joint hull of both curves.

    python benchmarks/bench_cascade.py [--data DIR] [--policies cascade,cascade-routed]
                                       [--no-aiq] [--bootstrap N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "routerbench-subset"
GPT4 = "gpt-4-1106-preview"
PROMPT_ONLY = "knn,mlp,routerdc,cscr"
CASCADES = "cascade,cascade-routed"


def _k(cost: float | None) -> str:
    return "never" if cost is None else f"${cost * 1000:.2f}/1k"


def curve_lines(q: np.ndarray, c: np.ndarray, lams: np.ndarray, plans: list[dict[str, str]],
                kinds: list[str] | None = None) -> list[str]:
    """Distinct sweep points (quality, cost) with the plans behind them."""
    out, seen = [], set()
    for i in range(len(lams)):
        key = (round(float(q[i]), 6), round(float(c[i]), 9))
        if key in seen:
            continue
        seen.add(key)
        shown = {k: v for k, v in plans[i].items() if kinds is None or k in kinds}
        out.append(f"    lam={lams[i]:<9.3g} quality={q[i]:.4f} cost={_k(c[i])}  {shown}")
    return out


def reach(q: np.ndarray, c: np.ndarray, target: float) -> tuple[float | None, float | None]:
    """(cheapest sweep point with quality >= target, hull cost to reach target)."""
    from eval import metrics as M

    ok = q >= target - 1e-12
    point = float(c[ok].min()) if ok.any() else None
    return point, M.cost_to_reach(M.pareto_hull(c, q), target)


def embeddings(train, test) -> tuple[np.ndarray, np.ndarray]:
    """Train and test embeddings with the default encoder (router eval's disk cache)."""
    from router.encoding.encoder import embed_dataset
    from router.encoding.select import default_encoder

    enc = default_encoder()
    return tuple(np.asarray(embed_dataset(d, enc, progress=False), dtype=np.float32)
                 for d in (train, test))  # type: ignore[return-value]


def candidate_frontier(policy, train) -> list[str]:
    """Per answer-aware kind: the train (in-sample) hull of *every* candidate plan of the
    search, and per hull segment the best candidate strictly inside it (how far below the
    chord): a plan off these vertices is never chosen at any lam, however fine the grid."""
    from eval import metrics as M
    from policies import answers as A
    from policies._priors import fill_cost
    from policies.cascade import CascadePlan
    from policies.cascade_search import Table, _named, kind_candidates

    quality, cost = train.eval_matrices()
    kinds = [A.infer_kind(p) for p in train.prompts]
    out = []
    for kind, info in policy.search_["kinds"].items():
        if kind not in A.KINDS or info.get("level", 1) < 2:
            continue
        idx = np.flatnonzero(np.asarray(kinds) == kind)
        t = Table.build([kinds[i] for i in idx], [train.responses[i] for i in idx],
                        np.nan_to_num(quality[idx], nan=0.0), fill_cost(cost[idx]))
        cand, _, _ = kind_candidates(t, kind, folds=int(policy.folds),
                                     max_first=int(policy.max_first), seed=int(policy.seed),
                                     lazy=bool(policy.lazy))
        q, c = cand.q_fold.sum(axis=1) / len(idx), cand.c_fold.sum(axis=1) / len(idx)
        hull = M.pareto_hull(c, q)
        best = int(np.argmax(t.quality.mean(axis=0)))
        out.append(f"  kind {kind}: train hull of all {len(q)} candidate plans (in sample; "
                   f"best single {train.models[best].rsplit('/', 1)[-1]} "
                   f"{t.quality[:, best].mean():.4f}, best plan {q.max():.4f}):")
        def desc(i: int, kind: str = kind, stages: list = cand.stages) -> str:
            return CascadePlan(kind, _named(stages[i], train.models)).describe()

        for k, (hc, hq) in enumerate(hull):
            i = int(np.flatnonzero((np.abs(c - hc) < 1e-12) & (np.abs(q - hq) < 1e-12))[0])
            line = f"    {_k(hc)} {hq:.4f}  {desc(i)}"
            if k + 1 < len(hull):
                (c0, q0), (c1, q1) = hull[k], hull[k + 1]
                inside = (c > c0 + 1e-12) & (c < c1 - 1e-12)
                if inside.any():
                    gap = q - (q0 + (c - c0) * (q1 - q0) / (c1 - c0))
                    j = int(np.flatnonzero(inside)[np.argmax(gap[inside])])
                    line += (f"\n      best plan inside the next segment: {_k(c[j])} "
                             f"{q[j]:.4f} ({gap[j]:+.4f} to the chord) {desc(j)}")
            out.append(line)
    return out


def offline(data: Path, name: str) -> None:
    from eval.cascades import budget_sweep, replay
    from eval.harness import lam_grid, needs_embeddings
    from policies import get_policy_class, make_policy
    from router.datasets import load_split

    split = load_split(data)
    train, test = split.train, split.test
    lams = lam_grid("auto", train.eval_matrices()[1])
    if needs_embeddings(get_policy_class(name)):
        X_train, X_test = embeddings(train, test)
    else:
        X_train, X_test = np.zeros((len(train), 1), np.float32), None
    t0 = time.perf_counter()
    policy = make_policy(name).fit_dataset(train, X_train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = replay(policy, test, lams, X=X_test)
    replay_s = time.perf_counter() - t0
    quality, cost = test.eval_matrices()
    g = test.models.index(GPT4)
    load = os.getloadavg()[0]
    print(f"\n=== {name} ===")
    print(f"{name} fit on {len(train)} train prompts: {fit_s:.1f} s; replay of "
          f"{len(lams)} lams x {len(test)} test prompts: {replay_s:.1f} s "
          f"(shared machine, load average {load:.1f})")
    for kind, info in policy.search_["kinds"].items():
        print(f"  kind {kind}: {info['rows']} train rows, {info['candidates']} candidate plans, "
              f"cross-validated family level {info['level']}")
    print("\n".join(candidate_frontier(policy, train)))

    q, c = out.quality.mean(axis=1), out.cost.mean(axis=1)
    q4, c4 = float(quality[:, g].mean()), float(cost[:, g].mean())
    point, hull = reach(q, c, q4)
    print(f"\n1. overall ({len(test)} test prompts): gpt-4 {q4:.4f} at {_k(c4)}")
    print(f"   cheapest sweep point with quality >= {q4:.4f}: {_k(point)}; on the hull "
          f"(mixing two plans): {_k(hull)}; target <= $2.00/1k "
          f"({'met' if point is not None and point <= 2e-3 else 'NOT met'} by a sweep point)"
          f", stretch <= $1.50/1k")
    print("   sweep points:")
    print("\n".join(curve_lines(q, c, lams, out.plans)))
    print("   budget mode (router eval's budget sweep; budgets from the train plans):")
    for row in budget_sweep(policy, test, X_test):
        print(f"    budget {_k(row['budget'])}: train {_k(row['train_cost'])} "
              f"{row['train_quality']:.4f}; test {_k(row['cost'])} {row['quality']:.4f}  "
              f"mixed {row['shares'] or '-'}")

    arc = np.array([t == "arc-challenge" for t in test.tasks])
    qa, ca = out.quality[:, arc].mean(axis=1), out.cost[:, arc].mean(axis=1)
    qa4, ca4 = float(quality[arc, g].mean()), float(cost[arc, g].mean())
    print(f"\n2. ARC-Challenge ({int(arc.sum())} test prompts): gpt-4 {qa4:.4f} at {_k(ca4)}")
    for target, share in ((0.935, 0.35), (0.944, 0.40)):
        point, hull = reach(qa, ca, target)
        pct = "-" if point is None else f"{100 * point / ca4:.1f}%"
        hpct = "-" if hull is None else f"{100 * hull / ca4:.1f}%"
        ok = point is not None and point <= share * ca4
        print(f"   quality >= {target}: cheapest sweep point {_k(point)} = {pct} of gpt-4's "
              f"cost; hull {_k(hull)} = {hpct}; target <= {100 * share:.0f}%: "
              f"{'met' if ok else 'NOT met'} by a sweep point")
    print("   sweep points:")
    print("\n".join(curve_lines(qa, ca, lams, out.plans, kinds=["mc"])))
    print("\n".join(arc_budget(policy, train, test, X_test, (qa4, ca4))))


def arc_budget(policy, train, test, X_test: np.ndarray | None,
               gpt4_test: tuple[float, float]) -> list[str]:
    """The budget mode on ARC-Challenge alone: B = 35% (40%) of gpt-4's mean ARC cost on
    the train split, spent on the train ARC prompts' kinds only; test accuracy and cost."""
    from eval.cascades import replay
    from policies.answers import infer_kind

    _, train_cost = train.eval_matrices()
    on_train = np.array([t == "arc-challenge" for t in train.tasks])
    c4_train = float(train_cost[on_train, train.models.index(GPT4)].mean())
    kinds = sorted({infer_kind(p) for p, a in zip(train.prompts, on_train, strict=True) if a})
    rows = np.flatnonzero([t == "arc-challenge" for t in test.tasks])
    arc = test.subset(rows)
    out = [f"   budget mode, ARC kinds {kinds} only (gpt-4's train ARC cost {_k(c4_train)}):"]
    for share in (0.35, 0.40):
        mix = policy.budget_mix(share * c4_train, kinds=kinds)
        got = replay(policy, arc, [], X=None if X_test is None else X_test[rows], mixes=[mix])
        q, c = float(got.quality.mean()), float(got.cost.mean())
        mixed = {k: (round(m.share, 4), m.low.lam, m.high.lam) for k, m in mix.kinds.items()}
        out.append(f"    B = {100 * share:.0f}% of train gpt-4 = {_k(mix.budget)}: train "
                   f"{_k(mix.train_cost)} {mix.train_quality:.4f} (mixed: share of the "
                   f"dearer plan, lams {mixed}); test accuracy {q:.4f} at {_k(c)} = "
                   f"{100 * c / gpt4_test[1]:.1f}% of gpt-4's test ARC cost "
                   f"({q / gpt4_test[0]:.1%} of its accuracy); plans {got.plans[0]}")
    return out


def aiq(data: Path, bootstrap: int, cascades: str) -> None:
    from router.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rc = main(["eval", "--data", str(data), "--out", tmp, "--quiet", "--threads", "1",
                   "--bootstrap", str(bootstrap), "--no-plots", "--policies",
                   f"{cascades},task-static,{PROMPT_ONLY}"])
        if rc != 0:
            raise SystemExit(f"router eval failed with exit status {rc}")
        results = json.loads((Path(tmp) / "results.json").read_text())
        wall = time.perf_counter() - t0
    print(f"\n3. AIQ ({bootstrap} paired bootstrap resamples; router eval {wall:.0f} s):")
    for label, p in sorted(results["policies"].items(), key=lambda kv: -kv[1]["aiq"]):
        ci = p.get("aiq_ci") or [float("nan")] * 2
        print(f"   {label:12s} AIQ {p['aiq']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]")
    for name in cascades.split(","):
        cmp = results["policies"][name]["vs_best_prompt_only"]
        ci = cmp["aiq_diff_ci"]
        print(f"   {name} - {cmp['baseline']} (best prompt-only): AIQ {cmp['aiq_diff']:+.4f} "
              f"[{ci[0]:+.4f}, {ci[1]:+.4f}] -> interval above 0: "
              f"{'yes' if ci[0] > 0 else 'NO'}")
        print(f"   matched costs: {cmp['summary']}")
        print("\n".join(aiq_segments(results, name, cmp["baseline"])))
        ts = results["policies"][name]["vs_task_static"]
        print(f"   vs task-static: {ts['summary']}")


def aiq_segments(results: dict, name: str, base: str) -> list[str]:
    """Where along AIQ's cost range (the single models' mean costs, cheapest to dearest)
    policy ``name`` gains or loses AIQ against ``base``, by runs of cost where the
    difference keeps one sign (split at both hulls' vertices); and the AIQ difference of the two curves' joint hull (the
    most that mixing operating points of both could add)."""
    from eval import metrics as M

    lo, hi = results["reference"]["cost_range"]

    def hull(label: str) -> np.ndarray:
        curve = results["policies"][label]["curve"]
        return M.pareto_hull(np.array([p["cost"] for p in curve]),
                             np.array([p["quality"] for p in curve]))

    h, b = hull(name), hull(base)
    edges = np.unique(np.clip(np.concatenate(([lo], h[:, 0], b[:, 0], [hi])), lo, hi))
    parts = M.aiq_difference_by_segment(h, b, edges)
    sign = np.sign(np.where(np.abs(parts) < 1e-6, 0.0, parts))
    for k in range(1, sign.size):  # a negligible segment joins the run before it
        if sign[k] == 0:
            sign[k] = sign[k - 1]
    keep = np.concatenate(([True], sign[1:] != sign[:-1], [True]))  # merge same-sign runs
    edges = edges[keep]
    parts = M.aiq_difference_by_segment(h, b, edges)
    out = [f"   AIQ cost range {_k(lo)}..{_k(hi)} (cheapest..dearest single model); "
           f"{name} - {base} by cost segment (runs of one sign):"]
    for a, z, d in zip(edges[:-1], edges[1:], parts, strict=True):
        qa, qz = (float(M.hull_value(x, z)) for x in (h, b))
        out.append(f"     {_k(a):>12} .. {_k(z):<12} ({(z - a) / (hi - lo):4.0%} of the range) "
                   f"{d:+.5f}   at {_k(z)}: {qa:.4f} vs {qz:.4f}")
    joint = M.pareto_hull(np.concatenate([h[:, 0], b[:, 0]]), np.concatenate([h[:, 1], b[:, 1]]))
    out.append(f"     sum {parts.sum():+.5f}; joint hull of both curves - {base}: "
               f"{M.aiq(joint, lo, hi) - M.aiq(b, lo, hi):+.5f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--no-aiq", action="store_true", help="skip the full router eval")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--policies", default=CASCADES,
                        help=f"comma-separated cascade policies (default {CASCADES})")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if not args.data.is_dir():
        raise SystemExit(f"--data {args.data}: no such directory")
    for name in args.policies.split(","):
        offline(args.data, name)
    if not args.no_aiq:
        aiq(args.data, args.bootstrap, args.policies)


if __name__ == "__main__":
    main()
