"""VectorIndex against numpy brute force; approximate recall; persistence; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.index import VectorIndex, VectorIndexError

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gaussian(n: int, seed: int) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def clustered(n: int, seed: int, centers: int = 40) -> np.ndarray:
    """Random data with cluster structure, like real embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, DIM))
    return unit(c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, DIM)))


def brute_force(x, q, k, metric="ip"):
    scores = q @ x.T if metric == "ip" else -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def recall(ids, truth):
    return np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(ids, truth, strict=True)])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force(metric):
    x, q = gaussian(1500, 0), gaussian(40, 1)
    index = VectorIndex(DIM, kind="flat", metric=metric)
    ids_added = index.add(x[:1000])
    ids_added2 = index.add(x[1000:])
    np.testing.assert_array_equal(np.concatenate([ids_added, ids_added2]), np.arange(1500))
    scores, ids = index.search(q, 10)
    want_scores, want_ids = brute_force(x, q, 10, metric)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (40, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert len(index) == 1500 and index.built_kind == "flat"


def test_auto_is_exact_flat_when_small():
    x, q = gaussian(800, 2), gaussian(5, 3)
    index = VectorIndex(DIM)  # kind="auto"
    index.add(x)
    assert index.built_kind == "flat"
    np.testing.assert_array_equal(index.search(q, 7)[1], brute_force(x, q, 7)[1])


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [("hnsw", {}), ("ivf", {}), ("hnsw", {"hnsw_m": 16, "ef_search": 64})],
)
def test_approximate_recall(kind, kwargs):
    x, q = clustered(3000, 4), clustered(100, 5)
    index = VectorIndex(DIM, kind=kind, **kwargs)
    index.add(x)
    assert index.built_kind == kind
    scores, ids = index.search(q, 10)
    truth = brute_force(x, q, 10)[1]
    assert recall(ids, truth) >= 0.95
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ids, axis=1), atol=1e-4)


def test_ivf_recall_on_unstructured_random_data_with_wider_probe():
    x, q = gaussian(3000, 6), gaussian(100, 7)
    index = VectorIndex(DIM, kind="ivf", nlist=32, nprobe=24)
    index.add(x)
    assert recall(index.search(q, 10)[1], brute_force(x, q, 10)[1]) >= 0.95


def test_auto_switches_to_hnsw_past_the_threshold():
    x, q = clustered(1200, 8), clustered(50, 9)
    index = VectorIndex(DIM, auto_flat_max=1000)
    index.add(x[:900])
    assert index.built_kind == "flat"
    index.add(x[900:])
    assert index.built_kind == "hnsw" and len(index) == 1200
    ids = index.search(q, 10)[1]
    assert recall(ids, brute_force(x, q, 10)[1]) >= 0.95
    np.testing.assert_array_equal(index.vectors(), x)  # ids kept their meaning


def test_approximate_search_never_returns_missing_ids():
    # tiny lists and nprobe=1: a probed list often holds fewer than k vectors
    x, q = clustered(400, 10, centers=20), clustered(30, 11, centers=20)
    index = VectorIndex(DIM, kind="ivf", nlist=10, nprobe=1)
    index.add(x)
    scores, ids = index.search(q, 200)
    assert (ids >= 0).all() and (ids < 400).all()
    assert all(len(set(row)) == 200 for row in ids)
    assert np.isfinite(scores).all()


def test_k_is_clipped_and_1d_query():
    x = gaussian(5, 12)
    index = VectorIndex(DIM, kind="flat")
    index.add(x)
    scores, ids = index.search(x[0], 50)
    assert scores.shape == ids.shape == (1, 5)
    assert ids[0, 0] == 0 and sorted(ids[0]) == list(range(5))
    assert index.search(np.zeros((0, DIM), np.float32), 3)[1].shape == (0, 3)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    x, q = clustered(1000, 13), clustered(20, 14)
    index = VectorIndex(DIM, kind=kind, nlist=16 if kind == "ivf" else None)
    index.add(x)
    path = tmp_path / "sub" / "index.faiss"
    index.save(path)
    meta = json.loads((tmp_path / "sub" / "index.faiss.json").read_text())
    assert meta["built_kind"] == kind and meta["ntotal"] == 1000
    loaded = VectorIndex.load(path)
    assert len(loaded) == 1000 and loaded.built_kind == kind and loaded.dim == DIM
    assert loaded.get_params() == index.get_params()
    for a, b in zip(index.search(q, 10), loaded.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.add(x[:10])  # still usable
    assert len(loaded) == 1010


def test_save_empty_flat(tmp_path):
    VectorIndex(DIM, kind="flat").save(tmp_path / "e.faiss")
    assert len(VectorIndex.load(tmp_path / "e.faiss")) == 0
    with pytest.raises(VectorIndexError, match="untrained IVF"):
        VectorIndex(DIM, kind="ivf").save(tmp_path / "ivf.faiss")


def test_load_errors(tmp_path):
    with pytest.raises(VectorIndexError, match="does not exist"):
        VectorIndex.load(tmp_path / "missing.faiss")
    index = VectorIndex(DIM, kind="flat")
    index.add(gaussian(10, 15))
    path = tmp_path / "i.faiss"
    index.save(path)
    sidecar = tmp_path / "i.faiss.json"
    good = sidecar.read_text()
    sidecar.write_text("{not json")
    with pytest.raises(VectorIndexError, match="malformed"):
        VectorIndex.load(path)
    meta = json.loads(good)
    meta["ntotal"] = 11
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(VectorIndexError, match="sidecar says 11"):
        VectorIndex.load(path)
    sidecar.write_text(good)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(VectorIndexError, match="cannot read FAISS index"):
        VectorIndex.load(path)


def test_bad_input_errors():
    index = VectorIndex(DIM, kind="flat")
    with pytest.raises(VectorIndexError, match="empty index"):
        index.search(gaussian(1, 0), 3)
    with pytest.raises(VectorIndexError, match="dimension 8, but the index has dimension 32"):
        index.add(np.ones((4, 8), np.float32))
    index.add(gaussian(20, 16))
    bad = gaussian(3, 17)
    bad[1, 4] = np.nan
    with pytest.raises(VectorIndexError, match="NaN or infinite values \\(row 1\\)"):
        index.search(bad, 3)
    with pytest.raises(VectorIndexError, match="NaN"):
        index.add(bad)
    with pytest.raises(VectorIndexError, match="2-D"):
        index.search(np.ones((2, 2, DIM)), 3)
    with pytest.raises(VectorIndexError, match="dimension 31"):
        index.search(np.ones((2, 31)), 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(VectorIndexError, match="k must be a positive integer"):
            index.search(gaussian(1, 0), k)
    with pytest.raises(VectorIndexError, match="numeric"):
        index.add([["a"] * DIM])
    assert len(index) == 20  # failed adds changed nothing


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim"),
        ({"kind": "lsh"}, "unknown index kind"),
        ({"metric": "cosine"}, "unknown metric"),
        ({"use_gpu": "yes"}, "use_gpu"),
        ({"hnsw_m": 0}, "hnsw_m"),
        ({"nprobe": -2}, "nprobe"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(VectorIndexError, match=message):
        VectorIndex(**{"dim": DIM, **kwargs})


def test_use_gpu_true_without_gpu_is_a_clear_error():
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(VectorIndexError, match="no GPU"):
        VectorIndex(DIM, use_gpu=True)


def test_ivf_needs_enough_vectors_for_training():
    with pytest.raises(VectorIndexError, match="at least 64 vectors"):
        VectorIndex(DIM, kind="ivf", nlist=64).add(gaussian(10, 18))
