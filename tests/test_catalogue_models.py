"""Model catalogue: YAML entries, litellm's bundled price table, overrides and errors."""

from __future__ import annotations

import pytest

from router.catalogue import (
    CatalogueError,
    ModelCatalogue,
    default_catalogue_path,
    litellm_price,
)

ROUTERBENCH_MODELS = [
    "WizardLM/WizardLM-13B-V1.2", "claude-instant-v1", "claude-v1", "claude-v2",
    "gpt-3.5-turbo-1106", "gpt-4-1106-preview", "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat", "mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
]
ROUTERDC_MODELS = [
    "mistralai/Mistral-7B-v0.1", "meta-math/MetaMath-Mistral-7B",
    "itpossible/Chinese-Mistral-7B-v0.1", "HuggingFaceH4/zephyr-7b-beta",
    "cognitivecomputations/dolphin-2.6-mistral-7b", "meta-llama/Meta-Llama-3-8B",
    "cognitivecomputations/dolphin-2.9-llama3-8b",
]


@pytest.fixture(scope="module")
def cat():
    return ModelCatalogue.load()


def test_default_file_is_found():
    path = default_catalogue_path()
    assert path.name == "models.yaml" and path.is_file()


def test_covers_routerbench_and_routerdc(cat):
    for m in ROUTERBENCH_MODELS + ROUTERDC_MODELS:
        assert cat.known(m), m
        p_in, p_out = cat.price(m)
        assert 0 < p_in <= 30 and 0 < p_out <= 60, m


def test_routerbench_prices(cat):
    # the prices behind RouterBench's total_cost column
    assert cat.price("gpt-4-1106-preview") == pytest.approx((10.0, 30.0))
    assert cat.price("gpt-3.5-turbo-1106") == pytest.approx((1.0, 2.0))
    assert cat.price("claude-v2") == pytest.approx((8.0, 24.0))
    assert cat.price("mistralai/mixtral-8x7b-chat") == pytest.approx((0.6, 0.6))
    assert cat.price("WizardLM/WizardLM-13B-V1.2") == pytest.approx((0.3, 0.3))
    assert cat.price("mistralai/Mistral-7B-v0.1") == pytest.approx((0.2, 0.2))


def test_litellm_table_is_used_without_yaml_price(cat):
    info = cat.info("gpt-4-1106-preview")
    assert info.price_source == "litellm"
    assert cat.price("gpt-4-1106-preview") == pytest.approx(litellm_price("gpt-4-1106-preview"))
    assert cat.info("claude-v2").price_source == "catalogue"
    # bedrock id: looked up without its provider prefix
    assert litellm_price("bedrock/anthropic.claude-instant-v1") == pytest.approx((0.8, 2.4))


def test_yaml_overrides_litellm():
    cat = ModelCatalogue.from_mapping({"models": {
        "gpt-4o": {"litellm": "gpt-4o", "input_per_1m": 1.0, "output_per_1m": 2.0}}})
    assert cat.price("gpt-4o") == (1.0, 2.0)
    assert cat.info("gpt-4o").price_source == "catalogue"


def test_estimated_cost(cat):
    assert cat.estimated_cost("gpt-4-1106-preview", 1000, 100) == pytest.approx(0.013)
    info = cat.info("claude-v2")
    typical = (8.0 * info.typical_input_tokens + 24.0 * info.typical_output_tokens) / 1e6
    assert cat.estimated_cost("claude-v2") == pytest.approx(typical)
    with pytest.raises(CatalogueError):
        cat.estimated_cost("claude-v2", -1, 0)


def test_lookup_by_litellm_id_alias_and_litellm_only_name(cat):
    assert cat.info("together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1").name == \
        "mistralai/mixtral-8x7b-chat"
    assert cat.litellm_id("claude-v1") == "bedrock/anthropic.claude-v1"
    # not in the YAML but priced by litellm's table
    assert cat.known("gpt-4o-mini-2024-07-18")
    assert cat.info("gpt-4o-mini-2024-07-18").price_source == "litellm"
    strict = ModelCatalogue.from_mapping({"models": {"a": {"input_per_1m": 1, "output_per_1m": 1,
                                                           "aliases": ["alpha"]}}},
                                         litellm_fallback=False)
    assert strict.price("alpha") == (1.0, 1.0)
    assert not strict.known("gpt-4o-mini-2024-07-18")


def test_unknown_model_is_a_clear_error(cat):
    assert not cat.known("no-such-model-xyz")
    with pytest.raises(CatalogueError, match="unknown model 'no-such-model-xyz'"):
        cat.price("no-such-model-xyz")


def test_entry_without_any_price():
    cat = ModelCatalogue.from_mapping({"models": {"local": {"litellm": None}}}, "t.yaml")
    assert cat.known("local")
    with pytest.raises(CatalogueError, match="'local' has no price.*t.yaml"):
        cat.price("local")


@pytest.mark.parametrize("text,match", [
    ("models: [1, 2]", "'models' mapping"),
    ("models:\n  a: {input_per_1m: -1, output_per_1m: 1}", "must be >= 0"),
    ("models:\n  a: {input_per_1m: 1}", "both input_per_1m and output_per_1m"),
    ("models:\n  a: {inptu_per_1m: 1}", "unknown fields"),
    ("models:\n  a: {typical_output_tokens: 2.5}", "whole number"),
    ("models: {a: {}\n", "invalid YAML"),
])
def test_bad_catalogue_files(tmp_path, text, match):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(CatalogueError, match=match):
        ModelCatalogue.load(path)


def test_missing_catalogue_file(tmp_path):
    with pytest.raises(CatalogueError, match="not found"):
        ModelCatalogue.load(tmp_path / "nope.yaml")


def test_env_var_points_at_another_catalogue(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  only-me: {input_per_1m: 3, output_per_1m: 4}\n")
    monkeypatch.setenv("COSTROUTE_CATALOGUE", str(path))
    assert ModelCatalogue.load().names == ["only-me"]
