"""RouterDC and CSCR on small synthetic, seeded data (fast: a few epochs on 16-d vectors)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from policies import PolicyError, make_policy
from policies.base import ArtifactError, Policy
from policies.cscr import CSCRPolicy

DIM = 16
MODELS = ["model-a", "model-b", "cheap"]
COST = np.array([1e-3, 1e-3, 1e-5])  # USD per call
FAST = {"epochs": 15, "threads": 1, "seed": 0}


def _centres() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    c1, c2 = rng.normal(size=DIM), rng.normal(size=DIM)
    return c1, c2


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two clusters: model-a is right on cluster 0 only, model-b on cluster 1 only, the
    cheap model 30% of the time anywhere."""
    rng = np.random.default_rng(seed)
    c1, c2 = _centres()
    label = rng.integers(0, 2, n)
    X = np.where(label[:, None] == 0, c1, c2) + 0.35 * rng.normal(size=(n, DIM))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    Q = np.zeros((n, 3))
    Q[label == 0, 0] = 1.0
    Q[label == 1, 1] = 1.0
    Q[:, 2] = rng.random(n) < 0.3
    C = np.tile(COST, (n, 1)) * rng.uniform(0.8, 1.2, size=(n, 1))
    return X, Q, C, label


def cluster_of(X: np.ndarray) -> np.ndarray:
    c1, c2 = _centres()
    return (X @ c2 > X @ c1).astype(int)


@pytest.fixture(scope="module")
def data():
    X, Q, C, label = make_data(300, seed=1)
    Q[::17, 1] = np.nan  # missing cells are dropped, not counted as wrong
    Xt, Qt, Ct, label_t = make_data(200, seed=2)
    return X, Q, C, Xt, label_t


_FITTED: dict[str, Policy] = {}


def fit_once(name: str, data) -> Policy:
    """One fitted policy per name for the whole module (tests that mutate it copy it)."""
    if name not in _FITTED:
        X, Q, C, _, _ = data
        _FITTED[name] = make_policy(name, **FAST).fit(X, Q, C, MODELS)
    return _FITTED[name]


@pytest.fixture(scope="module", params=["routerdc", "cscr"])
def fitted(request, data):
    return fit_once(request.param, data)


def test_routes_each_cluster_to_its_expert(fitted, data):
    _, _, _, Xt, label_t = data
    chosen = fitted.route(Xt, lam=0.0)
    assert (chosen == label_t).mean() >= 0.95
    est = fitted.predict(Xt)
    assert est.quality.shape == est.cost.shape == (len(Xt), 3)
    assert ((est.quality >= 0) & (est.quality <= 1)).all()
    # calibrated-ish: the expert's estimate is high on its cluster, low elsewhere
    assert est.quality[label_t == 0, 0].mean() > 0.8
    assert est.quality[label_t == 1, 0].mean() < 0.2
    assert abs(est.quality[:, 2].mean() - 0.3) < 0.15
    assert np.allclose(est.cost.mean(axis=0), COST, rtol=0.3)


def test_large_lam_prefers_the_cheap_model(fitted, data):
    Xt = data[3]
    assert (fitted.route(Xt, lam=1e5) == 2).all()
    decision = fitted.route_one(Xt[0], lam=1e5)
    assert decision.model == "cheap"


def test_seeded_fit_is_deterministic(fitted, data):
    X, Q, C, Xt, _ = data
    again = make_policy(fitted.name, **FAST).fit(X, Q, C, MODELS)
    np.testing.assert_array_equal(again.predict(Xt).quality, fitted.predict(Xt).quality)


def test_save_load_gives_identical_decisions(fitted, data, tmp_path):
    Xt = data[3]
    fitted.save(tmp_path / "artifact")
    config = json.loads((tmp_path / "artifact" / "config.json").read_text())
    assert config["policy"] == fitted.name
    loaded = Policy.load(tmp_path / "artifact")
    assert type(loaded) is type(fitted)
    for lam in (0.0, 30.0, 1e5):
        np.testing.assert_array_equal(loaded.route(Xt, lam=lam), fitted.route(Xt, lam=lam))
    np.testing.assert_allclose(loaded.predict(Xt).quality, fitted.predict(Xt).quality)


def test_bad_inputs_raise_policy_errors(fitted, data):
    X, Q, C, Xt, _ = data
    with pytest.raises(PolicyError, match="dimension"):
        fitted.predict(Xt[:, :8])
    bad = Xt.copy()
    bad[0, 0] = np.nan
    with pytest.raises(PolicyError, match="NaN"):
        fitted.predict(bad)
    fresh = make_policy(fitted.name, **FAST)
    with pytest.raises(PolicyError, match="NaN"):
        fresh.fit(np.where(np.arange(DIM) == 0, np.nan, X), Q, C, MODELS)
    with pytest.raises(PolicyError, match="shape"):
        fresh.fit(X, Q[:, :2], C, MODELS)
    with pytest.raises(PolicyError, match="not fitted"):
        fresh.predict(Xt)
    with pytest.raises(PolicyError, match="epochs"):
        make_policy(fitted.name, epochs=0).fit(X, Q, C, MODELS)
    with pytest.raises(PolicyError, match="temperature"):
        make_policy(fitted.name, temperature=-1.0).fit(X, Q, C, MODELS)


