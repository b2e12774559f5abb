"""Routing quality of the static encoder backend against the MiniLM int8 one, paired.

    python benchmarks/bench_static.py [--datasets routerbench-subset,routerdc-7llm]
        [--policies knn,cscr] [--boot 1000] [--json out.json]

For each dataset (train -> test split) and policy, two arms:

* ``int8``: what ``router serve`` runs today: the policy fitted on the training
  artifact's embeddings (all-MiniLM-L6-v2, torch; ``--int8-fit int8`` fits on int8 ones)
  and queried with the ONNX int8 encoder;
* ``static``: the policy fitted and queried with the static backend
  (:mod:`router.encoding.static`, model2vec distillation of the same MiniLM, 256-d).

Each arm sweeps the evaluation lam grid (``eval.harness.lam_grid("auto")`` on the train
costs) and is scored as ``router eval`` scores it: AIQ of the cost-quality hull between the
smallest and largest model mean cost, and the mean test score at lam = 0 (the
best-quality end). A paired bootstrap over test queries (the same resamples for both arms,
references recomputed per resample) gives the 95% interval of ``static - int8``. The
verdict "holds" means the interval's lower end is >= -0.005 (at most 0.005 worse).

Answer-aware policies are replayed over the recorded responses as ``router eval`` replays
them (a query's cost is the sum of every call made, its quality that of the returned
answer); ``cascade-routed`` reads the embedding where it routes a kind by prompt. Policies
that ignore the embedding (``cascade``: its plans depend on the answers) give the same
result under both encoders by construction and are listed as such. Embeddings go
through the project's on-disk cache, so a re-run does not re-encode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "datasets"
MARGIN = 0.005


def embed(backend: str, prompts: list[str]) -> np.ndarray:
    from router.encoding.encoder import Encoder

    return Encoder(backend=backend).encode(prompts, progress=True)


def outcomes_for(name: str, train, X_train, X_test, test, lams
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (lam, test query): quality, cost and the chosen (or, for an answer-aware policy,
    the returned) dataset column, as ``router eval`` sweeps it. Answer-aware policies
    (cascades) are replayed over the recorded responses: cost is the sum of every call."""
    from eval.cascades import replay
    from eval.harness import ANSWER_AWARE, PolicySpec, fit_policy, model_map, sweep_policy
    from router.threads import native_threads, preload

    preload()
    q, c = test.eval_matrices()
    with native_threads(1):
        policy = fit_policy(PolicySpec(name, name), train, X_train)
        if name in ANSWER_AWARE:
            out = replay(policy, test, lams, X=X_test)
            return out.quality, out.cost, out.returned
        cols = model_map(policy, test.models, name)
        picks, _, _ = sweep_policy(policy, X_test, lams, test.tasks, (q, c), cols)
    rows = np.arange(q.shape[0])[None, :]
    return q[rows, picks], c[rows, picks], picks


def scores(arm: tuple[np.ndarray, np.ndarray, np.ndarray], c: np.ndarray,
           rows: np.ndarray) -> tuple[float, float]:
    """(AIQ, mean score at lam=0) of a sweep on the test rows ``rows`` (a resample);
    ``c``: the models' test costs (the AIQ's cost range)."""
    from eval import metrics as M
    from eval.harness import cost_scale

    qq = arm[0][:, rows].mean(axis=1)
    cc = arm[1][:, rows].mean(axis=1)
    c_min, c_max = cost_scale(c[rows])
    return M.aiq(M.pareto_hull(cc, qq), c_min, c_max), float(qq[0])


def compare(arms: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], c: np.ndarray,
            n_boot: int, seed: int) -> dict[str, Any]:
    n = c.shape[0]
    rows = np.arange(n)
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, n, n) for _ in range(n_boot)]
    out: dict[str, Any] = {}
    for arm, p in arms.items():
        aiq, s0 = scores(p, c, rows)
        out[arm] = {"aiq": aiq, "score_lam0": s0}
    a = np.array([scores(arms["static"], c, b) for b in boots])
    b = np.array([scores(arms["int8"], c, b) for b in boots])
    d = a - b
    for k, key in enumerate(("aiq", "score_lam0")):
        lo, hi = np.percentile(d[:, k], [2.5, 97.5])
        est = out["static"][key] - out["int8"][key]
        out[f"{key}_diff"] = {"diff": float(est), "ci95": [float(lo), float(hi)],
                              "holds": bool(lo >= -MARGIN)}
    out["same_decision"] = float((arms["static"][2] == arms["int8"][2]).mean())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="routerbench-subset,routerdc-7llm")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--policies", default="knn,cscr,cascade,cascade-routed")
    ap.add_argument("--int8-fit", choices=["torch", "int8"], default="torch",
                    help="embeddings the int8 arm's policy is fitted on (default torch: the "
                         "training artifacts' encoder)")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from eval.harness import lam_grid, needs_embeddings
    from policies import get_policy_class
    from router.datasets import load_split

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs")
    report: dict[str, Any] = {"margin": MARGIN, "int8_fit": args.int8_fit, "datasets": {}}
    for ds_name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        path = args.shared / ds_name
        if not path.is_dir():
            print(f"{ds_name}: not found at {path}; skipped")
            continue
        split = load_split(str(path))
        train, test = split.train, split.test
        t0 = time.perf_counter()
        X = {"static": (embed("static", train.prompts), embed("static", test.prompts)),
             "int8": (embed(args.int8_fit if args.int8_fit == "torch" else "onnx-int8",
                            train.prompts), embed("onnx-int8", test.prompts))}
        print(f"\n{ds_name}: {len(train)} train / {len(test)} test, {train.n_models} models; "
              f"embeddings in {time.perf_counter() - t0:.0f} s (cached on disk)")
        _, train_cost = train.eval_matrices()
        lams = lam_grid("auto", train_cost)
        _, c = test.eval_matrices()
        rows = {}
        for name in [p.strip() for p in args.policies.split(",") if p.strip()]:
            klass = get_policy_class(name)
            if not needs_embeddings(klass):
                print(f"  {name:8s} reads no embedding: same under both encoders")
                rows[name] = {"embedding_free": True}
                continue
            try:
                arms = {arm: outcomes_for(name, train, xtr, xte, test, lams)
                        for arm, (xtr, xte) in X.items()}
            except Exception as exc:  # a policy this dataset cannot train
                print(f"  {name:8s} skipped: {exc}")
                continue
            r = compare(arms, c, args.boot, args.seed)
            rows[name] = r
            for key, label in (("aiq", "AIQ"), ("score_lam0", "score@lam0")):
                d = r[f"{key}_diff"]
                print(f"  {name:8s} {label:10s} int8 {r['int8'][key]:.4f}  static "
                      f"{r['static'][key]:.4f}  diff {d['diff']:+.4f} "
                      f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]  "
                      f"{'holds' if d['holds'] else 'does NOT hold'} (>= -{MARGIN})")
            print(f"  {name:8s} same decision {r['same_decision']:.3f}")
        report["datasets"][ds_name] = {"n_train": len(train), "n_test": len(test),
                                       "policies": rows}
    verdicts = [d["holds"] for ds in report["datasets"].values()
                for r in ds["policies"].values() if not r.get("embedding_free")
                for d in (r["aiq_diff"], r["score_lam0_diff"])]
    report["holds"] = bool(verdicts) and all(verdicts)
    print(f"\nstatic within {MARGIN} of int8 (paired 95% lower bound) everywhere: "
          f"{report['holds']}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
