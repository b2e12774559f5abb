"""Bad inputs: every one a 4xx with an OpenAI-style error body, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.upstream import GatewayServer, UpstreamServer, gateway_config, tiny_artifact

OK_MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gw")
    up = UpstreamServer().start()
    art = tiny_artifact(tmp / "artifact")
    cfg = gateway_config(up.base, art, tmp / "state", routing={"max_body_bytes": 4096})
    gw = GatewayServer(cfg).start()
    yield up, gw
    gw.stop()
    up.stop()


def body(**kw) -> bytes:
    return json.dumps({"model": "router-auto", "messages": OK_MSG, **kw}).encode()


BAD_BODIES = {
    "malformed json": (b'{"model": "router-auto", "messages": [', 400, None),
    "not an object": (b"[1, 2]", 400, None),
    "empty body": (b"", 400, None),
    "unknown model": (json.dumps({"model": "gpt-9", "messages": OK_MSG}).encode(), 404, "model"),
    "negative lam": (json.dumps({"model": "router-knn--1", "messages": OK_MSG}).encode(), 404,
                     "model"),
    "unknown policy": (json.dumps({"model": "router-mlp-0.5", "messages": OK_MSG}).encode(),
                       404, "model"),
    "missing model": (json.dumps({"messages": OK_MSG}).encode(), 400, "model"),
    "missing messages": (json.dumps({"model": "router-auto"}).encode(), 400, "messages"),
    "empty messages": (body(messages=[]), 400, "messages"),
    "messages not a list": (body(messages="hi"), 400, "messages"),
    "bad role": (body(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0].role"),
    "bad content": (body(messages=[{"role": "user", "content": 5}]), 400, None),
    "temperature too high": (body(temperature=3), 400, "temperature"),
    "temperature not a number": (body(temperature="hot"), 400, "temperature"),
    "top_p out of range": (body(top_p=-0.1), 400, "top_p"),
    "max_tokens zero": (body(max_tokens=0), 400, "max_tokens"),
    "n zero": (body(n=0), 400, "n"),
    "stream not a bool": (body(stream="yes"), 400, "stream"),
    "model not a string": (json.dumps({"model": 5, "messages": OK_MSG}).encode(), 400, "model"),
    "oversized body": (body(messages=[{"role": "user", "content": "x" * 10_000}]), 413, None),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_chat_bodies_get_openai_errors(servers, name):
    up, gw = servers
    content, status, param = BAD_BODIES[name]
    r = httpx.post(gw.base + "/chat/completions", content=content,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    assert r.headers["x-router-request-id"].startswith("cr-")


def test_oversized_chunked_body_without_length(servers):
    up, gw = servers

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    r = httpx.post(gw.base + "/chat/completions", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/chat/completions", 405),
    ("GET", "/v1/nothing", 404),
    ("POST", "/v1/feedback", 400),
])
def test_wrong_paths_and_methods(servers, method, path, status):
    up, gw = servers
    r = httpx.request(method, gw.url + path, content=b"{}")
    assert r.status_code == status
    assert r.json()["error"]["message"]


@pytest.mark.parametrize("payload,param", [
    (b"nope", None),
    (json.dumps({"request_id": "x"}).encode(), "reward"),
    (json.dumps({"request_id": "x", "reward": -1}).encode(), "reward"),
    (json.dumps({"request_id": "x", "reward": 0.5, "extra": 1}).encode(), "extra"),
])
def test_bad_feedback(servers, payload, param):
    up, gw = servers
    r = httpx.post(gw.base + "/feedback", content=payload)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_upstream_rejection_is_returned_not_retried(servers):
    up, gw = servers
    up.control("strong", fail="400", fail_times=-1)
    try:
        r = httpx.post(gw.base + "/chat/completions",
                       json={"model": "strong", "messages": OK_MSG})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "upstream_rejected"
        assert up.calls("strong") == 1
    finally:
        up.upstream.reset()


def test_no_request_ever_got_a_500(servers):
    up, gw = servers
    text = httpx.get(gw.url + "/metrics").text
    assert 'status="500"' not in text
