"""Time a full `router eval` run on the RouterBench subset with cached embeddings.

Target: < 60 s wall on 2 CPU cores. Two modes, both with 1000 bootstrap resamples:

* ``artifacts`` (default): the policies that read embeddings are trained once beforehand
  with ``router train`` (not timed), then each timed run is ``router eval`` over every
  default policy, those as ``--artifact`` directories and the embedding-free ones by
  name: loading, embedding lookups (cached), sweeping, bootstrap, report and plots.
* ``train``: the timed run also trains every policy (``router eval`` with the default
  list), so it includes the policies' own fitting time.

A warm-up run fills the embedding cache first. Each timed run is a fresh
``python -m router eval`` process (imports included). The script prints the wall times
and the stage and per-policy timings recorded in results.json.

    python benchmarks/bench_eval.py [--mode artifacts|train] [--data DIR] [--bootstrap N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "routerbench-subset"
TARGET_S = 60.0
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def router(*argv: str) -> float:
    """Run `python -m router ARGV...`; wall seconds (exits on failure)."""
    cmd = [sys.executable, "-m", "router", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def policy_split() -> tuple[list[str], list[str]]:
    """Default policies that read embeddings (trained as artifacts) and the others."""
    from eval.harness import default_policy_names, needs_embeddings
    from policies import get_policy_class

    names = default_policy_names()
    embedded = [n for n in names if needs_embeddings(get_policy_class(n))]
    return embedded, [n for n in names if n not in embedded]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("artifacts", "train"), default="artifacts")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2, help="timed runs after the warm-up")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"no data at {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval"
        extra = ["--bootstrap", str(args.bootstrap), "--quiet"]
        if args.mode == "artifacts":
            embedded, plain = policy_split()
            t0 = time.perf_counter()
            for name in embedded:
                router("train", "--policy", name, "--data", args.data, "--quiet",
                       "--out", str(Path(tmp) / name))
            print(f"setup (not timed): trained {', '.join(embedded)} artifacts in "
                  f"{time.perf_counter() - t0:.1f} s")
            extra += ["--policies", ",".join(plain)]
            for name in embedded:
                extra += ["--artifact", str(Path(tmp) / name)]
        warm = router("eval", "--data", args.data, "--out", str(out), *extra)
        print(f"warm-up run (fills the embedding cache): {warm:.1f} s")
        walls = [router("eval", "--data", args.data, "--out", str(out), *extra)
                 for _ in range(args.runs)]
        results = json.loads((out / "results.json").read_text())
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}; load average {load[0]:.1f} / {load[1]:.1f}; "
          f"data: {args.data}; mode: {args.mode}")
    print(f"test queries: {results['dataset']['n_test']}; lam values: {len(results['lams'])}; "
          f"bootstrap: {results['bootstrap']}; policies: {', '.join(results['policies'])}")
    median = statistics.median(walls)
    print("full `router eval` wall time, cached embeddings: "
          + ", ".join(f"{w:.1f} s" for w in walls)
          + f" (median {median:.1f} s; target < {TARGET_S:.0f} s)")
    print("stage timings of the last run (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in results["timings"].items()))
    for label, p in results["policies"].items():
        t = p.get("timings", {})
        print(f"  {label:24s} " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    return 0 if median < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
