"""Replayed traffic through ``router serve --demo``, then ``router logs report`` on its log.

Starts the demo gateway (replay backends of the RouterBench subset, or the generated demo
dataset without ../shared) in a subprocess with its own state dir, sends ``--requests``
chat requests with ``--concurrency`` clients (test-split prompts; a mix of ``router-auto``,
``router-cascade``, the served policy at another lam, and direct calls to a backend by
name), posts feedback for a quarter of the routed answers (the replay grade as the
reward), stops the gateway, and writes ``router logs report`` into ``--out``.

    python benchmarks/demo_traffic.py --out out/demo-report [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prompts(dataset: str | None) -> list[str]:
    from router.datasets import DEMO, load_split
    from router.proxy.replay import default_demo_dataset

    path = dataset or default_demo_dataset() or DEMO
    return load_split(str(path)).test.prompts


async def drive(base: str, prompts: list[str], n: int, concurrency: int, models: list[str]
                ) -> Counter:
    sem = asyncio.Semaphore(concurrency)
    counts: Counter = Counter()
    routed = [m for m in models if m.startswith("router-")]
    direct = [m for m in models if not m.startswith("router-")]
    mix = (["router-auto"] * 5 + [m for m in routed if "cascade" in m] * 2
           + [m for m in routed if m not in ("router-auto",) and "cascade" not in m][:1]
           + direct[:2])
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(i: int) -> None:
            model = mix[i % len(mix)]
            async with sem:
                r = await client.post(base + "/chat/completions", json={
                    "model": model, "messages": [{"role": "user",
                                                  "content": prompts[i % len(prompts)]}]})
                counts[f"{model} {r.status_code}"] += 1
                if r.status_code == 200 and model.startswith("router-") and i % 4 == 0:
                    info = r.json().get("router") or {}
                    grade = (info.get("replay") or {}).get("grade")
                    if grade is not None:
                        f = await client.post(base + "/feedback", json={
                            "request_id": info["request_id"], "reward": float(grade)})
                        counts[f"feedback {f.status_code}"] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="report directory (state goes in OUT/state)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=5.0, help="replay latency")
    p.add_argument("--dataset", help="demo dataset (default: the RouterBench subset)")
    p.add_argument("--encoder", choices=["minilm", "hashing"], default="minilm")
    args = p.parse_args()
    out = Path(args.out)
    state = out / "state"
    port = free_port()
    cmd = [sys.executable, "-m", "router", "serve", "--demo", "--state-dir", str(state),
           "--port", str(port), "--demo-latency-ms", str(args.latency_ms),
           "--demo-encoder", args.encoder, "--log-level", "warning"]
    if args.dataset:
        cmd += ["--demo-dataset", args.dataset]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "serve.log", "wb")  # noqa: SIM115 (lives with the process)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"router serve --demo exited:\n{(out / 'serve.log').read_text()}")
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("router serve --demo did not become ready")
            time.sleep(0.5)
        models = [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]]
        t0 = time.perf_counter()
        counts = asyncio.run(drive(base + "/v1", test_prompts(args.dataset), args.requests,
                                   args.concurrency, models))
        print(f"{args.requests} requests in {time.perf_counter() - t0:.1f}s: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    from router.cli import main as router_main

    return router_main(["logs", "report", "--state-dir", str(state), "--out", str(out)])


if __name__ == "__main__":
    sys.exit(main())
