"""The gateway over real HTTP with the official openai SDK: chat, streaming, errors, routing."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.upstream import MATH, POEM, GatewayServer, gateway_config, tiny_artifact


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw")
    art = tiny_artifact(tmp / "artifact")
    cfg = gateway_config(upstream.base, art, tmp / "state", routing={"lam": 10.0})
    server = GatewayServer(cfg).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(upstream):
    upstream.upstream.reset()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_sdk_chat_is_routed_by_the_policy(gateway):
    client = gateway.openai()
    # math: both models are right, lam=10 prefers the cheap one; poems need the strong one
    raw = client.chat.completions.with_raw_response.create(model="router-auto",
                                                           messages=ask(MATH.format(3)))
    comp = raw.parse()
    assert raw.headers["x-router-model"] == "cheap"
    assert comp.choices[0].message.content.startswith("[cheap]")
    assert raw.headers["x-router-request-id"].startswith("cr-")
    router = comp.model_extra["router"]
    assert router["model"] == "cheap" and router["policy"] == "knn" and router["lam"] == 10.0
    assert [c["model"] for c in router["candidates"]] == ["cheap", "strong"]
    # the cost is the backend's price times the usage the upstream reported
    expected = comp.usage.prompt_tokens * 1e-6 + comp.usage.completion_tokens * 2e-6
    assert router["cost"] == pytest.approx(expected)
    assert float(raw.headers["x-router-cost"]) == pytest.approx(expected, abs=1e-9)

    comp = client.chat.completions.create(model="router-auto", messages=ask(POEM.format(4)))
    assert comp.model_extra["router"]["model"] == "strong"


def test_per_request_lam_follows_routellm_names(gateway):
    client = gateway.openai()
    # lam = 0: quality only -> the strong model (cheap never writes poems, ties go cheaper)
    comp = client.chat.completions.create(model="router-knn-0", messages=ask(POEM.format(1)))
    assert comp.model_extra["router"]["model"] == "strong"
    assert comp.model_extra["router"]["lam"] == 0.0
    # a huge lam makes cost dominate -> cheap even for a poem
    comp = client.chat.completions.create(model="router-knn-1000", messages=ask(POEM.format(1)))
    assert comp.model_extra["router"]["model"] == "cheap"
    assert comp.model_extra["router"]["lam"] == 1000.0


def test_backend_name_is_passed_through(gateway, upstream):
    client = gateway.openai()
    comp = client.chat.completions.create(model="strong", messages=ask(MATH.format(1)),
                                          temperature=0.2, max_tokens=5, seed=7)
    assert comp.model_extra["router"]["model"] == "strong"
    assert comp.model_extra["router"]["policy"] is None
    assert comp.usage.completion_tokens == 5  # max_tokens reached the upstream
    assert upstream.calls("strong") == 1 and upstream.calls("cheap") == 0


def test_sdk_streaming_passes_chunks_through(gateway, upstream):
    client = gateway.openai()
    upstream.control("*", stream_chunks=5)
    chunks = list(client.chat.completions.create(
        model="router-auto", messages=ask(MATH.format(2)), stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[cheap] reply to: {MATH.format(2)}"[: len(text)] and len(text) > 10
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    assert {c.id for c in chunks} == {chunks[0].id}


def test_raw_stream_is_the_upstream_bytes_plus_a_router_comment(gateway, upstream):
    body = {"model": "cheap", "messages": ask("hello"), "stream": True}
    direct = httpx.post(upstream.base + "/chat/completions", json=body).text
    via = httpx.post(gateway.base + "/chat/completions", json=body)
    assert via.headers["content-type"].startswith("text/event-stream")
    assert via.headers["x-router-model"] == "cheap"
    data_direct = [ln for ln in direct.split("\n") if ln.startswith("data:")]
    data_via = [ln for ln in via.text.split("\n") if ln.startswith("data:")]
    # same events (ids/timestamps differ per call)
    strip = [json.loads(d[5:]) if "DONE" not in d else d for d in data_direct]
    got = [json.loads(d[5:]) if "DONE" not in d else d for d in data_via]
    for a, b in zip(strip, got, strict=True):
        if isinstance(a, dict):
            a.pop("id"), b.pop("id"), a.pop("created"), b.pop("created")
        assert a == b
    comment = [ln for ln in via.text.split("\n") if ln.startswith(": x-router ")]
    info = json.loads(comment[0][len(": x-router "):])
    assert info["model"] == "cheap" and info["cost"] > 0
    assert info["request_id"] == via.headers["x-router-request-id"]


def test_sdk_errors_are_openai_errors(gateway):
    client = gateway.openai()
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-nope", messages=ask("x"))
    assert exc.value.code == "model_not_found"
    assert "router-auto" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="router-auto", messages=ask("x"), temperature=9)
    assert exc.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="router-auto", messages=[])


def test_models_health_ready_metrics(gateway):
    client = gateway.openai()
    ids = [m.id for m in client.models.list()]
    assert ids == ["router-auto", "router-knn", "cheap", "strong"]
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/ready")
    assert ready.status_code == 200 and ready.json()["default_policy"] == "knn"
    client.chat.completions.create(model="router-auto", messages=ask(MATH.format(9)))
    text = httpx.get(gateway.url + "/metrics").text
    assert 'costroute_routing_decisions_total{model="cheap",policy="knn"}' in text
    assert "costroute_request_latency_seconds_bucket" in text
    assert 'costroute_spend_usd_total{model="cheap"}' in text


def test_feedback_roundtrip(gateway):
    client = gateway.openai()
    raw = client.chat.completions.with_raw_response.create(model="router-auto",
                                                           messages=ask(MATH.format(5)))
    rid = raw.headers["x-router-request-id"]
    r = httpx.post(gateway.base + "/feedback", json={"request_id": rid, "reward": 0.75})
    assert r.status_code == 200
    # knn does not learn online: the reward is recorded, the policy is unchanged
    assert r.json() == {"request_id": rid, "reward": 0.75, "model": "cheap", "updated": False,
                        "queued": False}
    again = httpx.post(gateway.base + "/feedback", json={"request_id": rid, "reward": 0.5})
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_feedback"
    unknown = httpx.post(gateway.base + "/feedback", json={"request_id": "cr-x", "reward": 1})
    assert unknown.status_code == 404
    bad = httpx.post(gateway.base + "/feedback", json={"request_id": rid, "reward": 1.5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reward"
    gateway.gateway.outcomes.flush()
    recs = {r["request_id"]: r for r in gateway.gateway.outcome_store.records()}
    assert recs[rid]["feedback"]["reward"] == 0.75
