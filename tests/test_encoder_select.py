"""Serving-encoder choice: fast runtime by default, device logic, fallback, checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from router.encoding.encoder import (
    Encoder,
    EncoderError,
    TorchBackend,
    model_signature,
    register_backend,
    torch_placement,
    unload_models,
)
from router.encoding.onnx import default_threads
from router.encoding.select import (
    EncoderMismatchError,
    backend_plan,
    first_loading,
    serving_encoder,
)
from router.proxy.config import ConfigError, parse_config
from router.proxy.routing import hashing_encoder_config, load_encoder

MINI = "all-MiniLM-L6-v2"
CPU_CHAIN = [("onnx-int8", "cpu"), ("onnx", "cpu"), ("torch", "cpu")]


def test_cpu_plan_prefers_int8_only_where_it_was_validated():
    assert backend_plan(MINI, "torch") == CPU_CHAIN
    assert backend_plan("/models/other", "torch") == [("onnx", "cpu"), ("torch", "cpu")]
    assert backend_plan(MINI, "torch", device="cpu", cuda=True) == CPU_CHAIN


def test_gpu_plans_without_a_gpu():
    # torch sees CUDA: fp16 torch on the GPU first, then the CPU chain
    assert backend_plan(MINI, "torch", cuda=True) == [("torch", "cuda"), *CPU_CHAIN]
    # only onnxruntime-gpu: ONNX on the CUDA provider first
    assert backend_plan(MINI, "torch", ort_cuda=True) == [("onnx", "cuda"), *CPU_CHAIN]
    assert backend_plan(MINI, "onnx-int8", "auto", "cuda:1", cuda=True, ort_cuda=True) == [
        ("torch", "cuda:1"), ("onnx", "cuda:1"), *CPU_CHAIN]
    assert backend_plan(MINI, "torch", device="mps") == [("torch", "mps")]
    assert torch_placement(None, None, cuda=True) == ("cuda", True)
    assert torch_placement(None, None, cuda=False) == ("cpu", False)
    assert torch_placement("cuda:1", False, cuda=True) == ("cuda:1", False)


def test_explicit_choices_and_foreign_backends():
    assert backend_plan(MINI, "torch", "artifact") == [("torch", None)]
    assert backend_plan(MINI, "torch", "onnx") == [("onnx", None)]
    assert backend_plan(MINI, "hashing") == [("hashing", None)]
    with pytest.raises(EncoderMismatchError, match="different vectors"):
        backend_plan(MINI, "hashing", "onnx-int8")
    with pytest.raises(EncoderError, match="unknown encoder backend choice"):
        backend_plan(MINI, "torch", "fast")


def test_cache_never_mixes_runtimes():
    tags = {Encoder(backend=b, use_cache=False)._cache_model for b in ("torch", "onnx",
                                                                       "onnx-int8")}
    tags.add(Encoder(backend="torch", device="cuda", use_cache=False)._cache_model)
    assert len(tags) == 4 and f"{MINI}#fp16" in tags
    assert TorchBackend.cache_tag_for("cpu", {}) == ""
    assert TorchBackend.cache_tag_for("cuda", {"fp16": False}) == ""


def _broken(*args, **kwargs):
    raise EncoderError("onnxruntime is not installed")


def test_falls_back_to_the_next_runtime_with_a_warning(caplog):
    register_backend("broken-test", _broken)
    cfg = hashing_encoder_config(16)
    with caplog.at_level(logging.WARNING):
        enc = first_loading(cfg, [("broken-test", None), ("hashing", None)], 16,
                            use_cache=False)
    assert enc.backend_name == "hashing" and enc.loaded
    assert "broken-test unavailable" in caplog.text
    with pytest.raises(EncoderError, match="broken-test: onnxruntime is not installed"):
        first_loading(cfg, [("broken-test", None)], 16, use_cache=False)


def test_dimension_mismatch_is_a_clear_error():
    cfg = {**hashing_encoder_config(16), "dim": 16}
    assert load_encoder(cfg, "auto", use_cache=False).dim == 16
    with pytest.raises(EncoderMismatchError, match="trained on 32-d embeddings.*gives 16-d"):
        load_encoder(cfg, "auto", expected_dim=32, use_cache=False)


def test_model_signature_tells_a_different_model_behind_the_same_name(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 384}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    first = model_signature(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 768}')
    assert model_signature(tmp_path) != first
    enc = load_encoder(hashing_encoder_config(16), "auto", use_cache=False)
    cfg = enc.config()  # records the loaded model directory's signature
    assert cfg["model_signature"] == enc.model_signature
    assert load_encoder(cfg, "auto", use_cache=False).model_signature == enc.model_signature
    with pytest.raises(EncoderMismatchError, match="different model under the same name"):
        load_encoder({**cfg, "model_signature": "0" * 16}, "auto", use_cache=False)


def test_gateway_config_switch():
    base = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}]}
    assert parse_config(base).routing.encoder_backend == "auto"
    cfg = parse_config({**base, "routing": {"encoder_backend": "torch"}})
    assert cfg.routing.encoder_backend == "torch"
    with pytest.raises(ConfigError, match="routing.encoder_backend"):
        parse_config({**base, "routing": {"encoder_backend": "fast"}})


PROMPTS = ["What is the capital of France?", "Write a Python function that sorts a list.",
           "Which gas do plants absorb? (A) oxygen (B) carbon dioxide",
           "Summarise the plot of Hamlet in two sentences."]


@pytest.mark.slow
def test_auto_serves_int8_that_agrees_with_the_training_encoder():
    trained = Encoder(use_cache=False)
    ref = trained.encode(PROMPTS)
    enc = serving_encoder(trained.config(), "auto", expected_dim=ref.shape[1], use_cache=False)
    assert enc.backend_name == "onnx-int8" and enc.loaded and enc.device == "cpu"
    assert enc.backend.threads == default_threads()
    cos = (enc.encode(PROMPTS) * ref).sum(axis=1)
    assert cos.min() >= 0.99, cos
    # one-token texts agree less under int8 (~0.988 measured; see test_fast_encoder)
    assert float(enc.encode_one("hi") @ trained.encode_one("hi")) >= 0.97


@pytest.mark.slow
def test_encoder_threads_reach_the_onnx_session_from_the_gateway_config():
    base = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m"}}]}
    with pytest.raises(ConfigError, match="encoder_threads"):
        parse_config({**base, "routing": {"encoder_threads": 0}})
    threads = parse_config({**base, "routing": {"encoder_threads": 1}}).routing.encoder_threads
    trained = Encoder(use_cache=False).config()
    for choice in ("auto", "onnx"):
        enc = load_encoder(trained, choice, use_cache=False, threads=threads)
        assert enc.backend.threads == 1, choice
    # "artifact" serves the recorded runtime: the option reaches an ONNX-trained one
    onnx_cfg = {**trained, "backend": "onnx"}
    enc = load_encoder(onnx_cfg, "artifact", use_cache=False, threads=threads)
    assert enc.backend.threads == 1


@pytest.mark.slow
def test_auto_falls_back_to_torch_when_onnx_cannot_be_exported(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("COSTROUTE_CACHE_DIR", str(blocker))  # the ONNX cache cannot exist
    unload_models()  # forget runtimes loaded by other tests of this process
    enc = serving_encoder(Encoder(use_cache=False).config(), "auto", use_cache=False)
    assert enc.backend_name == "torch"
    assert np.isclose(np.linalg.norm(enc.encode_one("hello")), 1.0)
