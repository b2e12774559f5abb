"""Route-decision latency of a trained artifact, loaded the way `router serve` loads it.

    python benchmarks/bench_artifact.py ARTIFACT [ARTIFACT ...] [--backends auto,artifact]
        [--n 300] [--repeat 3] [--prompt "..."] [--lam 0]

For each artifact directory (any policy `router train` writes, including routerdc with a
fine-tuned encoder stored in the artifact) and each encoder runtime (``auto``: what the
gateway runs by default, ONNX int8 on CPU exported from the artifact's own encoder;
``artifact``: the runtime it was trained with; or a runtime name), this loads the policy
and its encoder with :func:`router.proxy.routing.load_encoder` (for ``auto`` and runtime
names, checked against the artifact's dimension and signature as the gateway checks them;
``artifact`` loads the recorded runtime lazily, unchecked), turns the encoder's LRU off,
and times the whole decision for one short chat
prompt: encode one text -> ``policy.predict`` -> ``decision_from_estimate``. It prints
p50 / p99 in milliseconds, the encode / policy split, and the chosen model, so a change
that moves either shows.

Timing runs on however many cores the machine gives; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHORT_PROMPT = "What is the capital of France? Answer in one word."


def _percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_artifact(path: str, backend: str, prompt: str, n: int, lam: float) -> dict:
    """p50/p99 of one route decision (and its encode / policy parts) for ``prompt``."""
    from policies import load_policy
    from policies.base import decision_from_estimate
    from router.proxy.routing import load_encoder

    policy = load_policy(path)
    enc = load_encoder(policy.meta_.get("encoder"), backend, policy.dim_, use_cache=False)
    inner = getattr(enc, "backend", None)
    if inner is not None and hasattr(inner, "lru_size"):
        inner.lru_size = 0
    name = getattr(enc, "backend_name", backend)
    for _ in range(20):  # warm-up: lazy loads, allocator, thread pools
        decision_from_estimate(policy.predict(enc.encode_one(prompt)[None, :]),
                               policy.models_, lam=lam)
    total, enc_ms, pol_ms = [], [], []
    chosen = None
    for _ in range(n):
        t0 = time.perf_counter()
        x = enc.encode_one(prompt)
        t1 = time.perf_counter()
        d = decision_from_estimate(policy.predict(x[None, :]), policy.models_, lam=lam)
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1e3)
        enc_ms.append((t1 - t0) * 1e3)
        pol_ms.append((t2 - t1) * 1e3)
        chosen = d.model
    p50, p99 = _percentiles(total)
    return {"artifact": path, "policy": policy.name, "backend": backend, "runtime": str(name),
            "p50_ms": p50, "p99_ms": p99, "encode_p50_ms": float(np.median(enc_ms)),
            "policy_p50_ms": float(np.median(pol_ms)), "chosen": chosen}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+", help="artifact directories (router train --out)")
    ap.add_argument("--backends", default="auto,artifact",
                    help="encoder runtimes: auto, artifact, torch, onnx, onnx-int8, static")
    ap.add_argument("--n", type=int, default=300, help="timed decisions per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per artifact and runtime; "
                    "the median run's figures are printed")
    ap.add_argument("--prompt", default=SHORT_PROMPT)
    ap.add_argument("--lam", type=float, default=0.0)
    args = ap.parse_args(argv)
    for path in args.artifacts:
        if not Path(path).is_dir():
            ap.error(f"artifact directory {path!r} does not exist")
    print(f"load average {os.getloadavg()[0]:.2f}; prompt {args.prompt!r}; n={args.n}")
    print(f"{'artifact':<28} {'policy':<10} {'runtime':<26} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'encode':>7} {'policy':>7}  chosen")
    for path in args.artifacts:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            runs = [time_artifact(path, backend, args.prompt, args.n, args.lam)
                    for _ in range(max(1, args.repeat))]
            r = sorted(runs, key=lambda r: r["p50_ms"])[len(runs) // 2]
            print(f"{Path(path).name[:28]:<28} {r['policy']:<10} "
                  f"{(backend + ': ' + r['runtime'])[:26]:<26} {r['p50_ms']:7.2f} "
                  f"{r['p99_ms']:7.2f} {r['encode_p50_ms']:7.2f} {r['policy_p50_ms']:7.2f}  "
                  f"{r['chosen']}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
