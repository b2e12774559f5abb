"""RouterDC with a fine-tuned encoder against the frozen one and task-static.

    python benchmarks/bench_routerdc.py --data ../shared/datasets/routerbench-subset
    python benchmarks/bench_routerdc.py --data ../shared/datasets/routerdc-7llm \
        --param finetune_epochs=2 --validate          # choose settings on train only

Fits task-static, ``routerdc`` with ``finetune=False`` (the head on frozen MiniLM) and
``routerdc`` with ``finetune=True`` (the encoder fine-tuned with both contrastive losses)
on the train split, embeds the test prompts with each policy's own encoder, and prints:

* the per-prompt signal: within-task AUC of the estimated quality against the actual
  correctness (a score >= 0.5 counts as correct for graded data), per task, averaged over
  the models with both outcomes on that task's test rows; 0.5 = no per-prompt signal;
* routing: AIQ (eval/README.md) and the mean score at lam = 0 (the best-quality choice),
  each with the paired bootstrap 95% interval of the difference from task-static;
* the fine-tuning time and the load average around it (the machine is shared).

``--validate`` holds a stratified quarter of the *train* split out as the test set, so
settings can be compared without touching the test split. ``--json PATH`` writes all
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def within_task_auc(est_q: np.ndarray, truth: np.ndarray, tasks: np.ndarray) -> dict[str, float]:
    """Per task: mean over models of the AUC of est_q[:, j] for truth[:, j] >= 0.5."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    for t in sorted(set(tasks)):
        rows = tasks == t
        aucs = []
        for j in range(truth.shape[1]):
            y = truth[rows, j] >= 0.5
            if 0 < y.sum() < len(y):
                aucs.append(roc_auc_score(y, est_q[rows, j]))
        out[t] = float(np.mean(aucs)) if aucs else float("nan")
    return out


