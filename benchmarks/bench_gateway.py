"""Gateway overhead: added latency (p50/p99) and throughput at 64 concurrent clients.

Every target answers through the same local upstream (tests/upstream.py, a plain ASGI
OpenAI-compatible server with a fixed latency), started once in its own process:

* ``direct``             the upstream called directly (the baseline);
* ``costroute``          ``router serve``, a backend's own name (pass-through), fast path
                         (pooled httpx);
* ``costroute-auto``     ``router serve``, ``router-auto`` (tiny hashing encoder + kNN policy,
                         a new prompt per request: embedding, policy, candidate order);
* ``costroute-litellm``  ``router serve``, pass-through with ``fast_path: false``
                         (``litellm.acompletion``);
* ``litellm-proxy``      LiteLLM's own proxy (``litellm --config``) on the same upstream, when
                         a ``litellm`` executable with the proxy extras is found
                         (``--litellm-bin``, ``$COSTROUTE_LITELLM_BIN``, or PATH).
* ``costroute-static``   ``router-auto`` with the static encoder backend (all-MiniLM-L6-v2
                         distilled into a static model, router.encoding.static) + kNN, unique
                         prompts: the encoder runs inline on every request.
* ``costroute-minilm``   (``--minilm``) ``router-auto`` with all-MiniLM-L6-v2 (int8 ONNX) and
                         unique prompts (every request runs the encoder, micro-batched).
* ``costroute-cascade``  (``--cascade``) ``router-cascade-100``: a cascade ``A+B>=2 -> C``
                         whose two first-stage backends agree (two concurrent calls, one
                         stage: compare with ``direct``);
* ``costroute-cascade-escalate`` (``--cascade``) the same cascade with backends that
                         disagree: three calls in two stages (compare with twice ``direct``).
                         The upstream then answers ``The answer is ({model}).``

Each target runs alone (its server started, warmed up, measured, stopped): first
``--sequential`` requests one at a time (pure per-request overhead), then ``--requests``
requests from ``--concurrency`` clients. Added latency = target percentile - direct
percentile. ``cpu ms`` is the serving process's CPU time (user + system, from /proc) per
request during the concurrent phase: unlike latency it hardly depends on what else runs on
the machine. Load stays on 127.0.0.1, bounded by ``--requests`` and ``--max-seconds``.

    python benchmarks/bench_gateway.py --requests 3000 --concurrency 64 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: one API key, checked by every gateway (LiteLLM's proxy refuses to start without one)
BENCH_KEY = "sk-bench-" + "0123456789abcdef" * 2
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    f = open(log, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=str(REPO),
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def find_litellm(given: str | None) -> str | None:
    for cand in (given, os.environ.get("COSTROUTE_LITELLM_BIN"), shutil.which("litellm"),
                 "/opt/litellm-proxy-venv/bin/litellm"):
        if not cand or not Path(cand).exists():
            continue
        py = Path(cand).with_name("python")
        check = [str(py) if py.exists() else sys.executable, "-c",
                 "import litellm.proxy.proxy_server"]
        if subprocess.run(check, env=ENV, capture_output=True, timeout=120).returncode == 0:
            return cand
    return None


# ---- load ---------------------------------------------------------------------------


async def _load(url: str, bodies: list[bytes], concurrency: int, max_seconds: float,
                headers: dict[str, str]) -> tuple[list[float], int, float]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    it = iter(bodies)
    deadline = time.monotonic() + max_seconds
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

        async def worker() -> None:
            nonlocal errors
            for body in it:
                if time.monotonic() > deadline:
                    return
                t = time.perf_counter()
                try:
                    async with session.post(url, data=body) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return lat, errors, wall


MC = "Question {}: which of the following is right?\nA) one\nB) two\nC) three\nD) four"


def bodies_for(model: str, n: int, unique: bool) -> list[bytes]:
    out = []
    for i in range(n):
        text = (f"Question {i}: what is {i % 97} plus {i % 89}? Explain briefly." if unique
                else "What is 2 plus 2? Explain briefly.")
        if model.startswith("router-cascade"):
            text = MC.format(i)
        out.append(json.dumps({"model": model, "max_tokens": 16,
                               "messages": [{"role": "user", "content": text}]}).encode())
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children so far (Linux /proc)."""
    if pid is None:
        return float("nan")
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(k) for k in kids]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def measure(url: str, model: str, args, unique: bool = False,
            headers: dict[str, str] | None = None, pid: int | None = None) -> dict:
    headers = {"content-type": "application/json", "authorization": f"Bearer {BENCH_KEY}",
               **(headers or {})}
    asyncio.run(_load(url, bodies_for(model, 50, unique), 8, 30, headers))  # warm-up
    seq, seq_err, _ = asyncio.run(_load(url, bodies_for(model, args.sequential, unique), 1,
                                        args.max_seconds, headers))
    cpu0 = cpu_seconds(pid)
    lat, err, wall = asyncio.run(_load(url, bodies_for(model, args.requests, unique),
                                       args.concurrency, args.max_seconds, headers))
    cpu = (cpu_seconds(pid) - cpu0) / max(1, len(lat) + err) * 1000

    def q(xs: list[float], pct: float) -> float:
        return float(np.percentile(xs, pct)) * 1000 if xs else float("nan")

    return {"seq_p50_ms": q(seq, 50), "seq_p99_ms": q(seq, 99), "p50_ms": q(lat, 50),
            "p99_ms": q(lat, 99), "rps": len(lat) / wall if wall else 0.0, "ok": len(lat),
            "errors": err + seq_err, "cpu_ms_per_req": cpu}