def test_corrupt_artifact_is_an_artifact_error(fitted, tmp_path):
    path = fitted.save(tmp_path / "artifact")
    with np.load(path / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "calibration"}
    np.savez(path / "arrays.npz", **arrays)
    with pytest.raises(ArtifactError, match="calibration"):
        Policy.load(path)


def test_routerdc_finetuning_needs_the_texts(data):
    X, Q, C, _, _ = data
    with pytest.raises(PolicyError, match="finetune=False"):
        make_policy("routerdc", finetune=True, **FAST).fit(X, Q, C, MODELS)


# ---- CSCR: adding a model without retraining ---------------------------------------------
@pytest.fixture(scope="module")
def cscr(data) -> CSCRPolicy:
    return fit_once("cscr", data)


def _tower_state(policy: CSCRPolicy) -> dict[str, np.ndarray]:
    arrays, _ = policy._get_state()
    return {k: v for k, v in arrays.items() if k.startswith(("qtower.", "mtower."))}


@pytest.mark.parametrize("how", ["probe outcomes", "outcomes on given prompts", "descriptor"])
def test_cscr_add_model_routes_to_a_new_cheap_expert(cscr, data, how):
    X, _, _, Xt, label_t = data
    policy = copy.deepcopy(cscr)
    before_towers = _tower_state(policy)
    before_emb = policy.model_embeddings()
    if how == "probe outcomes":  # perfect on cluster 0 of the stored probe prompts
        probes = policy.probe_X_
        assert len(probes) == len(policy.probe_indices_) > 0
        np.testing.assert_array_equal(probes, X[policy.probe_indices_])
        idx = policy.add_model("new", 2e-5, quality=(cluster_of(probes) == 0).astype(float))
    elif how == "outcomes on given prompts":
        Xn, _, _, label_n = make_data(80, seed=9)
        idx = policy.add_model("new", 2e-5, quality=(label_n == 0).astype(float), X=Xn)
    else:
        # one quality per probe cluster: the share of that cluster lying in data cluster 0
        groups, truth = policy.group_labels(policy.probe_X_), cluster_of(policy.probe_X_)
        desc = np.array([(truth[groups == g] == 0).mean() if (groups == g).any() else 0.5
                         for g in range(policy.n_groups_)])
        idx = policy.add_model("new", 2e-5, descriptor=desc)
    assert idx == 3 and policy.models_[-1] == "new"
    # nothing was retrained: towers and the old models' embeddings are unchanged
    for key, value in before_towers.items():
        np.testing.assert_array_equal(_tower_state(policy)[key], value)
    np.testing.assert_array_equal(policy.model_embeddings()[:3], before_emb)
    chosen = policy.route(Xt, lam=100.0)
    assert (chosen[label_t == 0] == 3).mean() >= 0.9
    assert (chosen[label_t == 1] == 1).mean() >= 0.9
    est = policy.predict(Xt)
    assert est.quality[label_t == 0, 3].mean() > est.quality[label_t == 1, 3].mean() + 0.4
    assert np.allclose(est.cost[:, 3], 2e-5, rtol=0.3)


def test_cscr_added_model_survives_save_load(cscr, data, tmp_path):
    Xt = data[3]
    policy = copy.deepcopy(cscr)
    policy.add_model("new", 2e-5, quality=(cluster_of(policy.probe_X_) == 0).astype(float))
    loaded = Policy.load(policy.save(tmp_path / "artifact"))
    assert loaded.models_ == [*MODELS, "new"]
    np.testing.assert_array_equal(loaded.route(Xt, lam=20.0), policy.route(Xt, lam=20.0))


def test_cscr_add_model_bad_inputs(cscr):
    policy = copy.deepcopy(cscr)
    n_probes = len(policy.probe_indices_)
    with pytest.raises(PolicyError, match="already"):
        policy.add_model("model-a", 1e-5, quality=np.ones(n_probes))
    with pytest.raises(PolicyError, match="exactly one"):
        policy.add_model("x", 1e-5)
    with pytest.raises(PolicyError, match="probe prompt"):
        policy.add_model("x", 1e-5, quality=np.ones(n_probes + 1))
    with pytest.raises(PolicyError, match=r"\[0, 1\]"):
        policy.add_model("x", 1e-5, quality=np.full(n_probes, 2.0))
    with pytest.raises(PolicyError, match="cost"):
        policy.add_model("x", -1.0, quality=np.ones(n_probes))
    with pytest.raises(PolicyError, match="descriptor"):
        policy.add_model("x", 1e-5, descriptor=[0.5])
    assert policy.models_ == MODELS
