"""Vector index choice by size: exact flat vs HNSW vs IVF(-Flat / -SQ8) on d=384 vectors.

    python benchmarks/bench_index.py [--sizes 100000,1000000] [--data clustered|uniform]
        [--queries 200] [--k 10] [--kinds flat,hnsw,ivf,ivfsq8] [--json out.json]

Synthetic L2-normalised vectors (inner product = cosine), like sentence embeddings:

* ``clustered`` (default): shaped like real prompt embeddings (shared mean direction,
  decaying variance spectrum, 2,000 clusters; see :class:`Generator`), which are far from
  uniform;
* ``uniform``: isotropic random directions, the worst case for every approximate index.

Queries are fresh draws from the same distribution. For each index: build time, size in
memory (serialised bytes), and over a sweep of its search parameter (HNSW efSearch, IVF
nprobe) the single-query p50/p99 latency (one query at a time, one thread, as on the route
hot path) and recall@k against exact search. The cheapest setting meeting the targets
(recall@10 >= 0.95 and p50 <= 2 ms) is reported per size and index.

Builds use all cores (``--threads``); a 1e6 HNSW build takes minutes on 2 cores.
``--wrapper`` also times :class:`router.index.VectorIndex` (``auto``) as shipped, and its
start-up from a persisted index (save, read back, checksum check), as a kNN artifact
loads it. ``--gpu`` times the wrapper on FAISS GPUs ("no GPU" where there are none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECALL_TARGET = 0.95
P50_TARGET_MS = 2.0
HNSW_EF = (16, 32, 64, 128, 256)
IVF_NPROBE = (4, 8, 16, 32, 64, 128)


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} CPUs, faiss {faiss.__version__}, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


# ---- data -------------------------------------------------------------------------------
class Generator:
    """Unit vectors shaped like sentence embeddings (see ``--data``).

    ``clustered``: a shared mean direction (mean pairwise cosine ~0.2), a power-law
    variance spectrum in a random basis (~85% of the variance in the first 150 of 384
    directions, like all-MiniLM-L6-v2 embeddings of RouterBench prompts, 90% in 153), and
    2,000 cluster centres with members spread around them. ``uniform``: isotropic.
    """

    def __init__(self, dim: int, kind: str, seed: int = 12345, n_centres: int = 2000) -> None:
        self.dim, self.kind = dim, kind
        if kind == "clustered":
            rng = np.random.default_rng(seed)
            basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
            scale = 1.0 / np.sqrt(np.arange(1, dim + 1))  # variance ~ 1/i
            self.mix = (scale[:, None] * basis.T).astype(np.float32)  # z @ mix
            total = float((scale**2).sum())
            mean = rng.standard_normal(dim)
            self.mean = (mean / np.linalg.norm(mean) * np.sqrt(0.235 * total)).astype(np.float32)
            self.centres = rng.standard_normal((n_centres, dim)).astype(np.float32) @ self.mix

    def sample(self, n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
        """(n, dim) float32 unit vectors, generated in chunks to bound temporary memory."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            x = rng.standard_normal((m, self.dim), dtype=np.float32)
            if self.kind == "clustered":
                x = x @ self.mix
                x *= np.float32(0.6)  # spread of members around their centre
                x += self.centres[rng.integers(0, len(self.centres), m)]
                x += self.mean
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start : start + m] = x
        return out


# ---- indexes ----------------------------------------------------------------------------
def build(kind: str, xb: np.ndarray, args) -> tuple[Any, float, dict[str, Any]]:
    n, dim = xb.shape
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(xb)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.add(xb)
        info = {"M": args.hnsw_m, "efConstruction": args.ef_construction}
    elif kind in ("ivf", "ivfsq8"):
        nlist = args.nlist or ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
        index.own_fields = True
        quantizer.this.disown()
        train_n = min(n, args.train_per_list * nlist)
        sample = xb[np.random.default_rng(0).choice(n, train_n, replace=False)]
        index.cp.niter = args.kmeans_iter
        t1 = time.perf_counter()
        index.train(sample)
        info = {"nlist": nlist, "train_points": train_n, "kmeans_iter": args.kmeans_iter,
                "train_s": time.perf_counter() - t1}
        index.add(xb)
    else:
        raise ValueError(kind)
    return index, time.perf_counter() - t0, info


