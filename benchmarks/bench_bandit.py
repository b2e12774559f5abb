"""LinUCB bandit and budget knapsack: per-outcome update cost, decision cost, and the
online replay of the RouterBench subset at 10% / 25% / 50% of always-gpt-4 spend.

    python benchmarks/bench_bandit.py [--data ../shared/datasets/routerbench-subset]
        [--n 2000] [--seeds 0,1,2,3,4] [--params JSON] [--skip-replay] [--skip-redis]
        [--out DIR]

Timings use synthetic features (11 arms); Redis figures use a private redis-server on a
free loopback port (one round trip per call, same machine). ``d`` counts the bias
feature: 385 = the 384-d MiniLM embedding, 65 = a 64-d projection.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.linucb import LinUCBPolicy  # noqa: E402
from router.budget import BudgetSpec, EmbeddedLedger, OnlineKnapsack, RedisLedger  # noqa: E402
from router.state.bandit_store import EmbeddedBanditStore, RedisBanditStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "routerbench-subset"
M = 11


class LocalRedis:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def fitted_policy(d_embed: int, proj_dim: int | None, n_train: int = 600) -> LinUCBPolicy:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_train, d_embed)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    q = (rng.random((n_train, M)) < 0.6).astype(float)
    c = np.tile(np.geomspace(1e-5, 1e-2, M), (n_train, 1))
    return LinUCBPolicy(alpha=0.1, proj_dim=proj_dim).fit(X, q, c, [f"m{i}" for i in range(M)])


def timed_us(calls) -> float:
    """Mean microseconds per call of an iterable of zero-argument callables."""
    total, n = 0.0, 0
    for call in calls:
        t0 = time.perf_counter()
        call()
        total += time.perf_counter() - t0
        n += 1
    return 1e6 * total / max(n, 1)


def bench_updates(n: int, redis: LocalRedis | None) -> list[dict]:
    rows = []
    rng = np.random.default_rng(1)
    for proj in (None, 64):
        policy = fitted_policy(384, proj)
        prior = policy.bandit_state()
        d = prior.dim
        arms = rng.integers(0, M, n)
        Z = policy.features(rng.standard_normal((n, 384)).astype(np.float32))
        tmp = Path(tempfile.mkdtemp(prefix="bench-bandit-"))
        stores = {
            "embedded (memory)": EmbeddedBanditStore(),
            "embedded (file log)": EmbeddedBanditStore(tmp / "b.npz", snapshot_every=None),
        }
        if redis is not None:
            stores["redis"] = RedisBanditStore(redis.url, f"bench:{d}", compact_every=None)
        for label, store in stores.items():
            store.initialize(prior)
            upd = timed_us(
                (lambda s=store, a=int(arms[i]), z=Z[i]: s.update(a, z, 1.0, 1e-3))
                for i in range(n)
            )
            row = {"store": label, "d": d, "update_us": upd}
            extra = ""
            if label == "redis":
                follower = RedisBanditStore(redis.url, f"bench:{d}")  # another replica
                t0 = time.perf_counter()
                with follower.read():  # folds the n outcomes it has not seen
                    pass
                row["fold_us_per_outcome"] = 1e6 * (time.perf_counter() - t0) / n
                extra += f"  replica fold {row['fold_us_per_outcome']:.1f} us/outcome"
            if label != "embedded (memory)":
                t0 = time.perf_counter()
                store.snapshot()
                row["snapshot_ms"] = 1e3 * (time.perf_counter() - t0)
                extra += f"  snapshot {row['snapshot_ms']:.1f} ms"
            rows.append(row)
            print(f"update  d={d:<4} {label:<20} {upd:8.1f} us/outcome{extra}")
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def bench_decisions(n: int, redis: LocalRedis | None) -> list[dict]:
    rows = []
    rng = np.random.default_rng(2)
    for proj in (None, 64):
        policy = fitted_policy(384, proj)
        prior = policy.bandit_state()
        d = prior.dim
        X = rng.standard_normal((n, 384)).astype(np.float32)
        Z = policy.features(X)
        configs = [("embedded", EmbeddedBanditStore())]
        if redis is not None:
            configs.append(("redis", RedisBanditStore(redis.url, f"bench:dec:{d}")))
        for label, store in configs:
            policy.attach_store(store)
            us = timed_us((lambda p=policy, x=X[i]: p.route_one(x, lam=10.0)) for i in range(n))
            rows.append({"what": "route_one", "store": label, "d": d, "us": us})
            print(f"decide  d={d:<4} {label:<20} {us:8.1f} us/decision (predict + choose)")
            if label == "redis":
                # each decision follows another replica's update: version check + one fold
                other = RedisBanditStore(redis.url, f"bench:dec:{d}")
                total = 0.0
                for i in range(n):
                    other.update(i % M, Z[i], 1.0, 1e-3)
                    t0 = time.perf_counter()
                    policy.route_one(X[i], lam=10.0)
                    total += time.perf_counter() - t0
                us = 1e6 * total / n
                rows.append({"what": "route_one after a remote update", "store": label,
                             "d": d, "us": us})
                print(f"decide  d={d:<4} {'redis (+1 fold)':<20} {us:8.1f} us/decision")
    q = rng.uniform(0, 1, (n, M))
    c = np.geomspace(1e-5, 1e-2, M)
    ledgers = [("embedded", EmbeddedLedger())]
    if redis is not None:
        ledgers.append(("redis", RedisLedger(redis.url, "bench:budget")))
    for label, ledger in ledgers:
        ks = OnlineKnapsack(ledger, BudgetSpec(1e9, horizon=1e9, n_bins=10), L=10.0, U=1e5)

        def step(ks=ks, qi=None):
            dec = ks.decide(qi, c)
            ks.commit(dec, c[dec.index])

        us = timed_us((lambda qi=q[i], f=step: f(qi=qi)) for i in range(n))
        rows.append({"what": "knapsack decide+commit", "store": label, "us": us})
        print(f"budget  {label:<27} {us:8.1f} us/query (decide + reserve + commit)")
    return rows


# ---- replay on the RouterBench subset -------------------------------------------------------
def _load_split(data: Path):
    try:
        from router.datasets import load_split

        return load_split(str(data))
    except ImportError:
        pass
    import pandas as pd

    from router.dataset import DatasetSplit, RoutingDataset

    parts = {}
    for split in ("train", "test"):
        prompts, tasks, quality, cost, models = [], [], [], [], None
        for task in ("arc_challenge", "mbpp"):
            df = pd.read_csv(data / f"{task}_{split}.csv")
            if models is None:
                models = [c[:-len("|total_cost")] for c in df.columns if c.endswith("|total_cost")]
            for cell in df["prompt"]:
                p = ast.literal_eval(cell)
                prompts.append(p if isinstance(p, str) else "\n".join(dict.fromkeys(map(str, p))))
            tasks += list(df["eval_name"].astype(str))
            quality.append(df[models].to_numpy(float))
            cost.append(df[[f"{m}|total_cost" for m in models]].to_numpy(float))
        parts[split] = RoutingDataset(f"routerbench-subset-{split}", prompts, tasks, models,
                                      np.vstack(quality), np.vstack(cost))
    return DatasetSplit(parts["train"], parts["test"])


def bench_replay(data: Path, out: Path | None, params: dict, seeds: list[int],
                 prior_tasks: list[str] | None = None) -> dict:
    """The replay at the first seed (with full-information comparisons and plots), then
    mean and spread over all ``seeds`` (stream orders) for the bandit variants.

    ``prior_tasks`` fits the prior on those train tasks only (a distribution shift: the
    stream then brings tasks the prior never saw)."""
    from eval.online import run_online, summary_lines
    from router.encoding.encoder import Encoder, embed_dataset

    split = _load_split(data)
    t0 = time.perf_counter()
    enc = Encoder()
    X_train = embed_dataset(split.train, enc, progress=True)
    X_test = embed_dataset(split.test, enc, progress=True)
    print(f"embeddings ({enc.model_id}): {time.perf_counter() - t0:.1f} s")
    train = split.train
    if prior_tasks:
        keep = np.flatnonzero(np.isin(np.asarray(train.tasks), prior_tasks))
        if keep.size == 0:
            raise SystemExit(f"no train rows with tasks {prior_tasks}; tasks: {train.task_names}")
        train, X_train = train.subset(keep), X_train[keep]
        print(f"prior fitted on tasks {prior_tasks} only ({len(train)} rows)")
    ref = "gpt-4-1106-preview" if "gpt-4-1106-preview" in split.train.models else None
    kw = dict(train=train, test=split.test, X_train=X_train, X_test=X_test,
              reference=ref, params=params, progress=True)
    runs = [run_online(**kw, seed=seeds[0], out=out, plots=out is not None)]
    for line in summary_lines(runs[0]):
        print(line)
    runs += [run_online(**kw, seed=s, compare=False, plots=False) for s in seeds[1:]]
    spread: dict = {}
    if len(seeds) > 1:
        print(f"over {len(seeds)} stream orders (seeds {seeds}): mean +- sd")
    for b, entry in enumerate(runs[0]["budgets"]):
        for name in entry["runs"]:
            q = np.array([r["budgets"][b]["runs"][name]["quality"] for r in runs])
            f = np.array([r["budgets"][b]["runs"][name]["spend_fraction"] for r in runs])
            spread[f"{entry['fraction']}/{name}"] = {
                "quality_mean": float(q.mean()), "quality_sd": float(q.std(ddof=1)) if len(q) > 1
                else 0.0, "spend_fraction_mean": float(f.mean()), "over_budget": any(
                    r["budgets"][b]["runs"][name]["over_budget"] for r in runs)}
            if len(seeds) > 1:
                sd = spread[f"{entry['fraction']}/{name}"]["quality_sd"]
                print(f"  {entry['fraction']:.0%} {name:<12} quality {q.mean():.3f} +- {sd:.3f}"
                      f"  spent {f.mean():.0%} of budget")
    return {"first": runs[0], "seeds": seeds, "spread": spread}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=2000, help="timed calls per figure")
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--params", default="{}", help="LinUCB parameters for the replay (JSON)")
    ap.add_argument("--seeds", default="0", help="stream orders for the replay, e.g. 0,1,2,3,4")
    ap.add_argument("--prior-tasks", help="fit the prior on these train tasks only (comma list)")
    ap.add_argument("--out", type=Path, help="write bench_bandit.json and the replay plots here")
    args = ap.parse_args()
    redis = None if args.skip_redis or shutil.which("redis-server") is None else LocalRedis()
    results: dict = {}
    try:
        results["updates"] = bench_updates(args.n, redis)
        results["decisions"] = bench_decisions(args.n // 2, redis)
    finally:
        if redis is not None:
            redis.stop()
    if not args.skip_replay:
        if args.data.is_dir():
            seeds = [int(x) for x in args.seeds.split(",")]
            prior_tasks = args.prior_tasks.split(",") if args.prior_tasks else None
            results["replay"] = bench_replay(args.data, args.out, json.loads(args.params), seeds,
                                             prior_tasks)
        else:
            print(f"replay skipped: {args.data} not found")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_bandit.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
