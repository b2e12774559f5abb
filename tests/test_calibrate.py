"""Your own models end to end, offline: `router data label` 200 prompts through the local
upstream playing three scripted models and a judge (killed with SIGKILL half way and
resumed), `router train`, `router calibrate --target-usd-per-1k`, then `router serve` with
that lam on fresh prompts: the measured spend is within 10% of the target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from router.calibrate import calibrate, operating, spend_interval
from tests.conftest import REPO
from tests.own_models import OWN_MODELS, own_config, own_prompts, play_own_models
from tests.upstream import UpstreamServer

MODELS = list(OWN_MODELS)
TARGET = 0.30  # USD per 1k queries: between always-medium ($0.08) and always-large ($1.46)


def router_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "router", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_label_train_calibrate_serve(tmp_path, replica_factory):
    import yaml

    up = UpstreamServer().start()
    try:
        play_own_models(up)
        up.control("*", latency_ms=10)
        config = own_config(up.base, tmp_path / "state")
        cfg_path = tmp_path / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(r) + "\n" for r in own_prompts(200)))
        labels, journal = tmp_path / "labels.jsonl", tmp_path / "labels.jsonl.journal"
        label = ["data", "label", "--prompts", str(prompts), "--config", str(cfg_path),
                 "--out", str(labels), "--grader", "judge:judge", "--quiet"]

        # 1. label, killed half way, resumed: every answer paid once (but the few in flight)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "router", *label], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('"t":"grade"') >= 250:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        answered = journal.read_text().count('"t":"answer"')
        assert 250 <= answered < 600
        r = router_cli(*label)
        assert r.returncode == 0, r.stderr
        calls = sum(up.upstream.calls[m] for m in MODELS)
        assert 600 <= calls <= 600 + 8  # at most the 8 calls in flight at the kill again
        assert max(up.upstream.prompt_calls[(m, p["prompt"])] for m in MODELS
                   for p in own_prompts(200)) <= 2

        # 2. train on every labelled row
        art = tmp_path / "art"
        r = router_cli("train", "--policy", "knn", "--data", str(labels), "--out", str(art),
                       "--encoder", "hashing:256", "--test-fraction", "0", "--quiet",
                       # fixed kNN settings: the default cross-validation takes ~10 s here
                       "--param", "k=10", "--param", "alpha=1", "--param", "temperature=0.05")
        assert r.returncode == 0, r.stderr

        # 3. calibrate on another sample of the user's prompts (no answers needed)
        sample = tmp_path / "sample.txt"
        sample.write_text("".join(p["prompt"] + "\n" for p in own_prompts(200, start=1000)))
        result = tmp_path / "calibration.json"
        r = router_cli("calibrate", "--artifact", str(art), "--prompts", str(sample),
                       "--target-usd-per-1k", str(TARGET), "--out", str(result), "--quiet")
        assert r.returncode == 0, r.stderr
        assert "routing:\n  lam: " in r.stdout and "expected $" in r.stdout
        cal = json.loads(result.read_text())
        lam = cal["lam"]
        assert cal["usd_per_1k"] == pytest.approx(TARGET, rel=0.05)
        assert cal["usd_per_1k_90pct"][0] < cal["usd_per_1k"] < cal["usd_per_1k_90pct"][1]
        assert 0 < cal["mix"]["large"] < 1 and abs(sum(cal["mix"].values()) - 1) < 1e-9

        # 4. serve with routing.lam = the calibrated lam; measure spend on fresh prompts
        served = {**config, "routing": {**config["routing"], "artifact": str(art), "lam": lam}}
        gw = replica_factory(served).start()
        fresh = own_prompts(150, start=5000)
        spend, mix = 0.0, {m: 0 for m in MODELS}
        with httpx.Client(timeout=30) as client:
            for p in fresh:
                resp = client.post(gw.base + "/chat/completions", json={
                    "model": "router-auto",
                    "messages": [{"role": "user", "content": p["prompt"]}]})
                assert resp.status_code == 200, resp.text
                assert float(resp.headers["x-router-lam"]) == lam
                spend += float(resp.headers["x-router-cost"])
                mix[resp.headers["x-router-model"]] += 1
        measured = 1000 * spend / len(fresh)
        print(f"calibrated lam {lam:.6g}: expected ${cal['usd_per_1k']:.4f}/1k, measured "
              f"${measured:.4f}/1k on {len(fresh)} fresh prompts, mix {mix}")
        assert measured == pytest.approx(TARGET, rel=0.10), (measured, mix, cal)
        assert mix["large"] and mix["medium"]  # the knob mixes models, it does not pick one
    finally:
        up.stop()


def test_calibrate_finds_the_step_nearest_the_target():
    rng = np.random.default_rng(0)
    q = np.column_stack([np.full(300, 0.5), rng.uniform(0.6, 1.0, 300)])
    c = np.column_stack([np.full(300, 1e-4), rng.uniform(1e-3, 3e-3, 300)])
    best, sweep = calibrate(q, c, ["cheap", "dear"], target_usd_per_1k=1.0)
    assert best.usd_per_1k == pytest.approx(1.0, abs=0.01)
    again = operating(q, c, ["cheap", "dear"], best.lam)
    assert again.usd_per_1k == best.usd_per_1k and again.mix == best.mix
    lo, hi = spend_interval(q, c, best.lam)
    assert lo < best.usd_per_1k < hi and hi - lo < 0.5
    share, _ = calibrate(q, c, ["cheap", "dear"], target_share=("dear", 0.25))
    assert share.mix["dear"] == pytest.approx(0.25, abs=0.01)
    assert min(op.usd_per_1k for op in sweep) == pytest.approx(0.1)  # all cheap
    with pytest.raises(ValueError, match="is not a model of the artifact"):
        calibrate(q, c, ["cheap", "dear"], target_share=("gpt-9", 0.5))


def test_calibrate_cli_errors(tmp_path, capsys):
    from router.cli import main

    (tmp_path / "p.txt").write_text("hello\n")
    assert main(["calibrate", "--artifact", str(tmp_path), "--prompts", str(tmp_path / "p.txt"),
                 "--target-usd-per-1k", "1"]) == 2
    assert "not a policy artifact" in capsys.readouterr().err
    assert main(["calibrate", "--artifact", str(tmp_path), "--prompts", str(tmp_path / "p.txt"),
                 "--target-share", "large=1.5"]) == 2
    assert "expected MODEL=S with S in [0, 1]" in capsys.readouterr().err
