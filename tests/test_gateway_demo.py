"""``router serve --demo``: replay backends of a dataset, a trained policy, the loop offline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from router.datasets import load_split, save_jsonl
from router.demo_dataset import generate_demo_dataset
from tests.conftest import ROUTERBENCH, free_port, needs_shared
from tests.upstream import GatewayServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    ds = generate_demo_dataset(n=240, seed=3)
    # give it recorded answers, as RouterBench has
    ds.responses = [[f"{m} answers {ds.ids[i]}" for m in ds.models] for i in range(len(ds))]
    return save_jsonl(ds, tmp_path_factory.mktemp("demo") / "demo.jsonl")


def test_build_demo_serves_the_dataset(demo_data, tmp_path):
    from router.proxy.replay import build_demo

    demo = build_demo(tmp_path / "state", policy_name="linucb", latency_ms=1,
                      dataset=str(demo_data), encoder="hashing", feedback_delay_s=1.0)
    assert demo["config"].replay.auto_feedback_delay_seconds == 1.0
    split = load_split(str(demo_data))
    assert demo["default_policy"] == "linucb"
    assert [m.model_name for m in demo["config"].model_list] == split.train.models
    gw = GatewayServer(demo["config"], policies=demo["policies"],
                       default_policy=demo["default_policy"], replay=demo["replay"]).start()
    try:
        client = gw.openai()
        test = split.test
        graded = 0
        for i in range(10):
            comp = client.chat.completions.create(
                model="router-auto", messages=[{"role": "user", "content": test.prompts[i]}])
            router = comp.model_extra["router"]
            j = test.models.index(router["model"])
            assert router["replay"]["match"] == "exact"
            assert router["replay"]["dataset_id"] == test.ids[i]
            assert comp.choices[0].message.content == f"{router['model']} answers {test.ids[i]}"
            if np.isfinite(test.cost[i, j]):
                assert router["cost"] == pytest.approx(test.cost[i, j], rel=1e-6)
            graded += "grade" in router["replay"]
            if i == 0:  # the README's feedback example: the client's reward is taken
                fb = httpx.post(gw.base + "/feedback", json={
                    "request_id": comp.model_extra["router"]["request_id"], "reward": 1.0})
                assert fb.status_code == 200, fb.text
                graded += "grade" not in router["replay"]
        assert graded >= 9
        # the replay grades (and the client's reward in place of one) reached the bandit
        store = gw.gateway.router.policies["linucb"].policy.store
        deadline = time.monotonic() + 10
        while store.version() < graded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.version() == graded
    finally:
        gw.stop()
    # a second start reuses the trained artifact and the learned bandit state
    again = build_demo(tmp_path / "state", policy_name="linucb", dataset=str(demo_data),
                       encoder="hashing")
    assert (tmp_path / "state" / "demo-linucb-hashing" / "config.json").is_file()
    assert again["default_policy"] == "linucb"


def test_router_serve_demo_cli(demo_data, tmp_path):
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--demo", "--demo-dataset", str(demo_data),
         "--demo-encoder", "hashing", "--demo-policy", "knn", "--demo-latency-ms", "0",
         "--state-dir", str(tmp_path / "state"), "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0)
        ids = [m.id for m in client.models.list()]
        assert ids[:2] == ["router-auto", "router-knn"] and "gpt-4o-mini" in ids
        comp = client.chat.completions.create(
            model="router-auto", messages=[{"role": "user", "content": "Hello, who are you?"}])
        assert comp.model_extra["router"]["replay"]["match"] in ("nearest", "canned")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


@needs_shared
def test_routerbench_replays_recorded_answers(tmp_path):
    """The replay provider over the RouterBench subset: recorded answer, cost and grade."""
    from router.proxy.replay import ReplayProvider, load_replay_dataset

    ds = load_replay_dataset(ROUTERBENCH)
    provider = ReplayProvider(ds)
    row = 5
    j = ds.models.index("gpt-4-1106-preview")
    assert provider.lookup(ds.prompts[row]) == (row, "exact", 1.0)
    from router.proxy.config import ModelEntry

    backend = provider.backend(ModelEntry(model_name="gpt-4", litellm_params={
        "model": "replay/gpt-4-1106-preview"}), timeout=5)
    import asyncio

    comp = asyncio.run(backend.complete({"messages": [{"role": "user",
                                                        "content": ds.prompts[row]}]}))
    assert comp.body["choices"][0]["message"]["content"] == ds.responses[row][j]
    assert comp.cost == pytest.approx(ds.cost[row, j])
    assert comp.extra["grade"] == ds.quality[row, j]
