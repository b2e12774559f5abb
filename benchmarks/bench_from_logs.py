"""A router trained from gateway logs: 2,000 replayed requests with feedback -> `router data
from-logs` -> `router train`, against the full-information policy and random routing.

1. ``router serve --demo`` (replay backends of the RouterBench subset: every backend answers
   a dataset prompt as that model did, at its recorded cost, with the dataset's grade in
   the answer's ``router.replay.grade``) in a subprocess, with its own state dir.
2. ``--requests`` requests: a seeded random *train* prompt each, sent to a uniformly random
   backend by name (the exploration traffic a deployment logs before it has a router, so
   every model's outcomes are seen; the logging propensity is 1/m for every model), and
   ``POST /v1/feedback`` with the answer's grade as the reward (the client's feedback).
3. ``router logs``' store -> ``router data from-logs --prompts train_prompts.jsonl`` (the
   records carry prompt hashes; the prompt file gives the text, and with ``--tasks`` the
   task; ``--cluster-tasks K`` makes tasks of k-means clusters instead) -> ``router train
   --test-fraction 0`` (one observed model per logged request, the
   other cells missing).
4. The full-information policy: ``router train`` on the train split with every cell.
5. On the *test* split: both policies' (cost, quality) curves over the same lam grid, as
   upper hulls; the quality gap at the same spend on a grid of costs both reach; and random
   routing (a uniformly random model per prompt: mean quality and cost over models).

    python benchmarks/bench_from_logs.py --out out/bench_from_logs [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "routerbench-subset"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "router", *args], cwd=REPO, env=env,
                       capture_output=True, text=True)
    tail = "\n".join(r.stderr.strip().splitlines()[-4:])
    print(f"$ router {' '.join(args)}  ({time.perf_counter() - t0:.1f}s)\n{tail}", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"router {args[0]} failed:\n{r.stderr[-3000:]}")


def serve(data: Path, state: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--demo", "--demo-dataset", str(data),
             "--demo-latency-ms", "0", "--demo-encoder", "hashing", "--state-dir", str(state),
             "--port", str(port), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"router serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("router serve did not become ready")


async def replay_requests(port: int, prompts: list[str], models: list[str], n: int, seed: int,
                          concurrency: int) -> dict[str, int]:
    import httpx
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(prompts), n)
    picks = rng.integers(0, len(models), n)
    sem = asyncio.Semaphore(concurrency)
    status: dict[str, int] = {}
    bar = tqdm(total=n, desc="requests", unit="req")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as client:

        async def one(i: int) -> None:
            async with sem:
                r = await client.post("/chat/completions", json={
                    "model": models[picks[i]],
                    "messages": [{"role": "user", "content": prompts[rows[i]]}]})
                key = str(r.status_code) + (
                    "" if r.status_code != 200 else "/" + r.headers.get("x-router-replay-match",
                                                                        "?"))
                status[key] = status.get(key, 0) + 1
                grade = (r.json().get("router") or {}).get("replay", {}).get("grade") \
                    if r.status_code == 200 else None
                if grade is not None:  # the client's feedback: the answer's grade
                    fb = await client.post("/feedback", json={
                        "request_id": r.headers["x-router-request-id"], "reward": grade})
                    key = f"feedback {fb.status_code}"
                    status[key] = status.get(key, 0) + 1
                bar.update(1)

        await asyncio.gather(*(one(i) for i in range(n)))
    bar.close()
    return status


def curve(policy, X: np.ndarray, quality: np.ndarray, cost: np.ndarray, lams: np.ndarray,
          columns: np.ndarray) -> np.ndarray:
    from policies.base import choose

    est = policy.predict(X)
    rows = np.arange(len(X))
    pts = []
    for lam in lams:
        pick = columns[choose(est.quality, est.cost, lam=float(lam))]
        pts.append((cost[rows, pick].mean(), quality[rows, pick].mean()))
    return np.asarray(pts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="out/bench_from_logs")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--policy", default="knn")
    p.add_argument("--param", action="append", default=[], help="policy KEY=VALUE (both)")
    p.add_argument("--tasks", action="store_true",
                   help="the prompt file gives each logged prompt's task (default: no tasks)")
    p.add_argument("--cluster-tasks", type=int, metavar="K",
                   help="router data from-logs --cluster-tasks K (tasks from k-means clusters "
                        "of the logged prompts instead of labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-logs", action="store_true",
                   help="skip the gateway run when OUT/state already holds the logs")
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from eval.harness import lam_grid
    from eval.metrics import pareto_hull, quality_at_cost
    from router.datasets import load_split

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    split = load_split(str(data))  # the split router serve --demo and router train use
    train, test = split.train, split.test
    models = list(train.models)
    prompts_file = out / "train_prompts.jsonl"
    with open(prompts_file, "w", encoding="utf-8") as f:
        for i, text in enumerate(train.prompts):
            rec = {"id": str(i), "prompt": text}  # RouterBench ids repeat
            if args.tasks:
                rec["task"] = train.tasks[i]
            f.write(json.dumps(rec) + "\n")

    state = out / "state"
    if not (args.reuse_logs and (state / "outcomes.sqlite").is_file()):
        if state.exists():
            import shutil

            shutil.rmtree(state)
        port = free_port()
        t0 = time.perf_counter()
        proc = serve(data, state, port, out / "serve.log")
        print(f"gateway ready in {time.perf_counter() - t0:.1f}s", flush=True)
        t0 = time.perf_counter()
        status = asyncio.run(replay_requests(port, train.prompts, models, args.requests,
                                             args.seed, args.concurrency))
        print(f"{args.requests} requests in {time.perf_counter() - t0:.1f}s: {status}")
        proc.send_signal(signal.SIGTERM)  # graceful: the outcome writer drains
        proc.wait(timeout=60)

    logs_ds = out / "logs.jsonl"
    cluster = [] if args.cluster_tasks is None else ["--cluster-tasks", str(args.cluster_tasks)]
    cli("data", "from-logs", "--state-dir", str(state), "--prompts", str(prompts_file),
        "--out", str(logs_ds), *cluster)
    params = [x for kv in args.param for x in ("--param", kv)]
    cli("train", "--policy", args.policy, "--data", str(logs_ds), "--out",
        str(out / "art-logs"), "--test-fraction", "0", "--quiet", *params)
    cli("train", "--policy", args.policy, "--data", str(data), "--out", str(out / "art-full"),
        "--quiet", *params)

    from policies import load_policy
    from router.datasets import load_dataset
    from router.encoding.encoder import Encoder

    logged = load_dataset(logs_ds)
    observed = float(logged.mask.mean())
    pol_logs = load_policy(str(out / "art-logs"))
    pol_full = load_policy(str(out / "art-full"))
    X = Encoder().encode(test.prompts, progress=False)
    quality, cost = test.eval_matrices()
    lams = lam_grid("auto:80", train.cost)
    col = lambda pol: np.array([models.index(m) for m in pol.models_])  # noqa: E731
    pts_logs = curve(pol_logs, X, quality, cost, lams, col(pol_logs))
    pts_full = curve(pol_full, X, quality, cost, lams, col(pol_full))
    hull_logs = pareto_hull(pts_logs[:, 0], pts_logs[:, 1])
    hull_full = pareto_hull(pts_full[:, 0], pts_full[:, 1])
    lo = max(hull_logs[0, 0], hull_full[0, 0])
    hi = min(hull_logs[-1, 0], hull_full[-1, 0])
    grid = np.geomspace(lo, hi, 40) if hi > lo else np.array([lo])
    gaps = np.array([quality_at_cost(hull_full, c) - quality_at_cost(hull_logs, c)
                     for c in grid])
    rand_q, rand_c = float(quality.mean()), float(cost.mean())
    logs_at_rand = quality_at_cost(hull_logs, rand_c)
    full_at_rand = quality_at_cost(hull_full, rand_c)
    result = {
        "requests": args.requests, "policy": args.policy, "params": args.param,
        "tasks_given": args.tasks, "cluster_tasks": args.cluster_tasks,
        "logged_dataset": {"rows": len(logged), "models": logged.models,
                           "observed_cell_share": observed},
        "test_rows": len(test),
        "random": {"quality": rand_q, "usd_per_1k": 1000 * rand_c,
                   "from_logs_quality_at_same_spend": logs_at_rand,
                   "full_info_quality_at_same_spend": full_at_rand},
        "gap_at_same_spend": {"max": float(gaps.max()), "mean": float(gaps.mean()),
                              "usd_per_1k_range": [1000 * float(lo), 1000 * float(hi)],
                              "worst_at_usd_per_1k": 1000 * float(grid[int(gaps.argmax())])},
        "max_quality": {"from_logs": float(hull_logs[-1, 1]),
                        "full_info": float(hull_full[-1, 1])},
    }
    if getattr(pol_logs, "backoff_", None) is not None:
        # diagnostic: the same two artifacts with the kNN's distance backoff switched off
        pol_logs.backoff_ = pol_full.backoff_ = None
        h_l = pareto_hull(*curve(pol_logs, X, quality, cost, lams, col(pol_logs)).T)
        h_f = pareto_hull(*curve(pol_full, X, quality, cost, lams, col(pol_full)).T)
        g = np.array([quality_at_cost(h_f, c) - quality_at_cost(h_l, c) for c in grid])
        result["without_backoff"] = {"gap_max": float(g.max()), "gap_mean": float(g.mean()),
                                     "from_logs_quality_at_random_spend":
                                         quality_at_cost(h_l, rand_c)}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    _plot(out / "from_logs.png", hull_logs, hull_full, pts_logs, pts_full, rand_c, rand_q)
    print(f"plot: {out / 'from_logs.png'}")
    return 0


def _plot(path: Path, hull_logs, hull_full, pts_logs, pts_full, rand_c, rand_q) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(1000 * hull_full[:, 0], hull_full[:, 1], "-", color="C0",
            label="full information (every cell)")
    ax.plot(1000 * hull_logs[:, 0], hull_logs[:, 1], "-", color="C1",
            label="from logs (one model per request)")
    ax.scatter(1000 * pts_full[:, 0], pts_full[:, 1], s=6, color="C0", alpha=0.4)
    ax.scatter(1000 * pts_logs[:, 0], pts_logs[:, 1], s=6, color="C1", alpha=0.4)
    ax.scatter([1000 * rand_c], [rand_q], marker="x", color="k", label="random model")
    ax.set_xscale("log")
    ax.set_xlabel("$ per 1k queries (test split)")
    ax.set_ylabel("mean quality (test split)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
