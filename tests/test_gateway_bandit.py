"""Feedback feeds an online policy (LinUCB): learning changes routing; state shared via Redis."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.upstream import MATH, GatewayServer, gateway_config, linucb_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return linucb_artifact(tmp_path_factory.mktemp("art") / "linucb")


def route(gw: GatewayServer, text: str) -> httpx.Response:
    r = httpx.post(gw.base + "/chat/completions", timeout=20, json={
        "model": "router-auto", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r


def teach(gw: GatewayServer, text: str, reward_of: dict[str, float], rounds: int) -> None:
    for _ in range(rounds):
        r = route(gw, text)
        model = r.headers["x-router-model"]
        fb = httpx.post(gw.base + "/feedback", json={
            "request_id": r.headers["x-router-request-id"], "reward": reward_of[model]})
        assert fb.status_code == 200 and fb.json()["updated"] is True


def test_feedback_changes_routing_and_persists(upstream, artifact, tmp_path):
    cfg = gateway_config(upstream.base, artifact, tmp_path / "state", routing={"lam": 10.0})
    gw = GatewayServer(cfg).start()
    try:
        assert route(gw, MATH.format(1)).headers["x-router-model"] == "cheap"
        # the cheap model turns out to fail these math questions: the bandit learns it
        teach(gw, MATH.format(1), {"cheap": 0.0, "strong": 1.0}, rounds=15)
        assert route(gw, MATH.format(1)).headers["x-router-model"] == "strong"
        version = gw.gateway.router.policies["linucb"].policy.store.version()
        assert version >= 1
    finally:
        gw.stop()
    # the embedded bandit store is durable: a restarted gateway remembers
    gw = GatewayServer(cfg).start()
    try:
        assert gw.gateway.router.policies["linucb"].policy.store.version() == version
        assert route(gw, MATH.format(1)).headers["x-router-model"] == "strong"
    finally:
        gw.stop()


@pytest.mark.redis
def test_replicas_share_learning_and_survive_redis_outage(upstream, artifact, tmp_path,
                                                          redis_factory):
    redis = redis_factory(aof=True).start()
    gws = [GatewayServer(gateway_config(
        upstream.base, artifact, tmp_path / f"s{i}", routing={"lam": 10.0},
        state={"redis_url": redis.url})).start() for i in range(2)]
    try:
        teach(gws[0], MATH.format(2), {"cheap": 0.0, "strong": 1.0}, rounds=15)
        # replica 1 never saw feedback but routes with replica 0's learning
        assert route(gws[1], MATH.format(2)).headers["x-router-model"] == "strong"
        store = gws[1].gateway.router.policies["linucb"].policy.store
        before = store.version()
        redis.stop()
        # Redis down: routing and learning go on from local state
        teach(gws[1], MATH.format(2), {"cheap": 1.0, "strong": 1.0}, rounds=3)
        assert httpx.get(gws[1].url + "/ready").json()["state"]["bandit_store_healthy"] is False
        redis.start()
        import time

        time.sleep(1.1)  # past the retry interval
        route(gws[1], MATH.format(2))  # the next read pushes the queued outcomes
        assert store.healthy and store.version() == before + 3
        assert gws[0].gateway.router.policies["linucb"].policy.store.version() == before + 3
    finally:
        for g in gws:
            g.stop()


def test_a_degraded_backend_loses_its_traffic_over_http(upstream, tmp_path):
    """The degrade scenario through the served gateway: 'cheap' answers the math prompts
    well, then (from query 20 on) every one of its answers gets reward 0 through
    /v1/feedback. With the replay's bandit (eval.online.DEFAULT_PARAMS: kNN features, reg,
    forgetting, gate) its share falls below 5% within 100 queries of the change; the frozen
    prior keeps it."""
    from eval.online import DEFAULT_PARAMS

    forget = {k: v for k, v in DEFAULT_PARAMS.items() if k != "prior_weight"}
    shares = {}
    for name, params in (("pilot", forget), ("frozen", None)):
        art = linucb_artifact(tmp_path / f"art-{name}", **(params or {}))
        cfg = gateway_config(upstream.base, art, tmp_path / f"state-{name}",
                             routing={"lam": 10.0})
        gw = GatewayServer(cfg).start()
        chosen = []
        try:
            for i in range(140):
                r = route(gw, MATH.format(1000 + i))
                model = r.headers["x-router-model"]
                chosen.append(model)
                if params is None:
                    continue  # the frozen prior gets no feedback
                reward = 1.0 if model == "strong" or i < 20 else 0.0
                fb = httpx.post(gw.base + "/feedback", json={
                    "request_id": r.headers["x-router-request-id"], "reward": reward})
                assert fb.status_code == 200 and fb.json()["updated"] is True
        finally:
            gw.stop()
        cheap = np.array([m == "cheap" for m in chosen], dtype=float)
        shares[name] = (cheap[:20].mean(), cheap[120:].mean(), cheap)
    assert shares["pilot"][0] >= 0.8 and shares["frozen"][0] >= 0.8  # mostly cheap first
    # every tail of the stream from 100 queries after the change sends < 5% to cheap
    after = shares["pilot"][2][20:]
    tails = np.cumsum(after[::-1])[::-1] / np.arange(len(after), 0, -1)
    assert tails[100:].max() < 0.05 and shares["pilot"][1] < 0.05
    assert shares["frozen"][1] >= 0.8  # without feedback it keeps the cheap backend
