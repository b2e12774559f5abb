"""Upstream faults: fallback to the next-best model, cooldowns, timeouts, 502/504."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.upstream import (
    POEM,
    GatewayServer,
    UpstreamServer,
    backend_entry,
    free_port,
    gateway_config,
    tiny_artifact,
)


@pytest.fixture(scope="module")
def upstream():
    server = UpstreamServer(hang_seconds=3.0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("art") / "artifact")


@pytest.fixture
def make_gateway(upstream, artifact, tmp_path):
    upstream.upstream.reset()
    upstream.control("*", hang_seconds=3.0)
    started = []

    def make(**sections) -> GatewayServer:
        cfg = gateway_config(upstream.base, artifact, tmp_path / f"state{len(started)}",
                             **sections)
        server = GatewayServer(cfg).start()
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()


def poem(gw: GatewayServer, model: str = "router-auto") -> httpx.Response:
    return httpx.post(gw.base + "/chat/completions", timeout=20, json={
        "model": model, "messages": [{"role": "user", "content": POEM.format(1)}]})


def test_upstream_error_falls_back_and_cools_down(make_gateway, upstream):
    gw = make_gateway(routing={"cooldown_seconds": 0.8})
    upstream.control("strong", fail="500", fail_times=-1)
    r = poem(gw)  # lam 0: the policy wants "strong" for poems
    assert r.status_code == 200
    router = r.json()["router"]
    assert router["model"] == "cheap" and r.headers["x-router-model"] == "cheap"
    assert [(a["model"], a["error"]) for a in router["attempts"]] == [
        ("strong", "status"), ("cheap", None)]
    assert upstream.calls("strong") == 1
    # strong is on cooldown: the next request does not try it
    r = poem(gw)
    assert r.json()["router"]["attempts"] == [{"model": "cheap", "error": None}]
    assert upstream.calls("strong") == 1
    assert "strong" in httpx.get(gw.url + "/ready").json()["cooldowns"]
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'costroute_fallbacks_total{from_model="strong",to_model="cheap"} 1.0' in metrics
    assert 'costroute_backend_cooldown{model="strong"} 1.0' in metrics
    # after the cooldown, a recovered backend is chosen again
    upstream.upstream.reset()
    time.sleep(0.9)
    r = poem(gw)
    assert r.json()["router"]["model"] == "strong"


def test_timeout_falls_back(make_gateway, upstream):
    gw = make_gateway(routing={"timeouts": {"strong": 0.3}})
    upstream.control("strong", fail="timeout", fail_times=1)
    t = time.perf_counter()
    r = poem(gw)
    assert time.perf_counter() - t < 2.5
    assert r.status_code == 200
    attempts = r.json()["router"]["attempts"]
    assert attempts[0]["model"] == "strong" and attempts[0]["error"] == "timeout"
    assert r.json()["router"]["model"] == "cheap"


def test_all_backends_timing_out_is_504(make_gateway, upstream):
    gw = make_gateway(routing={"timeouts": {"strong": 0.3, "cheap": 0.3}})
    upstream.control("*", fail="timeout", fail_times=-1)
    client = gw.openai()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="router-auto",
                                       messages=[{"role": "user", "content": POEM.format(2)}])
    assert exc.value.status_code == 504
    assert exc.value.code == "upstream_timeout"
    assert "strong (timeout" in exc.value.message and "cheap (timeout" in exc.value.message


def test_all_backends_failing_is_502(make_gateway, upstream):
    gw = make_gateway()
    upstream.control("*", fail="503", fail_times=-1)
    r = poem(gw)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    assert r.json()["error"]["type"] == "api_error"


def test_bad_upstream_json_and_dead_backend_fall_back(make_gateway, upstream):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    gw = make_gateway(model_list=[
        backend_entry("cheap", upstream.base), backend_entry("strong", upstream.base),
        backend_entry("dead", dead)],
        routing={"model_map": {"strong": "dead"}, "fallback": ["strong"]})
    r = poem(gw)  # the policy's "strong" is served by the dead backend
    assert r.status_code == 200
    attempts = r.json()["router"]["attempts"]
    assert attempts[0] == {"model": "dead", "error": "connect", "status": None,
                           "message": attempts[0]["message"]}
    assert r.json()["router"]["model"] == "cheap"
    # a backend answering invalid JSON counts as a failure too
    upstream.control("cheap", fail="bad_json", fail_times=1)
    r = httpx.post(gw.base + "/chat/completions", json={
        "model": "router-knn-1000", "messages": [{"role": "user", "content": POEM.format(3)}]})
    assert r.status_code == 200
    assert [a["error"] for a in r.json()["router"]["attempts"]][0] == "bad_response"


def test_fallback_tries_are_bounded(make_gateway, upstream):
    gw = make_gateway(model_list=[
        backend_entry("cheap", upstream.base), backend_entry("strong", upstream.base),
        backend_entry("third", upstream.base)],
        routing={"max_fallback_tries": 1, "fallback": ["third"]})
    upstream.control("*", fail="500", fail_times=-1)
    r = poem(gw)
    assert r.status_code == 502
    assert upstream.calls("strong") + upstream.calls("cheap") + upstream.calls("third") == 2


def test_pass_through_does_not_fall_back(make_gateway, upstream):
    gw = make_gateway()
    upstream.control("strong", fail="429", fail_times=-1)
    r = poem(gw, model="strong")
    assert r.status_code == 502
    assert upstream.calls("cheap") == 0
