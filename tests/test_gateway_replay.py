"""Replay backends: recorded answers, costs and grades; auto-feedback; nearest/canned prompts."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from policies import make_policy
from router.dataset import RoutingDataset
from router.proxy.config import parse_config
from router.proxy.replay import ReplayProvider
from router.proxy.routing import hashing_encoder_config, load_encoder
from tests.upstream import GatewayServer

TOPICS = ["the sea", "autumn leaves", "a lighthouse", "the desert", "mountains", "a city at night",
          "winter snow", "a garden", "the stars", "an old friend"]


def make_dataset() -> RoutingDataset:
    prompts, tasks, responses = [], [], []
    for i, topic in enumerate(TOPICS):
        a, b = 3 * i + 4, 7 * i + 2
        prompts.append(f"What is {a} plus {b}?")
        tasks.append("math")
        responses.append([f"small says {a + b}", f"big says {a + b}"])
        prompts.append(f"Write a short poem about {topic}.")
        tasks.append("poem")
        responses.append([f"small: roses are red ({topic})", f"big: an ode to {topic}"])
    n = len(prompts)
    quality = np.array([[1.0, 1.0] if t == "math" else [0.0, 1.0] for t in tasks])
    cost = np.tile([0.0001, 0.002], (n, 1)) * (1 + np.arange(n)[:, None] / 100)
    return RoutingDataset("toy", prompts, tasks, ["small", "big"], quality, cost,
                          ids=[f"toy-{i}" for i in range(n)], responses=responses)


def serve(tmp_path, encoder, X: np.ndarray, ds: RoutingDataset, lam: float,
          from_artifact: bool = True, **replay: object) -> GatewayServer:
    policy = make_policy("knn", k=3, alpha=0.5, temperature=0.1)
    policy.fit(X, ds.quality, ds.cost, ds.models, tasks=ds.tasks)
    art = policy.save(tmp_path / "artifact", meta={"encoder": encoder.config()})
    cfg = parse_config({
        "model_list": [{"model_name": m, "litellm_params": {"model": f"replay/{m}"}}
                       for m in ds.models],
        "routing": {"artifact": str(art), "lam": lam},
        "state": {"dir": str(tmp_path / "state")},
        "replay": {"dataset": "toy (in memory)", "min_similarity": 0.5, **replay},
    })
    provider = ReplayProvider(ds, latency_ms=5, min_similarity=0.5, embeddings=X)
    # the real encoder is loaded once: hand the fitted policy and encoder over directly
    kwargs = {} if from_artifact else {"policies": {"knn": (policy, encoder)},
                                       "default_policy": "knn"}
    return GatewayServer(cfg, replay=provider, **kwargs).start()


def chat(gw: GatewayServer, text: str, model: str = "router-auto", **kw) -> httpx.Response:
    return httpx.post(gw.base + "/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": text}], **kw})


@pytest.fixture(scope="module")
def toy():
    return make_dataset()


@pytest.fixture
def hashing_gateway(tmp_path, toy):
    enc = load_encoder(hashing_encoder_config(64), use_cache=False)
    gw = serve(tmp_path, enc, enc.encode(toy.prompts), toy, lam=100.0)
    yield gw
    gw.stop()


def test_exact_prompt_replays_answer_cost_and_grade(hashing_gateway, toy):
    gw = hashing_gateway
    r = chat(gw, toy.prompts[3])  # a poem: only "big" is right, whatever it costs
    assert r.status_code == 200
    body = r.json()
    assert r.headers["x-router-model"] == "big"
    assert r.headers["x-router-replay-match"] == "exact"
    assert body["choices"][0]["message"]["content"] == toy.responses[3][1]
    assert body["router"]["cost"] == pytest.approx(toy.cost[3, 1])
    assert body["router"]["replay"] == {"match": "exact", "similarity": 1.0, "dataset": "toy",
                                        "dataset_id": "toy-3", "grade": 1.0}
    # math: both right, lam=100 -> the cheap one, graded from the dataset
    r = chat(gw, toy.prompts[0], model="small")
    assert r.json()["choices"][0]["message"]["content"] == toy.responses[0][0]
    r = chat(gw, toy.prompts[1], model="small")  # small is wrong on poems
    assert r.json()["router"]["replay"]["grade"] == 0.0
    # the grades come back as feedback automatically
    rid = r.headers["x-router-request-id"]
    deadline = time.monotonic() + 10
    while True:
        gw.gateway.outcomes.flush()
        recs = {x["request_id"]: x for x in gw.gateway.outcome_store.records()}
        if "feedback" in recs.get(rid, {}) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert recs[rid]["feedback"]["reward"] == 0.0
    assert recs[rid]["feedback"]["source"] == "replay"
    assert recs[rid]["replay"]["match"] == "exact"
    # feedback was given: a second one is refused
    again = httpx.post(gw.base + "/feedback", json={"request_id": rid, "reward": 1})
    assert again.status_code == 409


def test_unknown_prompts_nearest_or_canned(hashing_gateway, toy):
    gw = hashing_gateway
    r = chat(gw, "What is 4 plus 2 ?", model="big")  # near "What is 4 plus 2?"
    rep = r.json()["router"]["replay"]
    assert rep["match"] == "nearest" and rep["dataset_id"] == "toy-0"
    assert r.json()["choices"][0]["message"]["content"] == toy.responses[0][1]
    r = chat(gw, "zebra quantum xylophone", model="big")
    assert r.headers["x-router-replay-match"] == "canned"
    assert "canned" in r.json()["choices"][0]["message"]["content"]
    assert "grade" not in r.json()["router"]["replay"]


def test_replay_streams(hashing_gateway, toy):
    r = chat(hashing_gateway, toy.prompts[5], model="big", stream=True)
    events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])
    assert text == toy.responses[5][1]
    comment = next(ln for ln in r.text.split("\n") if ln.startswith(": x-router "))
    assert json.loads(comment[11:])["cost"] == pytest.approx(toy.cost[5, 1])


@pytest.mark.slow
def test_real_encoder_routes_and_matches_paraphrases(tmp_path, toy):
    """all-MiniLM-L6-v2 end to end: paraphrases the hashing encoder cannot relate."""
    from router.encoding.encoder import Encoder

    enc = Encoder(cache_dir=tmp_path / "cache")
    X = enc.encode(toy.prompts)
    gw = serve(tmp_path, enc, X, toy, lam=100.0, from_artifact=False)
    try:
        r = chat(gw, "Compose a few verses about the ocean waves.")
        body = r.json()
        assert body["router"]["model"] == "big"  # a poem: only big writes them
        assert body["router"]["replay"]["match"] == "nearest"
        assert body["router"]["replay"]["dataset_id"] == "toy-1"  # "...about the sea."
        r = chat(gw, "Compute the sum of 10 and 9.")
        assert r.json()["router"]["model"] == "small"  # arithmetic: the cheap model is right
        # the gateway's embedding is the encoder's
        served = gw.gateway.router.policies["knn"]
        x = gw.gateway.router.embed(served, "Compute the sum of 10 and 9.")
        assert np.allclose(x, enc.encode_one("Compute the sum of 10 and 9."), atol=1e-5)
    finally:
        gw.stop()


def _feedback_events(gw: GatewayServer, rid: str) -> list[dict]:
    gw.gateway.outcomes.flush()
    return [x for x in gw.gateway.outcome_store.events()
            if x.get("event") == "feedback" and x.get("request_id") == rid]


def test_client_feedback_within_the_delay_wins_over_the_replay_grade(tmp_path, toy):
    # `router serve --demo` waits before grading, so the README's POST /v1/feedback
    # example answers 200 (it answered 409 duplicate_feedback when the grade went first)
    enc = load_encoder(hashing_encoder_config(64), use_cache=False)
    gw = serve(tmp_path, enc, enc.encode(toy.prompts), toy, lam=100.0,
               auto_feedback_delay_seconds=1.0)
    try:
        first = chat(gw, toy.prompts[1], model="small")  # graded 0.0 by the dataset
        mine = first.headers["x-router-request-id"]
        fb = httpx.post(gw.base + "/feedback", json={"request_id": mine, "reward": 1.0})
        assert fb.status_code == 200 and fb.json()["reward"] == 1.0
        other = chat(gw, toy.prompts[3], model="small").headers["x-router-request-id"]
        deadline = time.monotonic() + 10
        while not _feedback_events(gw, other) and time.monotonic() < deadline:
            time.sleep(0.05)
        # no client feedback for `other`: the replay graded it after the delay
        assert [(e["source"], e["reward"]) for e in _feedback_events(gw, other)] == [
            ("replay", 0.0)]
        # the client's reward stayed the only one for `mine` (the grade was not sent)
        assert [(e["source"], e["reward"]) for e in _feedback_events(gw, mine)] == [
            ("api", 1.0)]
    finally:
        gw.stop()
