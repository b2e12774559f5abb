"""Both backend paths against the local upstream: litellm (any provider) and the httpx fast path."""

from __future__ import annotations

import httpx
import pytest

from router.proxy.config import parse_config
from tests.upstream import GatewayServer, UpstreamServer, backend_entry, free_port


def config(up: UpstreamServer, state_dir, http_client: str):
    cfg = parse_config({
        "model_list": [
            backend_entry("via-litellm", up.base, 1e-6, 2e-6),
            backend_entry("via-fast", up.base, 1e-6, 2e-6),
            backend_entry("slow-litellm", up.base, 1e-6, 2e-6, timeout=0.3),
            backend_entry("slow-fast", up.base, 1e-6, 2e-6, timeout=0.3),
            backend_entry("dead-fast", f"http://127.0.0.1:{free_port()}/v1"),
            # no price in the config: litellm's bundled price table knows gpt-4o-mini
            {"model_name": "gpt-4o-mini", "litellm_params": {"model": "openai/gpt-4o-mini",
                                                             "api_base": up.base}},
        ],
        "routing": {"fast_path": True, "http_client": http_client, "http_shards": 2},
        "state": {"dir": str(state_dir)},
    })
    for entry in cfg.model_list:
        if entry.model_name.endswith("litellm"):
            entry.fast_path = False
    return cfg


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    up = UpstreamServer(hang_seconds=3.0).start()
    gws = {kind: GatewayServer(config(up, tmp_path_factory.mktemp(kind), kind)).start()
           for kind in ("aiohttp", "httpx")}
    yield up, gws["aiohttp"], gws
    for gw in gws.values():
        gw.stop()
    up.stop()


PATHS = [("via-litellm", "aiohttp"), ("via-fast", "aiohttp"), ("via-fast", "httpx")]


def chat(gw, model, **kw) -> httpx.Response:
    return httpx.post(gw.base + "/chat/completions", timeout=20, json={
        "model": model, "messages": [{"role": "user", "content": "hello there"}], **kw})


def test_backend_kinds_and_prices(servers):
    up, gw, gws = servers
    pool = gw.gateway.pool
    assert pool["via-litellm"].kind == "litellm" and pool["via-fast"].kind == "aiohttp"
    assert gws["httpx"].gateway.pool["via-fast"].kind == "httpx"
    import litellm

    info = litellm.model_cost["gpt-4o-mini"]
    b = pool["gpt-4o-mini"]
    assert b.price_source == "litellm"
    assert b.price_in == pytest.approx(info["input_cost_per_token"])
    assert b.price_out == pytest.approx(info["output_cost_per_token"])


@pytest.mark.parametrize("model,client", PATHS)
def test_all_paths_answer_the_same(servers, model, client):
    up, _, gws = servers
    gw = gws[client]
    r = chat(gw, model, max_tokens=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == f"[{model}] reply to: hello there"
    assert body["usage"]["completion_tokens"] == 7
    assert body["router"]["cost"] == pytest.approx(
        body["usage"]["prompt_tokens"] * 1e-6 + 7 * 2e-6)


@pytest.mark.parametrize("model,client", PATHS)
def test_all_paths_stream(servers, model, client):
    up, _, gws = servers
    gw = gws[client]
    r = chat(gw, model, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    import json

    events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks
                   if c.get("choices"))
    assert text == f"[{model}] reply to: hello there"
    info = json.loads(next(ln for ln in r.text.split("\n") if ln.startswith(": x-router "))[11:])
    assert info["usage_estimated"] is False  # the upstream's usage chunk was read
    assert info["cost"] == pytest.approx(2 * 1e-6 + 16 * 2e-6)  # "hello there": 2 tokens


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
def test_fast_path_errors_are_classified(servers, client):
    up, _, gws = servers
    gw = gws[client]
    up.control("via-fast", fail="503", fail_times=1)
    r = chat(gw, "via-fast")
    assert r.status_code == 502
    assert "upstream failure 503" in r.json()["error"]["message"]
    up.control("via-fast", fail="400", fail_times=1)
    r = chat(gw, "via-fast")
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected"
    up.control("slow-fast", fail="timeout", fail_times=1)
    r = chat(gw, "slow-fast")
    assert r.status_code == 504 and "slow-fast (timeout" in r.json()["error"]["message"]
    r = chat(gw, "dead-fast")
    assert r.status_code == 502 and "dead-fast (connect" in r.json()["error"]["message"]
    r = chat(gw, "slow-fast", stream=True)  # the stream opens after a failure
    assert r.status_code == 200 and r.text.rstrip().endswith("}")
    up.upstream.reset()


def test_litellm_errors_are_classified(servers):
    up, gw, _ = servers
    up.control("via-litellm", fail="400", fail_times=1)
    r = chat(gw, "via-litellm")
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected"
    up.control("via-litellm", fail="500", fail_times=1)
    r = chat(gw, "via-litellm")
    assert r.status_code == 502
    up.control("slow-litellm", fail="timeout", fail_times=1)
    r = chat(gw, "slow-litellm")
    assert r.status_code == 504, r.text
    up.upstream.reset()
