"""Resident memory of the serving pieces: encoder, a 1e6-vector index, and `router serve`.

    python benchmarks/bench_memory.py [--n 1000000] [--encoders torch,onnx,onnx-int8]
        [--index-kinds flat,ivfsq8,hnsw] [--no-serve] [--workdir DIR] [--json out.json]

Every figure comes from a fresh process (``VmRSS`` now and ``VmHWM`` peak, from
``/proc/<pid>/status``):

* ``python + gateway imports``: numpy, faiss, ``router.proxy.app`` (FastAPI, litellm, ...);
* ``+ encoder <backend>``: the default all-MiniLM-L6-v2 encoder loaded and run once;
* ``+ index <kind>``: a saved FAISS index of ``--n`` synthetic d=384 vectors read back
  and searched once (built once into ``--workdir``; a 1e6 HNSW build takes many minutes
  on 2 cores);
* ``router serve``: the real gateway process (``python -m router serve``) with a kNN
  artifact holding ``--n`` prompts (synthetic embeddings, 3 models; its HNSW index is
  built once and saved in the artifact) and the default encoder (``--serve-encoder``,
  default ``auto``: ONNX int8 on CPU), measured when ready and after one routed chat
  request (the backends point at a closed local port: the request fails over, but the
  route decision happened).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO)}
DIM = 384
MODELS = ("model-a", "model-b", "model-c")


def proc_mem(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


# ---- stages, each run in a child process --------------------------------------------------
def stage(spec: dict[str, Any]) -> dict[str, Any]:
    import faiss  # noqa: F401

    import router.proxy.app  # noqa: F401  (the gateway's imports)

    result: dict[str, Any] = {"base": proc_mem()}
    if spec.get("encoder"):
        from router.encoding.encoder import Encoder

        name = spec["encoder"]
        enc = Encoder(backend="torch", use_cache=False) if name == "torch" else None
        if enc is None:
            from router.encoding.encoder import register_backend
            from router.encoding.onnx import OnnxBackend, OnnxInt8Backend

            register_backend(name, OnnxInt8Backend if name == "onnx-int8" else OnnxBackend)
            enc = Encoder(backend=name, use_cache=False)
        enc.encode_one("warm up the encoder")
        result["encoder"] = proc_mem()
    if spec.get("index"):
        import faiss

        index = faiss.read_index(spec["index"])
        index.search(np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM), 10)
        result["index"] = proc_mem()
        result["ntotal"] = int(index.ntotal)
    return result


def run_stage(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--stage", json.dumps(spec)], env=ENV,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"stage {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- fixtures built once ------------------------------------------------------------------
def vectors(n: int, workdir: Path) -> np.ndarray:
    from bench_index import Generator

    f = workdir / f"vectors-{n}.npy"
    if not f.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        np.save(f, Generator(DIM, "clustered").sample(n, seed=1))
    return np.load(f, mmap_mode="r")


def index_file(kind: str, n: int, workdir: Path) -> Path:
    import faiss

    f = workdir / f"index-{kind}-{n}.faiss"
    if f.is_file():
        return f
    x = np.ascontiguousarray(vectors(n, workdir))
    t0 = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(DIM)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
    elif kind in ("ivf", "ivfsq8"):
        nlist = 4096 if n >= 500_000 else 1024
        q = faiss.IndexFlatIP(DIM)
        index = (faiss.IndexIVFFlat(q, DIM, nlist, faiss.METRIC_INNER_PRODUCT) if kind == "ivf"
                 else faiss.IndexIVFScalarQuantizer(q, DIM, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                    faiss.METRIC_INNER_PRODUCT))
        index.own_fields = True
        q.this.disown()
        index.cp.niter = 10
        index.train(x[np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)])
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(x)
    tmp = f.with_suffix(".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, f)
    print(f"  built {kind} index of {n:,} vectors in {time.perf_counter() - t0:.1f} s -> {f}")
    return f


def knn_artifact(n: int, workdir: Path) -> Path:
    """A kNN artifact over ``n`` synthetic prompts (fitted small, then given all n rows)."""
    from policies.knn import KNNPolicy
    from router.encoding.encoder import Encoder

    out = workdir / f"knn-{n}"
    if (out / "config.json").is_file():
        return out
    x = np.ascontiguousarray(vectors(n, workdir), dtype=np.float32)
    rng = np.random.default_rng(0)
    m = len(MODELS)
    # model j is good where the first coordinates favour it; costs differ per model
    quality = (rng.random((n, m)) < 0.5 + 0.4 * np.tanh(4 * x[:, :m])).astype(np.float64)
    cost = np.tile(np.array([1e-4, 1e-3, 1e-2]), (n, 1))
    tasks = np.where(x[:, m] > 0, "task-a", "task-b")
    small = slice(0, 3000)
    policy = KNNPolicy(k=20, alpha=5.0, temperature=0.05)
    policy.fit(x[small], quality[small], cost[small], list(MODELS), tasks=list(tasks[small]))
    policy.X_, policy.quality_, policy.cost_ = x, quality, cost
    policy.codes_ = (tasks == "task-b").astype(np.int64)
    policy.save(out, meta={"encoder": Encoder().config(), "n_train": n})
    return out


# ---- router serve -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_rss(artifact: Path, workdir: Path, timeout: float = 900.0,
              encoder_backend: str = "auto") -> dict[str, Any]:
    import httpx

    dead = free_port()  # nothing listens here: backend calls fail fast
    cfg = {
        "model_list": [{"model_name": mname, "litellm_params": {
            "model": f"openai/{mname}", "api_base": f"http://127.0.0.1:{dead}/v1",
            "api_key": "sk-none", "timeout": 5}} for mname in MODELS],
        "routing": {"artifact": str(artifact), "lam": 0.0, "max_fallback_tries": 0,
                    "encoder_backend": encoder_backend},
        "state": {"dir": str(workdir / "state")},
    }
    cfg_path = workdir / "serve.json.yaml"
    cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(cfg_path),
                             "--port", str(port), "--log-level", "warning"], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"router serve exited: {proc.stdout.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("router serve did not become ready")
            time.sleep(1)
        ready_s = time.perf_counter() - t0
        idle = proc_mem(proc.pid)
        body = {"model": "router-auto",
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        t1 = time.perf_counter()
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)
        first_s = time.perf_counter() - t1
        after = proc_mem(proc.pid)
        return {"ready_s": ready_s, "idle": idle, "after_first_request": after,
                "first_request_s": first_s, "first_request_status": r.status_code}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- main ---------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--encoders", default="torch,onnx,onnx-int8")
    ap.add_argument("--index-kinds", default="flat,ivfsq8,hnsw")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--serve-encoder", default="auto",
                    choices=["auto", "torch", "onnx", "onnx-int8"],
                    help="routing.encoder_backend of the measured `router serve`")
    ap.add_argument("--workdir", type=Path,
                    default=Path.home() / ".cache" / "costroute" / "bench_memory")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(json.loads(args.stage))))
        return 0
    encoders = [e for e in args.encoders.split(",") if e]
    kinds = [k for k in args.index_kinds.split(",") if k]
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; "
          f"n={args.n:,} vectors of d={DIM} (raw float32 {args.n * DIM * 4 / 2**20:.0f} MiB)")
    report: dict[str, Any] = {"n": args.n, "stages": {}}

    def show(label: str, mem: dict[str, float], extra: str = "") -> None:
        print(f"  {label:44s} RSS {mem['VmRSS']:8.0f} MiB   peak {mem['VmHWM']:8.0f} MiB  {extra}")

    base = run_stage({})
    show("python + gateway imports", base["base"])
    report["stages"]["base"] = base
    for name in encoders:
        r = run_stage({"encoder": name})
        show(f"+ encoder {name}", r["encoder"],
             f"(encoder adds {r['encoder']['VmRSS'] - r['base']['VmRSS']:.0f} MiB)")
        report["stages"][f"encoder:{name}"] = r
    for kind in kinds:
        f = index_file(kind, args.n, args.workdir)
        r = run_stage({"index": str(f)})
        show(f"+ index {kind} ({r['ntotal']:,} vectors)", r["index"],
             f"(index adds {r['index']['VmRSS'] - r['base']['VmRSS']:.0f} MiB; "
             f"file {f.stat().st_size / 2**20:.0f} MiB)")
        report["stages"][f"index:{kind}"] = r
    if encoders and kinds:
        r = run_stage({"encoder": encoders[0], "index": str(index_file(kinds[0], args.n,
                                                                          args.workdir))})
        show(f"+ encoder {encoders[0]} + index {kinds[0]}", r["index"])
        report["stages"]["encoder+index"] = r
    if not args.no_serve:
        artifact = knn_artifact(args.n, args.workdir)
        r = serve_rss(artifact, args.workdir, encoder_backend=args.serve_encoder)
        print(f"  router serve, kNN artifact with {args.n:,} prompts, encoder "
              f"{args.serve_encoder} (ready in {r['ready_s']:.0f} s; load average "
              f"{os.getloadavg()[0]:.2f}):")
        show("    idle (ready)", r["idle"])
        show("    after the first routed request", r["after_first_request"],
             f"(first request {r['first_request_s']:.1f} s, HTTP {r['first_request_status']})")
        report["serve"] = r
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