def curve_metrics(choices: np.ndarray, quality: np.ndarray, cost: np.ndarray,
                  counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(AIQ, mean score at lam=0) on the test rows, or per bootstrap resample (counts)."""
    from eval import metrics as M

    n = quality.shape[0]
    rows = np.arange(n)
    qsel = quality[rows[None, :], choices]  # (L, n)
    csel = cost[rows[None, :], choices]
    W = np.ones((1, n)) if counts is None else counts
    qb, cb = W @ qsel.T / n, W @ csel.T / n  # (B, L)
    mc = W @ cost / n
    aiq = np.array([M.aiq(M.pareto_hull(cb[b], qb[b]), float(mc[b].min()), float(mc[b].max()))
                    for b in range(len(W))])
    return aiq, qb[:, 0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/routerbench-subset")
    ap.add_argument("--validate", action="store_true",
                    help="test on a held-out quarter of the train split instead of test")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of the fine-tuned routerdc (repeatable)")
    ap.add_argument("--no-frozen", action="store_true", help="skip the frozen routerdc")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads while fine-tuning (default 2); other fits use 1")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from eval import harness as H
    from eval import metrics as M
    from eval.own_encoder import own_embeddings
    from policies import make_policy
    from policies._contrastive import stratified_folds
    from router.commands.train import parse_params
    from router.datasets import load_split
    from router.encoding.encoder import Encoder, embed_dataset
    from router.threads import native_threads, preload

    split = load_split(args.data)
    train, test = split.train, split.test
    if args.validate:
        codes = np.unique(np.asarray(train.tasks), return_inverse=True)[1]
        held = stratified_folds(codes, 4, args.seed + 1)[0]
        rest = np.setdiff1d(np.arange(len(train)), held)
        train, test = train.subset(rest), train.subset(held)
    print(f"{train.name}: {len(train)} train / {len(test)} "
          f"{'validation (from train)' if args.validate else 'test'} prompts, "
          f"{train.n_models} models")
    enc = Encoder()
    X_train = embed_dataset(train, enc, progress=False)
    X_test = embed_dataset(test, enc, progress=False)
    quality, cost = test.eval_matrices()
    _, train_cost = train.eval_matrices()
    lams = H.lam_grid("auto", train_cost)
    tasks = np.asarray(test.tasks)

    params = parse_params(args.param)
    fits = [("task-static", "task-static", {}), ("routerdc-frozen", "routerdc",
                                                 {"finetune": False})]
    if args.no_frozen:
        fits = fits[:1]
    fits.append(("routerdc-finetuned", "routerdc",
                 {"finetune": True, "encoder_threads": args.threads, **params}))
    preload()
    results: dict[str, dict] = {}
    choices: dict[str, np.ndarray] = {}
    for label, name, p in fits:
        policy = make_policy(name, **p)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with native_threads(1):
            policy.fit_dataset(train, X_train)
        fit_s = time.perf_counter() - t0
        load1 = os.getloadavg()[0]
        X = own_embeddings(policy, test.prompts)
        X = X_test if X is None else X
        est = policy.predict(X, tasks=test.tasks)
        cols = H.model_map(policy, test.models, label)
        ch, _, _ = H.sweep_policy(policy, X, lams, test.tasks, (quality, cost), cols)
        choices[label] = ch
        aiq, score0 = curve_metrics(ch, quality, cost)
        entry = {"fit_s": round(fit_s, 1), "load_avg_1m": [round(load0, 1), round(load1, 1)],
                 "aiq": float(aiq[0]), "mean_score_lam0": float(score0[0])}
        if name != "task-static":
            q_est = np.empty_like(est.quality)
            q_est[:, :] = est.quality
            entry["within_task_auc"] = within_task_auc(q_est, quality[:, cols], tasks)
        info = getattr(policy, "finetune_info_", None)
        if info:
            entry["finetune"] = info
            entry["shrink"] = policy.shrink_
        results[label] = entry
        print(f"  {label}: fitted in {fit_s:.1f}s (load {load0:.1f} -> {load1:.1f}); "
              f"AIQ {aiq[0]:.4f}, mean score at lam=0 {score0[0]:.4f}", flush=True)

    counts = M.bootstrap_counts(len(test), args.bootstrap, args.seed)
    base_aiq, base_s0 = curve_metrics(choices["task-static"], quality, cost, counts)
    print(f"\n{'policy':22s} {'AIQ':>7s} {'dAIQ vs task-static [95%]':>28s} "
          f"{'score@0':>8s} {'d score [95%]':>24s}")
    for label, entry in results.items():
        aiq, s0 = curve_metrics(choices[label], quality, cost, counts)
        d_aiq = entry["aiq"] - results["task-static"]["aiq"]
        d_s0 = entry["mean_score_lam0"] - results["task-static"]["mean_score_lam0"]
        ci_a = M.percentile_ci(aiq - base_aiq, 0.95)
        ci_s = M.percentile_ci(s0 - base_s0, 0.95)
        entry.update(d_aiq=d_aiq, d_aiq_ci=ci_a, d_score=d_s0, d_score_ci=ci_s)
        print(f"{label:22s} {entry['aiq']:7.4f} {d_aiq:+8.4f} [{ci_a[0]:+.4f}, {ci_a[1]:+.4f}]"
              f"   {entry['mean_score_lam0']:8.4f} {d_s0:+8.4f} [{ci_s[0]:+.4f}, "
              f"{ci_s[1]:+.4f}]" if ci_a and ci_s else f"{label:22s} {entry['aiq']:7.4f}")
    print("\nwithin-task AUC of estimated vs actual correctness (mean over models):")
    aucs = {k: v["within_task_auc"] for k, v in results.items() if "within_task_auc" in v}
    names = sorted({t for v in aucs.values() for t in v})
    print(f"{'task':24s}" + "".join(f"{k:>22s}" for k in aucs))
    for t in names:
        print(f"{t:24s}" + "".join(f"{aucs[k][t]:22.4f}" for k in aucs))
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "validate": args.validate,
                                               "params": params, "results": results},
                                              indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
