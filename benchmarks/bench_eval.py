"""Time full `router eval` runs on the RouterBench subset with cached embeddings, per stage.

Target: a default run (every default policy trained inside the run) under 60 s wall on 2
CPU cores. Two modes, both with 1000 bootstrap resamples and the plots:

* ``train``: `router eval --data DATA --out DIR`, the default command: every default
  policy is fitted inside the run (the policies' own fitting dominates);
* ``artifacts``: the policies that read embeddings are trained once beforehand with
  ``router train`` (not timed) and evaluated as ``--artifact`` directories, the
  embedding-free ones by name.

``--mode both`` (default) times both. A warm-up run fills the embedding cache first. Each
timed run is a fresh ``python -m router eval`` process (imports included). Printed per
run: wall time, CPU time of the process (user + system, from ``getrusage``; less
affected by a busy machine than wall time) and the load average; then, for the last run
of each mode, the stages recorded in results.json (``startup`` = wall minus the run's
own ``total_s``: interpreter and imports) and each policy's fit / predict / route time.

    python benchmarks/bench_eval.py [--mode both|train|artifacts] [--data DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def router(*argv: str) -> tuple[float, float]:
    """Run `python -m router ARGV...`; (wall, CPU) seconds (exits on failure)."""
    cmd = [sys.executable, "-m", "router", *argv]
    cpu0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu


def policy_split() -> tuple[list[str], list[str]]:
    """Default policies that read embeddings (trained as artifacts) and the others."""
    from eval.harness import default_policy_names, needs_embeddings
    from policies import get_policy_class

    names = default_policy_names()
    embedded = [n for n in names if needs_embeddings(get_policy_class(n))]
    return embedded, [n for n in names if n not in embedded]


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def stage_lines(results: dict, wall: float) -> list[str]:
    t = results["timings"]
    stages = {"startup": wall - t["total_s"], **{k: v for k, v in t.items() if k != "total_s"}}
    lines = ["  stages (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}"
                                          for k, v in stages.items())]
    for label, p in results["policies"].items():
        pt = p.get("timings", {})
        lines.append(f"    {label:22s} " + ", ".join(f"{k} {v:.2f}" for k, v in pt.items()))
    return lines


def time_mode(mode: str, data: str, tmp: Path, runs: int, extra: list[str]) -> float:
    """Timed runs of one mode; prints them; returns the median wall time."""
    out = tmp / f"eval-{mode}"
    args = ["eval", "--data", data, "--out", str(out), *extra]
    walls = []
    for i in range(runs):
        before = load_text()
        wall, cpu = router(*args)
        walls.append(wall)
        print(f"{mode} run {i + 1}: wall {wall:.1f} s, CPU {cpu:.1f} s "
              f"({before} before, {load_text()} after)")
    results = json.loads((out / "results.json").read_text())
    print("\n".join(stage_lines(results, walls[-1])))
    median = statistics.median(walls)
    print(f"{mode}: median wall {median:.1f} s (target < {TARGET_S:.0f} s for a default run)")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("both", "train", "artifacts"), default="both")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2, help="timed runs per mode")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"no data at {args.data}")
    common = ["--bootstrap", str(args.bootstrap), "--quiet"]
    print(f"cpu cores: {os.cpu_count()}; {load_text()}; data: {args.data}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        art_extra = list(common)
        if args.mode in ("both", "artifacts"):
            embedded, plain = policy_split()
            t0 = time.perf_counter()
            for name in embedded:
                router("train", "--policy", name, "--data", args.data, "--quiet",
                       "--out", str(tmp / name))
            print(f"setup (not timed): trained {', '.join(embedded)} artifacts in "
                  f"{time.perf_counter() - t0:.1f} s")
            art_extra += ["--policies", ",".join(plain)]
            for name in embedded:
                art_extra += ["--artifact", str(tmp / name)]
        warm, _ = router("eval", "--data", args.data, "--out", str(tmp / "warm"),
                         "--policies", "knn", "--bootstrap", "0", "--no-plots", "--quiet")
        print(f"warm-up run (fills the embedding cache): {warm:.1f} s")
        medians = {}
        if args.mode in ("both", "train"):
            medians["train"] = time_mode("train", args.data, tmp, args.runs, common)
        if args.mode in ("both", "artifacts"):
            medians["artifacts"] = time_mode("artifacts", args.data, tmp, args.runs, art_extra)
    return 0 if all(m < TARGET_S for m in medians.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
