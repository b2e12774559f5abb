"""Cold vs cached encoding of the RouterBench subset prompts (train + test).

    python benchmarks/bench_encode.py [--data ../shared/datasets/routerbench-subset]
        [--view question] [--views full,tail:1500,tail:1000,question]

Uses a throwaway cache directory (``--cache-dir`` keeps one). Prints: model load time,
cold encode time (every prompt through the model), cached encode time in a new Encoder
(no model load) and in the same Encoder. ``--views`` also compares text views: mean
pairwise cosine of the ARC prompts, and a k-NN router (train -> test) built on each view:
Brier score of the predicted per-model correctness and the accuracy of routing each test
prompt to the model with the highest predicted correctness. ``--throughput B1,B2`` times
encode throughput per backend instead; ``--gpu`` does so on CUDA ("no GPU" without one).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.encoding.encoder import Encoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "routerbench-subset"
TASKS = ("arc_challenge", "mbpp")


def _prompt_text(cell: str) -> str:
    parts = ast.literal_eval(cell)
    if isinstance(parts, str):
        return parts
    return "\n".join(dict.fromkeys(str(p) for p in parts))  # some rows repeat the prompt


def load(data: Path) -> dict[str, dict]:
    """{"train"/"test": {"prompts", "tasks", "quality" (n, m) NaN=missing, "models"}}."""
    import pandas as pd

    out = {}
    for split in ("train", "test"):
        prompts, tasks, quality, models = [], [], [], None
        for task in TASKS:
            df = pd.read_csv(data / f"{task}_{split}.csv")
            cols = [c for c in df.columns if "|" not in c and c not in (
                "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"
            ) and not c.startswith("Unnamed")]
            models = models or cols
            prompts += [_prompt_text(p) for p in df["prompt"]]
            tasks += [task] * len(df)
            quality.append(df[models].to_numpy(dtype=float))
        out[split] = {"prompts": prompts, "tasks": np.array(tasks),
                      "quality": np.vstack(quality), "models": models}
    return out


def bench_cache(prompts: list[str], view: str, batch_size: int, cache: str) -> None:
    enc = Encoder(text_view=view, cache_dir=cache, batch_size=batch_size)
    t0 = time.perf_counter()
    dim = enc.dim
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold = enc.encode(prompts, progress=True)
    t_cold = time.perf_counter() - t0
    print(f"view={view} prompts={len(prompts)} distinct viewed texts="
          f"{enc.stats.encoded} dim={dim} device={enc.device}")
    print(f"  model load                : {t_load:8.2f} s")
    print(f"  cold encode               : {t_cold:8.2f} s  "
          f"({len(prompts) / t_cold:8.1f} prompts/s)  stats={enc.stats.as_dict()}")
    t0 = time.perf_counter()
    fresh = Encoder(text_view=view, cache_dir=cache)
    warm = fresh.encode(prompts)
    t_new = time.perf_counter() - t0
    print(f"  cached, new Encoder       : {t_new:8.3f} s  "
          f"({len(prompts) / t_new:8.0f} prompts/s)  stats={fresh.stats.as_dict()} "
          f"model loaded={fresh.loaded}")
    enc.stats.reset()
    t0 = time.perf_counter()
    again = enc.encode(prompts)
    t_same = time.perf_counter() - t0
    print(f"  cached, same Encoder      : {t_same:8.3f} s  "
          f"({len(prompts) / t_same:8.0f} prompts/s)  stats={enc.stats.as_dict()}")
    t0 = time.perf_counter()
    for p in prompts[:200]:
        fresh.encode_one(p)
    t_one = (time.perf_counter() - t0) / 200
    print(f"  cached encode_one         : {t_one * 1e3:8.3f} ms/prompt")
    print(f"  speed-up cold/cached(new) : {t_cold / t_new:8.1f}x")
    print(f"  max |cold - cached|       : {np.abs(cold - warm).max():.2e}, "
          f"{np.abs(cold - again).max():.2e}")
    size = sum(p.stat().st_size for p in Path(cache).glob("embeddings.sqlite*"))
    print(f"  cache size on disk        : {size / 2**20:8.2f} MiB")


def knn_router(xtr, qtr, xte, k=10):
    """Mean correctness of the k nearest train prompts (cosine), per model."""
    sims = xte @ xtr.T
    nn = np.argpartition(-sims, k, axis=1)[:, :k]
    q = qtr[nn]  # (n_te, k, m)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.nanmean(q, axis=1), nan=0.5)


def compare_views(
    data: dict, views: list[str], batch_size: int, cache: str, ks: list[int]
) -> None:
    tr, te = data["train"], data["test"]
    arc = np.concatenate([tr["tasks"], te["tasks"]]) == "arc_challenge"
    arc_te = te["tasks"] == "arc_challenge"
    prompts = tr["prompts"] + te["prompts"]
    ytr, yte = tr["quality"], te["quality"]
    yte0 = np.nan_to_num(yte, nan=0.0)

    def row(label: str, secs: str, cos: str, pred: np.ndarray) -> None:
        obs = ~np.isnan(yte)
        brier = float(np.mean((pred[obs] - yte[obs]) ** 2))
        obs_arc = obs & arc_te[:, None]
        brier_arc = float(np.mean((pred[obs_arc] - yte[obs_arc]) ** 2))
        acc = yte0[np.arange(len(pred)), pred.argmax(axis=1)]
        print(f"  {label:<16} {secs:>9} {cos:>8} {brier:7.4f} {brier_arc:9.4f} "
              f"{acc.mean():9.3f} {acc[arc_te].mean():8.3f}")

    print("\nview comparison: ARC mean pairwise cosine; k-NN router train -> test "
          f"({len(tr['prompts'])} -> {len(te['prompts'])} prompts, ARC+MBPP): Brier of the "
          "predicted per-model correctness, accuracy of routing to the predicted best model")
    print(f"  {'view / k':<16} {'encode s':>9} {'ARC cos':>8} {'Brier':>7} {'Brier ARC':>9} "
          f"{'route acc':>9} {'ARC acc':>8}")
    # baseline without embeddings: each task's mean correctness per model on train
    row("(task mean)", "-", "-",
        np.vstack([np.nanmean(ytr[tr["tasks"] == t], axis=0) for t in te["tasks"]]))
    for view in views:
        enc = Encoder(text_view=view, cache_dir=cache, batch_size=batch_size)
        t0 = time.perf_counter()
        x = enc.encode(prompts, progress=True)
        secs = time.perf_counter() - t0
        xa = x[arc]
        g = xa @ xa.T
        n = len(xa)
        mean_cos = (g.sum() - np.trace(g)) / (n * (n - 1))
        xtr, xte = x[: len(tr["prompts"])], x[len(tr["prompts"]) :]
        for i, k in enumerate(ks):
            row(f"{view} / {k}", f"{secs:.1f}" if i == 0 else "", f"{mean_cos:.3f}"
                if i == 0 else "", knn_router(xtr, ytr, xte, k))


def throughput(prompts: list[str], view: str, backends: list[str], device: str,
               batch_size: int) -> None:
    """Texts/s of each backend on ``device`` over ``prompts`` (cache off), one warm pass."""
    from router.textview import parse_view

    v = parse_view(view)
    texts = [v(p) for p in prompts]
    print(f"\nencode throughput on {device}, {len(texts)} prompts, batch {batch_size}")
    for name in backends:
        if device.startswith("cuda") and name == "onnx-int8":
            continue  # int8 kernels are CPU kernels
        enc = Encoder(backend=name, device=device, use_cache=False, batch_size=batch_size,
                      text_view="full")
        enc.encode(texts[:batch_size])  # load + warm up
        t0 = time.perf_counter()
        enc.encode(texts)
        secs = time.perf_counter() - t0
        print(f"  {name:10s} on {enc.device}: {len(texts) / secs:8.1f} texts/s "
              f"({secs:.1f} s; load average {os.getloadavg()[0]:.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--view", default="question", help="text view for the cache benchmark")
    ap.add_argument("--views", default="", help="comma-separated views to compare, e.g. "
                    "full,tail:1500,tail:1000,question")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cache-dir", default=None,
                    help="keep the cache here (default: a throwaway directory); with a "
                    "cache that already holds the prompts the 'cold' figures are not cold")
    ap.add_argument("--k", default="10,50", help="neighbour counts for the view comparison")
    ap.add_argument("--throughput", default="",
                    help="also time encode throughput of these backends, e.g. "
                         "torch,onnx,onnx-int8")
    ap.add_argument("--gpu", action="store_true",
                    help="time --throughput on CUDA (torch fp16, ONNX CUDA provider); "
                         "prints 'no GPU' where there is none")
    args = ap.parse_args()
    device = "cpu"
    if args.gpu:
        from router.encoding.encoder import cuda_present
        from router.encoding.select import ort_has_cuda

        if not (cuda_present() or ort_has_cuda()):
            print("bench_encode: no GPU: torch.cuda.is_available() is False and onnxruntime "
                  "has no CUDAExecutionProvider; GPU figures not measured")
            return 0
        device = "cuda"
    if not args.data.is_dir():
        print(f"bench_encode: error: data directory {args.data} not found", file=sys.stderr)
        return 2
    data = load(args.data)
    prompts = data["train"]["prompts"] + data["test"]["prompts"]
    ks = [int(k) for k in args.k.split(",")]
    if args.throughput or args.gpu:
        names = [b.strip() for b in (args.throughput or "torch,onnx").split(",") if b.strip()]
        throughput(prompts, args.view, names, device, args.batch_size)
        return 0
    with tempfile.TemporaryDirectory(prefix="costroute-bench-") as tmp:
        cache = args.cache_dir or tmp
        # the view comparison reuses the cache: the benchmarked view costs nothing there
        bench_cache(prompts, args.view, args.batch_size, cache)
        if args.views:
            views = [v.strip() for v in args.views.split(",") if v.strip()]
            compare_views(data, views, args.batch_size, cache, ks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
