"""RouterDC with a fine-tuned encoder, on a tiny randomly initialised BERT built offline.

The tiny model (3 layers, 32-d, MiniLM's tokenizer) is written as a sentence-transformers
directory in the test; data: one task whose prompts name one of two topics, model-a is
right on one topic, model-b on the other, so only the prompt text tells them apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policies import PolicyError, make_policy
from policies.base import Policy

MODELS = ["model-a", "model-b", "cheap"]
PRICE = np.array([1e-3, 1e-3, 1e-5])
TOPICS = (["apple", "banana", "cherry", "grape", "lemon", "mango"],
          ["rocket", "planet", "orbit", "comet", "galaxy", "nebula"])
FAST = {"finetune": True, "text_view": "full", "max_seq_length": 24, "train_layers": 1,
        "finetune_epochs": 8, "finetune_batch_size": 16, "finetune_lr": 5e-3, "llm_lr": 5e-2,
        "n_clusters": 2, "seed": 0, "encoder_threads": 1}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from router.encoding.models import default_model_path

    out = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out / "hf")
    tok.save_pretrained(out / "hf")
    st = SentenceTransformer(modules=[models.Transformer(str(out / "hf"), max_seq_length=48),
                                      models.Pooling(32, "mean"), models.Normalize()],
                             device="cpu")
    st.save(str(out / "st"))
    return out / "st"


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, n)
    texts = [f"tell me about the {rng.choice(TOPICS[t])} and the {rng.choice(TOPICS[t])} "
             f"number {i}" for i, t in enumerate(topic)]
    Q = np.zeros((n, 3))
    Q[topic == 0, 0] = 1.0
    Q[topic == 1, 1] = 1.0
    Q[:, 2] = rng.random(n) < 0.3
    C = np.tile(PRICE, (n, 1)) * rng.uniform(0.8, 1.2, size=(n, 1))
    return texts, Q, C, topic


def frozen_X(model: Path, texts: list[str]) -> np.ndarray:
    from router.encoding.encoder import Encoder

    return Encoder(str(model), text_view="full", use_cache=False).encode(texts)


@pytest.fixture(scope="module")
def fitted(tiny_model):
    texts, Q, C, _ = make_data(160, seed=1)
    policy = make_policy("routerdc", encoder=str(tiny_model), **FAST)
    policy.fit(frozen_X(tiny_model, texts), Q, C, MODELS, texts=texts)
    return policy, texts


def own_X(policy: Policy, texts: list[str]) -> np.ndarray:
    from router.encoding.encoder import Encoder

    return Encoder.from_config(policy.own_encoder(), use_cache=False).encode(texts)


def test_finetuned_routerdc_routes_by_the_prompt_text(fitted):
    policy, _ = fitted
    texts, _, _, topic = make_data(120, seed=2)
    chosen = policy.route(own_X(policy, texts), lam=0.0)
    assert (chosen == topic).mean() >= 0.9
    info = policy.finetune_info_
    assert info["cached_bottom"] and info["path_deviation"] < 1e-4
    assert info["loss_last"] < info["loss_first"]


def test_own_encoder_reproduces_the_training_embeddings(fitted):
    """The cached-bottom training path and a plain Encoder of the saved model agree."""
    policy, texts = fitted
    assert np.abs(own_X(policy, texts) - policy.nb_.X).max() < 1e-4


def test_needs_texts_or_finetune_false(tiny_model):
    texts, Q, C, _ = make_data(40, seed=3)
    X = frozen_X(tiny_model, texts)
    with pytest.raises(PolicyError, match="finetune=False"):
        make_policy("routerdc", encoder=str(tiny_model), **FAST).fit(X, Q, C, MODELS)
    frozen = make_policy("routerdc", finetune=False, epochs=2, threads=1).fit(X, Q, C, MODELS)
    assert frozen.own_encoder() is None


@pytest.mark.parametrize("bad", [{"train_layers": -1}, {"holdout": 1.5},
                                 {"text_view": "sideways"}, {"finetune": "yes"},
                                 {"encoder": ""}])
def test_bad_finetune_parameters_are_clear_errors(tiny_model, bad):
    texts, Q, C, _ = make_data(20, seed=4)
    with pytest.raises(PolicyError, match=next(iter(bad))):
        make_policy("routerdc", **{**FAST, "encoder": str(tiny_model), **bad}).fit(
            frozen_X(tiny_model, texts), Q, C, MODELS, texts=texts)


def test_artifact_carries_the_encoder_and_serves_it(fitted, tmp_path):
    from router.encoding.encoder import FINETUNE_MARKER, Encoder
    from router.encoding.select import EncoderMismatchError, backend_plan, serving_encoder

    policy, _ = fitted
    path = policy.save(tmp_path / "art", meta={"encoder": {"model_name": "stock"}})
    config = json.loads((path / "config.json").read_text())
    assert config["meta"]["encoder"]["model_name"] == "artifact:encoder"
    assert (path / "encoder" / FINETUNE_MARKER).is_file()
    int8 = json.loads((path / "encoder" / "costroute_int8.json").read_text())
    assert int8["validated"] is True, int8  # a tiny BERT quantises fine

    loaded = Policy.load(path)
    cfg = loaded.meta_["encoder"]
    assert Path(cfg["model_name"]) == (path / "encoder").resolve()
    texts, _, _, topic = make_data(40, seed=5)
    X = own_X(loaded, texts)
    np.testing.assert_allclose(loaded.predict(X).quality, policy.predict(X).quality)
    assert ("onnx-int8", "cpu") in backend_plan(cfg["model_name"], "torch")
    served = serving_encoder(cfg, expected_dim=loaded.dim_)
    assert served.backend_name == "onnx-int8"
    assert (loaded.route(served.encode(texts)) == topic).mean() >= 0.9
    # embeddings are cached under the model's content signature, not its path
    assert Encoder.from_config(cfg)._cache_model.startswith(f"finetuned:{cfg['model_signature']}")

    marker = path / "encoder" / FINETUNE_MARKER  # other weights behind the same folder
    marker.write_text(marker.read_text().replace('"weights_sha256": "', '"weights_sha256": "0'))
    assert ("onnx-int8", "cpu") not in backend_plan(cfg["model_name"], "torch")
    with pytest.raises(EncoderMismatchError, match="signature"):
        serving_encoder(Policy.load(path).meta_["encoder"], choice="torch")


def test_router_eval_embeds_test_prompts_with_the_finetuned_encoder(tiny_model, tmp_path):
    from router.cli import main

    rows = []
    for split, seed, n in (("train", 6, 160), ("test", 7, 80)):
        texts, Q, C, _ = make_data(n, seed)
        with open(tmp_path / f"topics_{split}.jsonl", "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"prompt": t, "task": "topics",
                                    "scores": dict(zip(MODELS, Q[i].tolist(), strict=True)),
                                    "costs": dict(zip(MODELS, C[i].tolist(), strict=True))})
                        + "\n")
        rows.append(n)
    params = ":".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                      for k, v in FAST.items())
    out = tmp_path / "eval"
    rc = main(["eval", "--data", str(tmp_path), "--encoder", str(tiny_model), "--text-view",
               "full", "--policies", f"task-static,routerdc:encoder={tiny_model}:{params}",
               "--bootstrap", "50", "--no-plots", "--quiet", "--cache-dir",
               str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    (label,) = [k for k in res["policies"] if k.startswith("routerdc")]
    rdc, static = res["policies"][label], res["policies"]["task-static"]
    assert "embed_own_s" in rdc["timings"]
    assert rdc["max_quality"] > static["max_quality"] + 0.3  # the text told the topics apart
