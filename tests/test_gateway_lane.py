"""The direct chat lane (router.proxy.guard.GatewayApp): same answers, gate and errors as the
full middleware stack, and out of the way once a deployment adds its own middleware."""

from __future__ import annotations

import httpx
import pytest

from tests.upstream import GatewayServer, gateway_config, tiny_artifact

KEY = "sk-lane-test-4c1d2e"
CHAT = {"model": "router-auto", "max_tokens": 8,
        "messages": [{"role": "user", "content": "What is 2 plus 2?"}]}


class Tag:
    """Middleware that marks every response (to see whether a request went through it)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-tag", b"1")]}
            await send(message)

        await self.app(scope, receive, tagged)


def _server(upstream, tmp_path, **sections) -> GatewayServer:
    cfg = gateway_config(upstream.base, tiny_artifact(tmp_path / "art"), tmp_path / "state",
                         keys={"keys": [{"name": "lane", "key": KEY}]}, **sections)
    return GatewayServer(cfg)


@pytest.fixture
def lane(upstream, tmp_path):
    server = _server(upstream, tmp_path).start()
    yield server
    server.stop()


def test_chat_takes_the_lane_with_the_same_gate_and_errors(lane, monkeypatch):
    calls = []
    handler = lane.app._lane[1]

    async def counted(request):
        calls.append(request.url.path)
        return await handler(request)

    keys, _, on_error, n = lane.app._lane
    monkeypatch.setattr(lane.app, "_lane", (keys, counted, on_error, n))
    ok = {"authorization": f"Bearer {KEY}"}
    for path in ("/v1/chat/completions", "/chat/completions"):
        r = httpx.post(lane.url + path, json=CHAT, headers=ok)
        assert r.status_code == 200, r.text
        assert r.headers["x-router-model"] in ("cheap", "strong")
        assert r.json()["router"]["request_id"] == r.headers["x-router-request-id"]
    assert calls == ["/v1/chat/completions", "/chat/completions"]
    # the key gate's answer, as the middleware gives it on every other path
    r = httpx.post(lane.url + "/v1/chat/completions", json=CHAT,
                   headers={"authorization": "Bearer sk-wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert len(calls) == 2  # refused before the handler
    # handler errors keep their OpenAI-style bodies and the request id
    r = httpx.post(lane.url + "/v1/chat/completions", headers=ok,
                   json={**CHAT, "model": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert r.headers["x-router-request-id"].startswith("cr-")
    r = httpx.post(lane.url + "/v1/chat/completions", headers=ok, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    # other methods on the path still get the stack's answer
    r = httpx.get(lane.url + "/v1/chat/completions", headers=ok)
    assert r.status_code == 405


def test_a_bug_in_the_handler_is_a_500_body(lane, monkeypatch):
    async def broken(request):
        raise RuntimeError("boom")

    keys, _, on_error, n = lane.app._lane
    monkeypatch.setattr(lane.app, "_lane", (keys, broken, on_error, n))
    r = httpx.post(lane.url + "/v1/chat/completions", json=CHAT,
                   headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


def test_middleware_added_later_sees_chat_requests(upstream, tmp_path):
    server = _server(upstream, tmp_path)
    server.app.add_middleware(Tag)  # e.g. CORS in a deployment
    server.start()
    try:
        ok = {"authorization": f"Bearer {KEY}"}
        r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=ok)
        assert r.status_code == 200 and r.headers.get("x-tag") == "1"
        r = httpx.post(server.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 401 and r.headers.get("x-tag") == "1"
    finally:
        server.stop()
