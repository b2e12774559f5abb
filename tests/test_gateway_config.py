"""Gateway config: LiteLLM-style model_list, readable errors naming the key, CLI start errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from router.cli import main as router_main
from router.proxy.config import ConfigError, load_config, parse_config
from tests.upstream import GatewayServer, UpstreamServer, backend_entry

REPO = Path(__file__).resolve().parents[1]
GOOD = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m",
                                                              "api_base": "http://x/v1"}}]}


def with_(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data.update(changes)
    return data


def test_example_config_is_valid(monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TEAM_A_KEY"):
        monkeypatch.setenv(var, f"secret-{var}")
    cfg = load_config(REPO / "examples" / "config.yaml")
    assert [m.model_name for m in cfg.model_list] == ["gpt-4o-mini", "gpt-4o", "claude-3-haiku",
                                                      "local-llama"]
    assert cfg.model_list[0].litellm_params.api_key == "secret-OPENAI_API_KEY"
    assert cfg.timeout_for(cfg.backend("gpt-4o")) == 45
    assert cfg.timeout_for(cfg.backend("gpt-4o-mini")) == 30
    assert cfg.keys.is_required and cfg.keys.keys[0].key == "secret-TEAM_A_KEY"
    assert cfg.routing.model_map["gpt-4-1106-preview"] == "gpt-4o"


def test_deploy_config_is_valid_and_has_a_scrape_key(monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TEAM_A_KEY", "METRICS_KEY"):
        monkeypatch.setenv(var, f"secret-{var}")
    cfg = load_config(REPO / "deploy" / "config.yaml")
    metrics = {k.name: k for k in cfg.keys.keys}["metrics"]
    assert cfg.keys.is_required and metrics.budget_usd == 0


@pytest.mark.parametrize("data,expected", [
    (with_(routin={}), "routin: unknown key"),
    ({}, "model_list: required key is missing"),
    (with_(model_list=[]), "model_list: List should have at least 1 item"),
    (with_(model_list=[{"model_name": "m", "litellm_params": {"model": "x", "timeout": -1}}]),
     "model_list[0].litellm_params.timeout: Input should be greater than 0"),
    (with_(model_list=[{"model_name": "m", "litellm_params": {"api_base": "http://x"}}]),
     "model_list[0].litellm_params.model: required key is missing"),
    (with_(model_list=[{"model_name": "m", "litellm_params": {"model": "x",
                                                              "api_base": "ftp://x"}}]),
     "model_list[0].litellm_params.api_base: must start with http"),
    (with_(model_list=GOOD["model_list"] * 2), "duplicate model_name ['m']"),
    (with_(model_list=[{"model_name": "router-x", "litellm_params": {"model": "x"}}]),
     "model_list[0].model_name: names starting with 'router-' are reserved"),
    (with_(routing={"fallback": ["nope"]}), "routing.fallback: unknown backend(s) ['nope']"),
    (with_(routing={"model_map": {"gpt-4": "nope"}}), "routing.model_map: unknown backend"),
    (with_(routing={"timeouts": {"m": 0}}), "timeout of 'm' must be a number > 0"),
    (with_(routing={"lam": -1}), "routing.lam: Input should be greater than or equal to 0"),
    (with_(routing={"max_fallback_tries": "two"}), "routing.max_fallback_tries: Input should be"),
    (with_(state={"redis_url": "localhost:6379"}), "state.redis_url: must be a redis:// URL"),
    (with_(keys={"keys": [{"name": "a"}]}), "keys.keys[0]: give exactly one of 'key' or"),
    (with_(keys={"keys": [{"name": "a", "key_sha256": "abc"}]}), "64 hex characters"),
    (with_(keys={"keys": [{"name": "a", "key": "k", "budget_usd": -1}]}),
     "keys.keys[0].budget_usd: Input should be greater than or equal to 0"),
    (with_(model_list=[{"model_name": "m", "litellm_params": {"model": "replay/gpt-4"}}]),
     "replay backends need replay.dataset"),
    ([1, 2], "the top level must be a mapping"),
])
def test_bad_configs_name_the_key(data, expected):
    with pytest.raises(ConfigError) as exc:
        parse_config(data, source="cfg.yaml")
    assert expected in str(exc.value), str(exc.value)


def test_missing_environment_variable(monkeypatch):
    monkeypatch.delenv("COSTROUTE_TEST_NOPE", raising=False)
    data = with_(model_list=[{"model_name": "m", "litellm_params": {
        "model": "openai/m", "api_key": "os.environ/COSTROUTE_TEST_NOPE"}}])
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.litellm_params\.api_key: "
                                          r"environment variable 'COSTROUTE_TEST_NOPE'"):
        parse_config(data)


def test_redis_url_from_environment(monkeypatch):
    monkeypatch.setenv("COSTROUTE_REDIS_URL", "redis://cache:6379/1")
    assert parse_config(GOOD).state.redis_url == "redis://cache:6379/1"
    monkeypatch.setenv("COSTROUTE_REDIS_URL", "cache:6379")
    with pytest.raises(ConfigError, match="COSTROUTE_REDIS_URL"):
        parse_config(GOOD)


@pytest.mark.parametrize("content,expected", [
    ("model_list: [", "not valid YAML"),
    ("model_list:\n  - model_name: m\n    litellm_params: {model: x, timeout: fast}\n",
     "model_list[0].litellm_params.timeout"),
    ("model_list:\n  - {model_name: m, litellm_params: {model: openai/m}}\n"
     "routing: {artifact: /nonexistent/artifact}\n",
     "routing.artifact: artifact directory '/nonexistent/artifact' does not exist"),
    ("model_list:\n  - {model_name: m, litellm_params: {model: openai/m}}\n"
     "routing: {policy: knn}\n", "routing.policy: 'knn' needs a trained artifact"),
])
def test_serve_fails_at_start_with_a_message(tmp_path, capsys, content, expected):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    assert router_main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("router serve: error: ") and expected in err, err
    assert "Traceback" not in err


def test_serve_needs_a_config(capsys):
    assert router_main(["serve"]) == 2
    assert "give --config FILE (or --demo)" in capsys.readouterr().err
    assert router_main(["serve", "--config", "/nonexistent.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_without_an_artifact_routing_is_by_price(tmp_path):
    up = UpstreamServer().start()
    cfg = parse_config({
        "model_list": [backend_entry("mid", up.base, 5e-6, 5e-6),
                       backend_entry("low", up.base, 1e-6, 1e-6),
                       backend_entry("high", up.base, 9e-6, 9e-6)],
        "state": {"dir": str(tmp_path)}})
    gw = GatewayServer(cfg).start()
    try:
        r = httpx.post(gw.base + "/chat/completions", json={
            "model": "router-auto", "messages": [{"role": "user", "content": "hi"}]})
        router = r.json()["router"]
        assert router["policy"] == "cheapest"
        assert [c["model"] for c in router["candidates"]] == ["low", "mid", "high"]
        up.control("low", fail="500")
        r = httpx.post(gw.base + "/chat/completions", json={
            "model": "router-auto", "messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["router"]["model"] == "mid"
    finally:
        gw.stop()
        up.stop()


def test_encoder_policy_mismatch_fails_at_start(tmp_path, capsys):
    import json

    from tests.upstream import tiny_artifact

    art = tiny_artifact(tmp_path / "artifact", dim=32)
    cfg_json = json.loads((art / "config.json").read_text())
    cfg_json["meta"]["encoder"]["backend_options"]["dim"] = 16  # not what it was trained on
    (art / "config.json").write_text(json.dumps(cfg_json))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model_list": [{"model_name": n, "litellm_params": {"model": f"openai/{n}",
                                                            "api_base": "http://127.0.0.1:9/v1"}}
                       for n in ("cheap", "strong")],
        "routing": {"artifact": str(art)}, "state": {"dir": str(tmp_path / "state")}}))
    assert router_main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    # named by the encoder (its recorded dim) or by the policy check, never a traceback
    assert err.startswith("router serve: error: routing: ") and "16" in err and "32" in err
    assert "Traceback" not in err
