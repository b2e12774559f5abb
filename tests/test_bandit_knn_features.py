"""LinUCB with kNN estimates as features: out-of-fold prior, artifacts, updates, cold arms."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from policies.base import ArtifactError, Policy, PolicyError
from policies.linucb import LinUCBPolicy

MODELS = ["a", "b", "c"]


def clustered(n: int = 240, d: int = 16, seed: int = 0):
    """Two prompt clusters (tasks): model a is right on task 0, model b on task 1, c never."""
    rng = np.random.default_rng(seed)
    task = rng.integers(2, size=n)
    centres = rng.standard_normal((2, d)) * 3
    X = (centres[task] + rng.standard_normal((n, d))).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    p = np.where(task[:, None] == 0, [0.9, 0.2, 0.1], [0.2, 0.9, 0.1])
    quality = (rng.random((n, 3)) < p).astype(np.float64)
    cost = np.tile([1e-3, 1e-3, 1e-4], (n, 1))
    return X, quality, cost, [f"t{t}" for t in task], task


def test_features_append_one_knn_column_per_model():
    X, q, c, tasks, _ = clustered()
    pol = LinUCBPolicy(knn_features=True, reg=10.0).fit(X, q, c, MODELS, tasks)
    Z = pol.features(X[:5])
    assert Z.shape == (5, X.shape[1] + len(MODELS) + 1)
    np.testing.assert_allclose(Z[:, -1], 1.0)
    plain = LinUCBPolicy(reg=10.0).fit(X, q, c, MODELS, tasks)
    assert plain.features(X[:5]).shape == (5, X.shape[1] + 1)


def test_prior_ranks_the_task_specialist_first():
    X, q, c, tasks, task = clustered()
    pol = LinUCBPolicy(knn_features=True, reg=10.0, alpha=0.0).fit(X[:200], q[:200], c[:200],
                                                                  MODELS, tasks[:200])
    best = pol.predict(X[200:]).quality.argmax(axis=1)
    assert (best == task[200:]).mean() > 0.9


def test_train_rows_get_out_of_fold_estimates():
    """On pure-noise outcomes an in-sample kNN estimate correlates with the row's own label
    (the row is its own neighbour); the out-of-fold ones the prior is fitted on do not."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    q = (rng.random((300, 3)) < 0.5).astype(np.float64)
    c = np.tile([1e-3, 2e-3, 3e-3], (300, 1))
    pol = LinUCBPolicy(knn_features=True).fit(X, q, c, MODELS)
    oof = pol.knn_oof_ + pol.knn_.center
    inside = pol.knn_.transform(X) + pol.knn_.center
    for a in range(3):
        r_oof = np.corrcoef(oof[:, a], q[:, a])[0, 1]
        r_in = np.corrcoef(inside[:, a], q[:, a])[0, 1]
        assert abs(r_oof) < 0.2 and r_in > r_oof + 0.05, (a, r_oof, r_in)


def test_artifact_round_trip_and_missing_knn(tmp_path):
    X, q, c, tasks, _ = clustered()
    pol = LinUCBPolicy(knn_features=True, reg=10.0).fit(X, q, c, MODELS, tasks)
    pol.update(X[0], "a", 0.0, 1e-3)
    path = pol.save(tmp_path / "bandit")
    assert (path / "knn_features" / "config.json").exists()
    loaded = Policy.load(path)
    np.testing.assert_allclose(loaded.predict(X[:20]).quality, pol.predict(X[:20]).quality)
    np.testing.assert_allclose(loaded.features(X[:3]), pol.features(X[:3]))
    shutil.rmtree(path / "knn_features")
    with pytest.raises(ArtifactError, match="knn_features"):
        Policy.load(path)


def test_online_updates_move_the_estimate():
    X, q, c, tasks, task = clustered()
    pol = LinUCBPolicy(knn_features=True, reg=10.0, alpha=0.0).fit(X, q, c, MODELS, tasks)
    rows = np.flatnonzero(task == 0)[:5]
    before = pol.predict(X[rows]).quality[:, 0]
    for i in np.flatnonzero(task == 0)[:150]:
        pol.update(X[i], "a", 0.0, 1e-3)  # model a broke on task 0
    after = pol.predict(X[rows]).quality[:, 0]
    assert (after < before - 0.3).all()


def test_model_without_train_outcomes():
    X, q, c, tasks, _ = clustered()
    q = q.copy()
    q[:, 2] = np.nan
    c = c.copy()
    c[:, 2] = np.nan
    pol = LinUCBPolicy(knn_features=True, reg=10.0).fit(X, q, c, MODELS, tasks)
    est = pol.predict(X[:10])
    assert np.isfinite(est.quality).all() and np.isfinite(pol.features(X[:10])).all()


def test_knn_features_must_be_a_boolean():
    X, q, c, tasks, _ = clustered(n=40)
    with pytest.raises(PolicyError, match="knn_features must be true or false"):
        LinUCBPolicy(knn_features="yes").fit(X, q, c, MODELS, tasks)


@pytest.mark.parametrize("knn", [False, True])
def test_cold_arm_starts_as_an_average_model_at_any_reg(knn):
    """Regression: a cold arm's pseudo-outcomes were weighted against the full ridge
    penalty, so at reg 100 its mean sat near 0 (0.23 against an average of 0.68 on the
    RouterBench subset) and a new backend was never tried. Now its mean is the prior's
    ridge on the rows' average quality, and its bounds are 1/sqrt(cold_weight) wider."""
    X, q, c, tasks, _ = clustered()
    cold = q.copy()
    cold[:, 2] = np.nan
    kw = {"knn_features": knn, "reg": 100.0, "alpha": 0.0, "fallback": False, "cold_weight": 0.05}
    pol = LinUCBPolicy(**kw).fit(X, cold, c, MODELS, tasks)
    avg = q.copy()
    avg[:, 2] = q[:, :2].mean(axis=1)  # the same arm, trained on the average outcome
    ref = LinUCBPolicy(**{**kw, "knn_features": False}).fit(X, avg, c, MODELS, tasks)
    if not knn:
        np.testing.assert_allclose(pol.estimates(X[:50]).mean[:, 2],
                                   ref.estimates(X[:50]).mean[:, 2], atol=1e-9)
    else:  # the kNN columns change the fit, not the level
        assert abs(pol.estimates(X).mean[:, 2].mean() - ref.estimates(X).mean[:, 2].mean()) < 0.05
    _, width, _ = pol.predict_parts(X[:50])
    _, ref_width, _ = ref.predict_parts(X[:50])
    if not knn:
        np.testing.assert_allclose(width[:, 2], ref_width[:, 2] / np.sqrt(0.05), rtol=1e-6)
    assert (width[:, 2] > 3 * width[:, 0]).all()
