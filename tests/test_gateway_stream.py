"""Streams stay streams: JSON answers to ``stream: true`` become SSE, anything else an error
event, and every byte the gateway streams parses as SSE (real HTTP, openai SDK)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.upstream import GatewayServer, gateway_config, parse_sse


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    cfg = gateway_config(upstream.base, None, tmp_path_factory.mktemp("state"))
    gw = GatewayServer(cfg).start()
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset(upstream):
    yield
    upstream.upstream.reset()


def raw_stream(gw: GatewayServer, text: str, model: str = "cheap", **extra) -> httpx.Response:
    r = httpx.post(gw.base + "/chat/completions", timeout=30, json={
        "model": model, "stream": True, "messages": [{"role": "user", "content": text}],
        **extra})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return r


def router_info(comments: list[str]) -> dict:
    found = [c for c in comments if c.startswith("x-router ")]
    assert len(found) == 1, comments
    return json.loads(found[0][len("x-router "):])


def test_json_answer_to_a_stream_request_is_streamed_through_the_sdk(gateway, upstream):
    upstream.control("cheap", stream_as="json")
    text = "hello from a backend that ignores stream"
    client = gateway.openai()
    stream = client.chat.completions.create(
        model="cheap", stream=True, messages=[{"role": "user", "content": text}])
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == f"[cheap] reply to: {text[:40]}"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert upstream.calls("cheap") == 1


def test_json_answer_converted_with_usage_and_exact_cost(gateway, upstream):
    upstream.control("cheap", stream_as="json", completion_tokens=7)
    r = raw_stream(gateway, "count my tokens please", stream_options={"include_usage": True})
    events, comments = parse_sse(r.content)
    assert events[-1] == "[DONE]"
    usage = [e for e in events[:-1] if e.get("usage")]
    assert len(usage) == 1 and usage[0]["choices"] == []
    assert usage[0]["usage"]["completion_tokens"] == 7
    info = router_info(comments)
    p = usage[0]["usage"]["prompt_tokens"]
    assert info["usage_estimated"] is False
    assert info["cost"] == pytest.approx(p * 1e-6 + 7 * 2e-6)


@pytest.mark.parametrize("mode", ["html", "empty"])
def test_other_non_sse_answers_become_an_error_event(gateway, upstream, mode):
    upstream.control("cheap", stream_as=mode)
    r = raw_stream(gateway, f"a {mode} answer")
    events, comments = parse_sse(r.content)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and errors[0]["error"]["message"].startswith("cheap: ")
    assert events[-1] == "[DONE]"
    router_info(comments)
    with pytest.raises(openai.APIError, match="cheap: answered a stream request"):
        list(gateway.openai().chat.completions.create(
            model="cheap", stream=True, messages=[{"role": "user", "content": "again"}]))


def test_router_comment_starts_on_its_own_line(gateway, upstream):
    upstream.control("cheap", stream_as="sse-unterminated")
    r = raw_stream(gateway, "an upstream that forgets the last blank line")
    events, comments = parse_sse(r.content)
    assert events[-1] == "[DONE]"
    assert b"\n: x-router " in r.content
    router_info(comments)


@pytest.mark.parametrize("model", ["cheap", "router-auto"])
def test_every_streamed_byte_parses_as_sse(gateway, model):
    r = raw_stream(gateway, "a normal stream", model=model,
                   stream_options={"include_usage": True})
    events, comments = parse_sse(r.content)
    content = "".join(e["choices"][0]["delta"].get("content") or ""
                      for e in events[:-1] if e["choices"])
    assert content.endswith("a normal stream")
    assert events[-1] == "[DONE]"
    assert router_info(comments)["request_id"] == r.headers["x-router-request-id"]
