"""The soak scenario, shortened (benchmarks/soak.py runs it at 200 req/s for 60 s).

Real `router serve` subprocesses, a real Redis (AOF) and the local upstream as a subprocess;
the whole fault schedule (10% upstream 503s, a backend hanging past its timeout, Redis
killed and restarted, a replica SIGKILLed and restarted) at 50 req/s for 10 s, then the
accounting: nothing answered or paid for may be missing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.redis, pytest.mark.slow]

spec = importlib.util.spec_from_file_location(
    "soak", Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py")
soak = importlib.util.module_from_spec(spec)
sys.modules["soak"] = soak  # dataclasses look their module up
spec.loader.exec_module(soak)


@pytest.mark.parametrize("setup, seconds", [("replicas", 10.0), ("embedded", 5.0)])
def test_soak_loses_nothing(setup, seconds, tmp_path):
    rep = soak.run(setup, rate=50.0, seconds=seconds, workdir=tmp_path / setup)
    soak.print_report(rep)
    assert rep["lost"] == [], rep
    assert rep["sent"] == int(50 * seconds)
    assert rep["answered"] >= 0.8 * rep["sent"], rep  # 10% 503s: a few refused, clearly
    assert rep["fallbacks"] > 0 and rep["feedback"]["accepted"] > 0
    if setup == "replicas":
        assert rep["replica_b_restart_s"] is not None