# ---- targets ------------------------------------------------------------------------


def gateway_config(tmp: Path, up_base: str, fast_path: bool, artifact: Path | None) -> Path:
    entries = [{"model_name": name, "litellm_params": {
        "model": f"openai/{name}", "api_base": up_base, "api_key": "sk-bench",
        "input_cost_per_token": p, "output_cost_per_token": 2 * p}}
        for name, p in (("cheap", 1e-6), ("strong", 1e-5))]
    cfg = {"model_list": entries,
           "routing": {"fast_path": fast_path, "lam": 10.0, "fallback": ["cheap", "strong"]},
           "state": {"dir": str(tmp / f"state-{fast_path}-{artifact is not None}")},
           "keys": {"keys": [{"name": "bench", "key": BENCH_KEY}]}}
    if artifact is not None:
        cfg["routing"]["artifact"] = str(artifact)
    path = tmp / f"gateway-{fast_path}-{artifact.name if artifact else 'none'}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cascade_artifact(tmp: Path) -> Path:
    """A cascade over backends A, B, C fitted on synthetic multiple-choice answers (A and B
    right 70% of the time, C 98%); at lam 100 its plan is ``A+B>=2 -> C``."""
    from policies import make_policy
    from router.proxy.routing import hashing_encoder_config, load_encoder

    rng = np.random.default_rng(0)
    n = 200
    enc = load_encoder(hashing_encoder_config(32), use_cache=False)
    texts = [MC.format(i) for i in range(n)]
    truth = rng.integers(0, 4, n)
    quality, responses = np.zeros((n, 3)), []
    for i in range(n):
        row = []
        for j, acc in enumerate((0.7, 0.7, 0.98)):
            ok = rng.random() < acc
            row.append(f"The answer is ({'ABCD'[(truth[i] + (0 if ok else 1)) % 4]}).")
            quality[i, j] = float(ok)
        responses.append(row)
    pol = make_policy("cascade").fit(enc.encode(texts), quality,
                                     np.tile([1e-4, 1e-4, 3e-3], (n, 1)), ["A", "B", "C"],
                                     texts=texts, responses=responses)
    plan = pol.plan(MC.format(0), lam=100.0)
    assert plan.first() == ("A", "B"), plan.describe()
    return pol.save(tmp / "cascade-artifact", meta={"encoder": enc.config()})


