"""LiteLLM proxy configs: master_key protects the gateway, router_settings map, the rest warn."""

from __future__ import annotations

import logging

import httpx
import pytest

from router.proxy.backends import BackendPool
from router.proxy.config import ConfigError, parse_config
from router.proxy.litellm_compat import apply_litellm_sections
from tests.upstream import GatewayServer, backend_entry

MASTER = "sk-litellm-master-1234"


def litellm_config(base: str, state_dir, **extra) -> dict:
    """A config as a LiteLLM user writes it: model_list plus its three settings sections."""
    return {
        "model_list": [backend_entry("cheap", base, 1e-6, 2e-6),
                       backend_entry("strong", base, 1e-5, 2e-5)],
        "general_settings": {"master_key": MASTER, "database_url": "postgresql://x/y"},
        "router_settings": {"num_retries": 1, "timeout": 12.5, "allowed_fails": 2,
                            "cooldown_time": 7, "routing_strategy": "simple-shuffle",
                            "fallbacks": [{"cheap": ["strong"]}, {"strong": ["cheap"]}]},
        "litellm_settings": {"drop_params": True, "success_callback": ["langfuse"]},
        "state": {"dir": str(state_dir)},
        **extra,
    }


def test_sections_are_mapped_and_every_ignored_field_named(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="router.proxy.config"):
        cfg = parse_config(litellm_config("http://127.0.0.1:9", tmp_path))
    r = cfg.routing
    assert (r.max_fallback_tries, r.default_timeout, r.allowed_fails, r.cooldown_seconds) == (
        1, 12.5, 2, 7.0)
    assert r.fallback == ["strong", "cheap"]
    assert cfg.keys.is_required and [k.name for k in cfg.keys.keys] == ["master"]
    logged = caplog.text
    for field in ("general_settings.database_url", "router_settings.routing_strategy",
                  "litellm_settings.drop_params", "litellm_settings.success_callback"):
        assert field in logged
    assert MASTER not in logged


def test_our_routing_section_wins_with_a_warning():
    data, warnings = apply_litellm_sections({
        "routing": {"max_fallback_tries": 3}, "router_settings": {"num_retries": 0}})
    assert data["routing"]["max_fallback_tries"] == 3
    assert any("routing.max_fallback_tries wins" in w for w in warnings)


@pytest.mark.parametrize("bad, message", [
    ({"general_settings": {"master_key": MASTER}, "keys": {"required": False}}, "run open"),
    ({"general_settings": {"master_key": ""}}, "master_key"),
    ({"router_settings": {"fallbacks": [["a"]]}}, "fallbacks[0]"),
    ({"router_settings": "fast"}, "router_settings: must be a mapping"),
])
def test_unusable_sections_are_clear_errors(tmp_path, bad, message):
    data = {"model_list": [backend_entry("cheap", "http://127.0.0.1:9", 1e-6, 2e-6)],
            "state": {"dir": str(tmp_path)}, **bad}
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert message in str(exc.value)


def test_master_key_protects_the_gateway_over_http(upstream, tmp_path):
    cfg = parse_config(litellm_config(upstream.base, tmp_path / "state"))
    gw = GatewayServer(cfg).start()
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}
    try:
        before = upstream.calls("cheap")
        r = httpx.post(gw.base + "/chat/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        r = httpx.post(gw.base + "/chat/completions", json=body,
                       headers={"authorization": "Bearer sk-wrong"})
        assert r.status_code == 401
        assert upstream.calls("cheap") == before  # refused requests never reach the backend
        comp = gw.openai(api_key=MASTER).chat.completions.create(**body)
        assert comp.choices[0].message.content
    finally:
        gw.stop()


def test_allowed_fails_delays_the_cooldown():
    pool = BackendPool({"a": object()}, cooldown_seconds=30, allowed_fails=2)
    pool.fail("a")
    pool.fail("a")
    assert not pool.cooling("a")
    pool.fail("a")
    assert pool.cooling("a")
    pool.ok("a")
    assert not pool.cooling("a")
