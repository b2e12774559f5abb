"""``router serve`` tunes the cyclic collector before serving (router.proxy.cli.tune_gc)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import gc, json
from router.proxy.cli import SERVE_GC_THRESHOLD, tune_gc
before = gc.get_freeze_count()
tune_gc()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a reference cycle made after the freeze
del a, b
found = gc.collect()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "threshold": list(gc.get_threshold()), "expected": list(SERVE_GC_THRESHOLD),
                  "collected": found}))
"""


def test_tune_gc_freezes_startup_heap_and_still_collects_cycles() -> None:
    # in a child process: freezing the test runner's own heap would outlive this test
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=str(REPO), capture_output=True,
                         text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == 0
    assert got["frozen"] > 1000  # the imported modules' objects
    assert got["threshold"] == got["expected"]
    assert got["threshold"][0] > 700  # young collections less often than Python's default
    assert got["collected"] >= 2  # cycles made after the freeze are still collected