def cascade_config(tmp: Path, up_base: str, artifact: Path, agree: bool) -> Path:
    """Backends A, B, C; with ``agree`` A and B both call upstream model B (same answer)."""
    upstream = {"A": "B" if agree else "A", "B": "B", "C": "C"}
    entries = [{"model_name": name, "litellm_params": {
        "model": f"openai/{upstream[name]}", "api_base": up_base, "api_key": "sk-bench",
        "input_cost_per_token": p, "output_cost_per_token": 2 * p}}
        for name, p in (("A", 1e-6), ("B", 1e-6), ("C", 1e-5))]
    cfg = {"model_list": entries, "routing": {"artifact": str(artifact)},
           "state": {"dir": str(tmp / f"state-cascade-{agree}")},
           "keys": {"keys": [{"name": "bench", "key": BENCH_KEY}]}}
    path = tmp / f"gateway-cascade-{agree}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def minilm_artifact(tmp: Path, backend: str = "torch") -> Path:
    """A kNN policy over all-MiniLM-L6-v2 embeddings (``backend``: torch, served as int8
    ONNX; ``static``: the distilled static model) of a few synthetic prompts."""
    from policies import make_policy
    from router.encoding.encoder import Encoder

    enc = Encoder(backend=backend)
    texts = [f"What is {a} plus {b}?" for a in range(20) for b in range(3)] + [
        f"Write a short poem about topic number {i}." for i in range(60)]
    X = enc.encode(texts)
    q = np.ones((120, 2))
    q[60:, 0] = 0
    pol = make_policy("knn", k=5, alpha=1.0, temperature=0.1)
    pol.fit(X, q, np.tile([0.001, 0.01], (120, 1)), ["cheap", "strong"])
    return pol.save(tmp / f"minilm-{backend}-artifact", meta={"encoder": enc.config()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--sequential", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency-ms", type=float, default=20.0, help="upstream latency")
    p.add_argument("--max-seconds", type=float, default=120.0, help="cap per phase")
    p.add_argument("--targets", default="direct,costroute,costroute-auto,costroute-static,"
                                        "costroute-litellm,litellm-proxy")
    p.add_argument("--minilm", action="store_true", help="add costroute-minilm")
    p.add_argument("--cascade", action="store_true",
                   help="add costroute-cascade and costroute-cascade-escalate")
    p.add_argument("--litellm-bin", help="litellm executable with the proxy extras")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    if args.requests > 50_000 or args.concurrency > 512:
        p.error("keep the load bounded: --requests <= 50000, --concurrency <= 512")

    from tests.upstream import tiny_artifact

    targets = [t for t in args.targets.split(",") if t]
    if args.minilm:
        targets.append("costroute-minilm")
    if args.cascade:
        targets += ["costroute-cascade", "costroute-cascade-escalate"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    up_port = free_port()
    answer = (["--answer", "The answer is ({model})."]
              if any(t.startswith("costroute-cascade") for t in targets) else [])
    upstream = start([sys.executable, "-m", "tests.upstream", "--port", str(up_port),
                      "--latency-ms", str(args.latency_ms), *answer], tmp / "upstream.log")
    up_base = f"http://127.0.0.1:{up_port}/v1"
    results: dict[str, dict] = {}
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", proc=upstream)
        art = tiny_artifact(tmp / "tiny-artifact")
        for target in targets:
            proc = None
            model = "cheap"
            unique = False
            try:
                if target == "direct":
                    url = up_base + "/chat/completions"
                elif target.startswith("costroute"):
                    port = free_port()
                    fast = target != "costroute-litellm"
                    artifact = {"costroute-auto": art, "costroute": art,
                                "costroute-litellm": art}.get(target)
                    if target in ("costroute-minilm", "costroute-static"):
                        artifact = minilm_artifact(
                            tmp, "static" if target == "costroute-static" else "torch")
                        unique = True
                    cfg = gateway_config(tmp, up_base, fast, artifact)
                    if target.startswith("costroute-cascade"):
                        cfg = cascade_config(tmp, up_base, cascade_artifact(tmp),
                                             agree=target == "costroute-cascade")
                        model = "router-cascade-100"
                    proc = start([sys.executable, "-m", "router", "serve", "--config", str(cfg),
                                  "--port", str(port), "--log-level", "warning"],
                                 tmp / f"{target}.log")
                    wait_http(f"http://127.0.0.1:{port}/ready", proc=proc)
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    if target in ("costroute-auto", "costroute-minilm", "costroute-static"):
                        model = "router-auto"
                        unique = True  # every request embeds a new prompt (no LRU hits)
                elif target == "litellm-proxy":
                    binary = find_litellm(args.litellm_bin)
                    if binary is None:
                        print("litellm-proxy: skipped (no litellm executable with the proxy "
                              "extras; pip install 'litellm[proxy]' or give --litellm-bin)")
                        continue
                    port = free_port()
                    cfg = tmp / "litellm.yaml"
                    cfg.write_text(yaml.safe_dump({"model_list": [{
                        "model_name": "cheap", "litellm_params": {
                            "model": "openai/cheap", "api_base": up_base,
                            "api_key": "sk-bench"}}],
                        "general_settings": {"master_key": BENCH_KEY}}))
                    proc = start([binary, "--config", str(cfg), "--port", str(port),
                                  "--host", "127.0.0.1", "--num_workers", "1"],
                                 tmp / "litellm.log")
                    wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc=proc)
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                else:
                    print(f"unknown target {target!r}; skipped")
                    continue
                print(f"measuring {target} ...", flush=True)
                # CPU of the serving process (the upstream's for "direct")
                pid = proc.pid if proc is not None else upstream.pid
                results[target] = measure(url, model, args, unique, pid=pid)
            finally:
                if proc is not None:
                    stop(proc)
    finally:
        stop(upstream)

    base = results.get("direct")
    print(f"\nupstream latency {args.latency_ms:g} ms; {args.sequential} sequential requests, "
          f"then {args.requests} at concurrency {args.concurrency}; cores: {os.cpu_count()}")
    conc = f"c={args.concurrency} p50"
    print(f"{'target':<20}{'c=1 p50':>9}{'c=1 p99':>9}{'+p50':>8}{conc:>10}{'p99':>9}"
          f"{'+p50':>9}{'+p99':>9}{'req/s':>9}{'cpu ms':>8}{'err':>5}")
    for name, r in results.items():

        def add(k: str, r: dict = r) -> float:
            return r[k] - base[k] if base else float("nan")

        print(f"{name:<20}{r['seq_p50_ms']:9.2f}{r['seq_p99_ms']:9.2f}{add('seq_p50_ms'):8.2f}"
              f"{r['p50_ms']:10.2f}{r['p99_ms']:9.2f}{add('p50_ms'):9.2f}{add('p99_ms'):9.2f}"
              f"{r['rps']:9.1f}{r['cpu_ms_per_req']:8.2f}{r['errors']:5d}")
    if base:
        for name, stages in (("costroute-cascade", 1), ("costroute-cascade-escalate", 2)):
            if name in results:
                r = results[name]
                print(f"{name}: {stages} stage(s) of upstream calls; added at c=1 p50 "
                      f"{r['seq_p50_ms'] - stages * base['seq_p50_ms']:.2f} ms over {stages} x "
                      f"direct, cpu {r['cpu_ms_per_req']:.2f} ms per request")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
