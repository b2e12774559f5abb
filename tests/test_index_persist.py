"""kNN artifacts keep the built FAISS index: one copy of the vectors, checked at load."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

from policies import load_policy
from policies.base import ArtifactError
from policies.knn import KNNPolicy
from router.index import VectorIndex, choose_kind, gpu_count, vectors_checksum

MODELS = ["cheap", "strong"]


def _data(n: int = 300, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    quality = np.stack([(X[:, 0] > 0), np.ones(n, bool)], axis=1).astype(float)
    cost = np.tile([1e-4, 1e-2], (n, 1))
    tasks = ["a" if x > 0 else "b" for x in X[:, 1]]
    return X, quality, cost, tasks


def _fitted(kind: str = "auto") -> tuple[KNNPolicy, np.ndarray]:
    X, q, c, t = _data()
    policy = KNNPolicy(k=5, alpha=1.0, temperature=0.1, index_kind=kind)
    policy.fit(X, q, c, MODELS, tasks=t)
    return policy, X


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_round_trip_loads_the_saved_index_without_rebuilding(tmp_path, kind, caplog):
    policy, X = _fitted(kind)
    queries = _data(40, seed=1)[0]
    before = policy.predict(queries)
    art = policy.save(tmp_path / "art")
    assert (art / "index.faiss").is_file() and (art / "vectors.npy").is_file()
    with np.load(art / "arrays.npz") as npz:
        assert "X" not in npz.files  # the vectors are stored once, in the index files
    info = json.loads((art / "config.json").read_text())["state"]["index"]
    assert info["n"] == len(X) and info["dim"] == X.shape[1] and info["kind"] == kind
    with caplog.at_level(logging.WARNING):
        loaded = load_policy(str(art))
    assert "rebuilding" not in caplog.text
    assert loaded._index.built_kind == kind
    after = loaded.predict(queries)
    np.testing.assert_allclose(after.quality, before.quality, rtol=1e-6)
    np.testing.assert_array_equal(loaded.neighbours(queries)[1], policy.neighbours(queries)[1])


def test_one_in_memory_copy_the_index_view(tmp_path):
    policy, X = _fitted("flat")
    assert policy._X_fit is None  # the fitting copy is dropped once the index exists
    view = policy.X_
    np.testing.assert_array_equal(view, X)
    assert not view.flags.writeable and view.base is not None
    loaded = load_policy(str(policy.save(tmp_path / "art")))
    assert loaded._X_fit is None and loaded._index.vectors_are_view
    np.testing.assert_array_equal(loaded.X_, X)


def test_mismatching_index_file_is_rebuilt_with_a_warning(tmp_path, caplog):
    policy, X = _fitted("flat")
    art = policy.save(tmp_path / "art")
    other = VectorIndex(X.shape[1], kind="flat")
    other.add(X[::-1].copy())  # same count and dim, other order: only the checksum differs
    other.save(art / "index.faiss")
    with caplog.at_level(logging.WARNING):
        loaded = load_policy(str(art))
    assert "checksum" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(loaded.X_, X)


def test_missing_index_file_is_rebuilt(tmp_path, caplog):
    art = _fitted("hnsw")[0].save(tmp_path / "art")
    (art / "index.faiss").unlink()
    with caplog.at_level(logging.WARNING):
        loaded = load_policy(str(art))
    assert "rebuilding" in caplog.text and loaded._index.built_kind == "hnsw"


def test_broken_index_and_vectors_is_a_clear_error(tmp_path):
    policy, X = _fitted("flat")
    art = policy.save(tmp_path / "art")
    (art / "index.faiss").write_bytes(b"not an index")
    np.save(art / "vectors.npy", X + 1.0)
    with pytest.raises(ArtifactError, match="checksum.*retrain"):
        load_policy(str(art))


def test_artifact_with_embedded_vectors_still_loads(tmp_path):
    """Artifacts written before the index was persisted keep ``X`` in arrays.npz."""
    policy, X = _fitted("flat")
    art = policy.save(tmp_path / "art")
    with np.load(art / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(art / "arrays.npz", X=X, **arrays)
    cfg = json.loads((art / "config.json").read_text())
    del cfg["state"]["index"]
    (art / "config.json").write_text(json.dumps(cfg))
    for name in ("index.faiss", "index.faiss.json", "vectors.npy"):
        (art / name).unlink()
    np.testing.assert_array_equal(load_policy(str(art)).X_, X)


def test_checksum_and_views_per_kind():
    X = _data(500, d=8)[0]
    for kind in ("flat", "hnsw", "ivf"):
        index = VectorIndex(8, kind=kind, nlist=4)
        index.add(X)
        assert index.checksum() == vectors_checksum(X)
        view = index.stored_vectors()
        assert index.vectors_are_view == (kind != "ivf")
        del index  # a view keeps the FAISS memory alive
        np.testing.assert_array_equal(view, X)
    assert vectors_checksum(X) != vectors_checksum(X[:-1])


def test_automatic_kind_and_gpu_choice_without_a_gpu():
    assert choose_kind(10, on_gpu=False) == "flat"
    assert choose_kind(100_000, on_gpu=False) == "hnsw"
    assert choose_kind(100_000, on_gpu=True) == "flat"  # brute force is fast on a GPU
    assert choose_kind(2_000_000, on_gpu=True) == "ivf"  # HNSW does not run on GPU
    assert choose_kind(200, on_gpu=False, auto_flat_max=100) == "hnsw"
    if gpu_count() == 0:
        index = VectorIndex(8, kind="flat")
        index.add(_data(20, d=8)[0])
        assert not index.on_gpu and faiss.get_num_gpus() == 0