def ivf_nlist(n: int) -> int:
    """Lists for IVF: ~4 sqrt(n), a power of two, at least 39 points per list."""
    target = 4 * np.sqrt(n)
    nlist = int(2 ** round(np.log2(target)))
    return max(1, min(nlist, n // 39))


def index_bytes(index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def search_params(kind: str, value: int):
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=value)
    if kind in ("ivf", "ivfsq8"):
        return faiss.SearchParametersIVF(nprobe=value)
    return None


def time_queries(index, xq: np.ndarray, k: int, params) -> tuple[np.ndarray, list[float]]:
    faiss.omp_set_num_threads(1)
    ids = np.empty((len(xq), k), dtype=np.int64)
    lat = []
    for _ in range(3):  # warm-up
        index.search(xq[:1], k, params=params) if params else index.search(xq[:1], k)
    for i in range(len(xq)):
        q = xq[i : i + 1]
        t0 = time.perf_counter()
        _, row = index.search(q, k, params=params) if params else index.search(q, k)
        lat.append(time.perf_counter() - t0)
        ids[i] = row[0]
    return ids, lat


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


# ---- main -------------------------------------------------------------------------------
def run_size(n: int, args) -> dict[str, Any]:
    dim = args.dim
    gen = Generator(dim, args.data)
    t0 = time.perf_counter()
    xb = gen.sample(n, seed=1)
    xq = gen.sample(args.queries, seed=2)
    print(f"\n== n={n:,} d={dim} data={args.data} (generated in {time.perf_counter() - t0:.1f} s, "
          f"{xb.nbytes / 2**20:.0f} MiB raw)")
    faiss.omp_set_num_threads(args.threads)
    exact = faiss.IndexFlatIP(dim)
    exact.add(xb)
    t0 = time.perf_counter()
    truth_d, truth = exact.search(xq, args.k)
    print(f"   exact ground truth for {len(xq)} queries: {time.perf_counter() - t0:.1f} s; "
          f"mean cosine of the 1st / {args.k}th neighbour {truth_d[:, 0].mean():.3f} / "
          f"{truth_d[:, -1].mean():.3f}")
    out: dict[str, Any] = {"n": n, "dim": dim, "data": args.data, "indexes": {}}
    print(f"   {'index':8s} {'param':>12} {'build s':>8} {'MiB':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'recall@' + str(args.k):>9}")
    for kind in args.kinds:
        faiss.omp_set_num_threads(args.threads)
        if kind == "flat":
            index, secs, info = exact, 0.0, {}
        else:
            index, secs, info = build(kind, xb, args)
        size = index_bytes(index) / 2**20
        sweep = [0] if kind == "flat" else (HNSW_EF if kind == "hnsw" else IVF_NPROBE)
        rows = []
        for value in sweep:
            if kind in ("ivf", "ivfsq8") and value > info["nlist"]:
                continue
            ids, lat = time_queries(index, xq, args.k, search_params(kind, value))
            ms = np.asarray(lat) * 1000
            row = {"param": value, "p50_ms": float(np.percentile(ms, 50)),
                   "p99_ms": float(np.percentile(ms, 99)), "recall": recall(ids, truth)}
            rows.append(row)
            label = "-" if kind == "flat" else (
                f"ef={value}" if kind == "hnsw" else f"nprobe={value}")
            print(f"   {kind:8s} {label:>12} {secs:8.1f} {size:7.0f} {row['p50_ms']:8.3f} "
                  f"{row['p99_ms']:8.3f} {row['recall']:9.3f}")
        ok = [r for r in rows if r["recall"] >= RECALL_TARGET and r["p50_ms"] <= P50_TARGET_MS]
        best = min(ok, key=lambda r: r["p50_ms"]) if ok else None
        out["indexes"][kind] = {"build_s": secs, "mib": size, **info, "sweep": rows,
                                "meets_target": best}
        if best:
            print(f"   -> {kind}: meets recall>={RECALL_TARGET} & p50<={P50_TARGET_MS} ms at "
                  f"param {best['param']} (p50 {best['p50_ms']:.3f} ms, recall {best['recall']:.3f})")
        else:
            print(f"   -> {kind}: no setting meets recall>={RECALL_TARGET} & p50<={P50_TARGET_MS} ms")
        if index is not exact:
            del index
    if args.wrapper:
        out["vector_index_auto"] = bench_wrapper(xb, xq, truth, args)
    return out


def bench_wrapper(xb, xq, truth, args) -> dict[str, Any]:
    """router.index.VectorIndex(kind="auto") as shipped: its build time, p50 and recall."""
    from router.index import VectorIndex

    t0 = time.perf_counter()
    vi = VectorIndex(xb.shape[1], kind="auto", threads=args.threads)
    vi.add(xb)
    secs = time.perf_counter() - t0
    lat, ids = [], []
    for i in range(len(xq)):
        t1 = time.perf_counter()
        _, row = vi.search(xq[i], args.k)
        lat.append(time.perf_counter() - t1)
        ids.append(row[0])
    ms = np.asarray(lat) * 1000
    r = {"built_kind": vi.built_kind, "on_gpu": vi.on_gpu, "build_s": secs,
         "p50_ms": float(np.percentile(ms, 50)),
         "p99_ms": float(np.percentile(ms, 99)), "recall": recall(np.array(ids), truth)}
    print(f"   VectorIndex(kind='auto') -> {r['built_kind']}{' on GPU' if vi.on_gpu else ''}: "
          f"build {secs:.1f} s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, "
          f"recall@{args.k} {r['recall']:.3f}")
    r.update(persisted_load(vi, xq, args.k))
    return r


def persisted_load(vi, xq: np.ndarray, k: int) -> dict[str, Any]:
    """Start-up cost with the index saved in the artifact: read it back and verify it."""
    import tempfile

    from router.index import VectorIndex

    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        path = Path(tmp) / "index.faiss"
        t0 = time.perf_counter()
        checksum = vi.checksum()
        vi.save(path)
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = VectorIndex.load(path)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = loaded.checksum() == checksum
        check_s = time.perf_counter() - t0
        same = bool((loaded.search(xq[:20], k)[1] == vi.search(xq[:20], k)[1]).all())
        mib = path.stat().st_size / 2**20
    print(f"   persisted ({mib:.0f} MiB file): save {save_s:.1f} s; load {read_s:.1f} s + "
          f"checksum check {check_s:.1f} s = start {read_s + check_s:.1f} s "
          f"(checksum ok {ok}, same neighbours {same})")
    return {"save_s": save_s, "load_s": read_s, "check_s": check_s, "checksum_ok": ok,
            "same_neighbours": same, "file_mib": mib}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--data", choices=("clustered", "uniform"), default="clustered")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--kinds", default="flat,hnsw,ivf,ivfsq8")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4 sqrt(n))")
    ap.add_argument("--train-per-list", type=int, default=40,
                    help="k-means training points per IVF list")
    ap.add_argument("--kmeans-iter", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--wrapper", action="store_true",
                    help="also time router.index.VectorIndex(kind='auto') as shipped")
    ap.add_argument("--gpu", action="store_true",
                    help="time VectorIndex on the FAISS GPU(s) (flat, then IVF by size); "
                         "prints 'no GPU' where FAISS has none")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.gpu:
        if faiss.get_num_gpus() == 0:
            print("bench_index: no GPU: this FAISS build sees 0 GPUs; GPU figures not measured")
            return 0
        args.kinds, args.wrapper = "flat", True  # the wrapper goes to the GPU by itself
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in args.kinds if k not in ("flat", "hnsw", "ivf", "ivfsq8")]
    if bad:
        print(f"bench_index: error: unknown index kind(s) {bad}", file=sys.stderr)
        return 2
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print(f"bench_index: error: --sizes {args.sizes!r} is not a list of numbers",
              file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    report = {"machine": machine(), "results": [run_size(n, args) for n in sizes]}
    print(f"\nmachine after run: {machine()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
