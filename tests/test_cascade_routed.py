"""policies.cascade_routed: cascades for kinds whose answers agree, a prompt-only router for
the others (code here), offline (fit, plan, artifacts, replay) and in the gateway over real
HTTP.

Synthetic train set: multiple-choice prompts where ``small-a`` and ``small-b`` are each
right 70% of the time and ``large`` 98% (agreement pays), and code prompts of two topics
(sorting, regexes) where ``small-a`` solves sorting and ``small-b`` regexes, ``large``
half of each: no fixed model is good at code, the prompt says which one is.
"""

from __future__ import annotations

import numpy as np
import pytest

from eval.cascades import replay
from policies import PolicyError, load_policy, make_policy
from router.dataset import RoutingDataset
from router.proxy.config import parse_config
from router.proxy.routing import hashing_encoder_config, load_encoder
from tests.upstream import GatewayServer, backend_entry

MODELS = ["small-a", "small-b", "large"]
PRICES = {"small-a": (1e-6, 2e-6), "small-b": (1e-6, 2e-6), "large": (1e-5, 3e-5)}
MC = ("Question {}: which of the following is right?\nA) one\nB) two\nC) three\nD) four\n"
      "Answer with the letter.")
SORT = "Write a python function to sort list number {} of strings by length."
REGEX = "Write a python function with a regex that matches pattern number {} in a string."
KEY = "sk-routed-test"


def make_data(n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    texts, quality, responses = [], [], []
    for i in range(n):
        if i % 2 == 0:  # multiple choice
            truth = rng.integers(0, 4)
            row, q = [], []
            for acc in (0.7, 0.7, 0.98):
                ok = rng.random() < acc
                letter = truth if ok else (truth + rng.integers(1, 4)) % 4
                row.append(f"The answer is ({'ABCD'[letter]}).")
                q.append(float(ok))
            texts.append(MC.format(i))
        else:  # code: small-a sorts, small-b writes regexes, large is right half the time
            sort = (i // 2) % 2 == 0
            texts.append((SORT if sort else REGEX).format(i))
            q = [float(sort), float(not sort), float(rng.random() < 0.5)]
            row = [f"```python\ndef f{j}_{i}(x):\n    return {j * i}\n```" for j in range(3)]
        quality.append(q)
        responses.append(row)
    cost = np.tile([1e-4, 1e-4, 3e-3], (n, 1))
    return texts, np.array(quality), cost, responses


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    texts, quality, cost, responses = make_data()
    enc = load_encoder(hashing_encoder_config(64), use_cache=False)
    X = enc.encode(texts)
    pol = make_policy("cascade-routed", router="knn").fit(
        X, quality, cost, MODELS, texts=texts, responses=responses)
    root = tmp_path_factory.mktemp("routed")
    path = pol.save(root / "cascade-routed", meta={"encoder": enc.config()})
    return pol, enc, str(path), (texts, quality, cost, responses)


def test_code_is_routed_on_the_prompt_and_mc_keeps_agreement(fitted):
    pol, enc, _, _ = fitted
    assert pol.routed_ == ["code"]
    assert pol.plan(MC.format(1001), lam=100.0).first() == ("small-a", "small-b")
    for template, model in ((SORT, "small-a"), (REGEX, "small-b")):
        text = template.format(1001)
        plan = pol.plan(text, enc.encode([text])[0], lam=100.0)
        assert plan.models == (model,) and plan.kind == "code"
    # the plain cascade can only pick one model for every code prompt
    plain = make_policy("cascade").fit(enc.encode(fitted[3][0]), *fitted[3][1:3], MODELS,
                                       texts=fitted[3][0], responses=fitted[3][3])
    assert len(plain.plan(SORT.format(1), lam=100.0).models) == 1


def test_a_routed_kind_without_its_embedding_is_a_clear_error(fitted):
    pol = fitted[0]
    with pytest.raises(PolicyError, match="needs its embedding"):
        pol.plan(SORT.format(3), None, lam=100.0)


def test_router_must_be_a_prompt_only_policy(fitted):
    texts, quality, cost, responses = fitted[3]
    X = fitted[1].encode(texts)
    for bad in ("cascade", "linucb", "oracle", "task-static"):
        with pytest.raises(PolicyError, match="router must be"):
            make_policy("cascade-routed", router=bad).fit(
                X, quality, cost, MODELS, texts=texts, responses=responses)


def test_artifact_round_trip_keeps_plans_and_router(fitted):
    pol, enc, path, _ = fitted
    back = load_policy(path)
    assert type(back).__name__ == "RoutedCascadePolicy" and back.routed_ == pol.routed_
    for text in (MC.format(7), SORT.format(7), REGEX.format(7)):
        x = enc.encode([text])[0]
        for lam in (0.0, 10.0, 1e4):
            assert back.plan(text, x, lam=lam) == pol.plan(text, x, lam=lam)


def test_replay_routes_code_rows_and_beats_the_plain_cascade(fitted):
    pol, enc, _, _ = fitted
    texts, quality, cost, responses = make_data(120, seed=1)
    test = RoutingDataset(name="t", prompts=texts, tasks=["t"] * len(texts), models=MODELS,
                          quality=quality, cost=cost, responses=responses)
    X = enc.encode(texts)
    lams = [100.0]
    routed = replay(pol, test, lams, X=X)
    code = np.array([i % 2 == 1 for i in range(len(texts))])
    assert routed.quality[0, code].mean() == pytest.approx(1.0)
    assert "routed" in routed.plans[0]["code"]
    plain = make_policy("cascade").fit(enc.encode(fitted[3][0]), *fitted[3][1:3], MODELS,
                                       texts=fitted[3][0], responses=fitted[3][3])
    base = replay(plain, test, lams)
    assert base.quality[0, code].mean() <= 0.75
    np.testing.assert_allclose(routed.quality[0, ~code], base.quality[0, ~code])


def test_a_budget_plans_each_prompt_at_its_mixed_plans_lam(fitted):
    """Within a budget every prompt is planned (routed prompts: routed) at the lam of the
    train plan its hash picks (policies.cascade_budget), offline and one by one alike."""
    from policies.answers import infer_kind

    pol, enc, _, _ = fitted
    lo, hi = pol.budget_mix(0.0).train_cost, pol.budget_mix(1e9).train_cost
    texts = [t.format(2000 + i) for i in range(40) for t in (MC, SORT, REGEX)]
    X = enc.encode(texts)
    for budget in np.linspace(lo, hi, 5):
        mix = pol.budget_mix(float(budget))
        assert mix.train_cost == pytest.approx(budget, rel=1e-9)
        one = [pol.plan(t, x, budget=float(budget)) for t, x in zip(texts, X, strict=True)]
        at_lam = [pol.plan(t, x, lam=mix.lam_for(infer_kind(t), t))
                  for t, x in zip(texts, X, strict=True)]
        assert one == at_lam
        kinds = [infer_kind(t) for t in texts]
        assert pol.plans_for(kinds, X, budget=float(budget), texts=texts) == one
    with pytest.raises(PolicyError, match="texts"):
        pol.plans_for(kinds, X, budget=float(lo))
    # the routed kind's train figures are the router's picks, not the replaced plan's
    train_texts, quality, cost, _ = fitted[3]
    code = [i for i, t in enumerate(train_texts) if infer_kind(t) == "code"]
    lam, c, q = next(p for p in pol.lam_points_["code"] if p[0] >= 100.0)
    picks = pol.router_.route(enc.encode([train_texts[i] for i in code]), lam=lam)
    assert c == pytest.approx(cost[code, picks].mean())
    assert q == pytest.approx(quality[code, picks].mean())
    back = load_policy(fitted[2])
    assert back.budget_mix(float(lo + hi) / 2) == pol.budget_mix(float(lo + hi) / 2)


def test_gateway_routes_code_per_prompt_and_cascades_mc(fitted, upstream, tmp_path):
    _, _, path, _ = fitted
    cfg = parse_config({
        "model_list": [backend_entry(m, upstream.base, *PRICES[m]) for m in MODELS],
        "routing": {"artifact": path, "lam": 100.0},
        "state": {"dir": str(tmp_path / "state")},
        "keys": {"keys": [{"name": "k", "key": KEY, "budget_usd": 10.0}]},
    }, source="routed cascade test")
    gw = GatewayServer(cfg).start()
    try:
        for m, letter in (("small-a", "B"), ("small-b", "B"), ("large", "D")):
            upstream.script(m, lambda _t, x=letter: f"The answer is ({x}).")
        client = gw.openai(api_key=KEY)
        name = "router-cascade-routed-100"
        for text, want in ((SORT.format(5001), "small-a"), (REGEX.format(5001), "small-b")):
            raw = client.chat.completions.with_raw_response.create(
                model=name, messages=[{"role": "user", "content": text}])
            assert raw.headers["x-router-cascade"] == want
            assert raw.headers["x-router-model"] == want
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": MC.format(5002)}])
        assert raw.headers["x-router-cascade"] == "small-a,small-b"
        assert raw.parse().choices[0].message.content == "The answer is (B)."
    finally:
        gw.stop()
        upstream.upstream.reset()
        for m in MODELS:
            upstream.script(m, None)


# ---- route="single": multiple choice at a lam whose plan is one model goes to the router --
PHYS = ("Physics question {}: what does gravity pull objects toward?\nA) up\nB) down\nC) left\n"
        "D) right\nAnswer with the letter.")
BIO = ("Biology question {}: what do plant leaves use photosynthesis for?\nA) food\nB) rest\n"
       "C) song\nD) flight\nAnswer with the letter.")


def topic_mc_data(n: int = 240, seed: int = 0):
    """Multiple choice of two topics: small-a is right on physics 95% of the time and on
    biology 45%, small-b the reverse, large 98% on both. Agreement pays at middle lams;
    at high lam the cascade can only call one fixed small model, the router the right one."""
    rng = np.random.default_rng(seed)
    texts, quality, responses = [], [], []
    for i in range(n):
        phys = i % 2 == 0
        texts.append((PHYS if phys else BIO).format(i))
        truth = rng.integers(0, 4)
        row, q = [], []
        for acc in ((0.95, 0.45, 0.98) if phys else (0.45, 0.95, 0.98)):
            ok = rng.random() < acc
            letter = truth if ok else (truth + rng.integers(1, 4)) % 4
            row.append(f"The answer is ({'ABCD'[letter]}).")
            q.append(float(ok))
        quality.append(q)
        responses.append(row)
    return texts, np.array(quality), np.tile([1e-4, 1e-4, 3e-3], (n, 1)), responses


@pytest.fixture(scope="module")
def topic_fits():
    texts, quality, cost, responses = topic_mc_data()
    enc = load_encoder(hashing_encoder_config(64), use_cache=False)
    X = enc.encode(texts)
    fits = {route: make_policy("cascade-routed", router="knn", route=route).fit(
        X, quality, cost, MODELS, texts=texts, responses=responses)
        for route in ("single", "kinds")}
    return fits, enc


def test_single_plan_lams_are_routed_and_agreement_plans_kept(topic_fits):
    fits, enc = topic_fits
    single, kinds = fits["single"], fits["kinds"]
    assert single.routed_ == kinds.routed_ == []  # mc is a cascade kind in both
    texts, quality, cost, responses = topic_mc_data(160, seed=1)
    test = RoutingDataset(name="t", prompts=texts, tasks=["t"] * len(texts), models=MODELS,
                          quality=quality, cost=cost, responses=responses)
    X = enc.encode(texts)
    high = 1e4  # the cascade's plan here is one small model for every prompt
    assert not kinds.plan(texts[0], X[0], lam=high).compares
    agreeing = [lam for lam in (30.0, 100.0, 300.0) if kinds.plan(texts[0], lam=lam).compares]
    assert agreeing, "agreement should pay at some middle lam"
    lams = [*agreeing, high]
    a, b = replay(single, test, lams, X=X), replay(kinds, test, lams, X=X)
    # middle lams: the same cascades; high lam: the router picks the topic's small model
    np.testing.assert_allclose(a.quality[:-1], b.quality[:-1])
    assert "routed" in a.plans[-1]["mc"] and "routed" not in b.plans[-1]["mc"]
    assert a.quality[-1].mean() >= 0.85 and b.quality[-1].mean() <= 0.8
    assert a.cost[-1].mean() <= 1.01e-4
    for text, x in zip(texts[:6], X[:6], strict=True):
        routed = single.plan(text, x, lam=high)
        want = single.router_.models_[int(single.router_.route(x[None], lam=high)[0])]
        assert routed.models == (want,)
        # without the embedding the single-model plan is served as the cascade's
        assert single.plan(text, None, lam=high) == kinds.plan(text, None, lam=high)


def test_route_mode_is_saved_and_old_artifacts_route_kinds(topic_fits, tmp_path):
    import json

    fits, enc = topic_fits
    path = fits["single"].save(tmp_path / "single", meta={"encoder": enc.config()})
    assert load_policy(path).route == "single"
    config = json.loads((path / "config.json").read_text())
    del config["state"]["route"], config["params"]["route"]  # as written before route
    (path / "config.json").write_text(json.dumps(config))
    old = load_policy(path)
    assert old.route == "kinds"
    x = enc.encode([PHYS.format(9)])[0]
    assert old.plan(PHYS.format(9), x, lam=1e4) == fits["kinds"].plan(PHYS.format(9), x,
                                                                      lam=1e4)
    with pytest.raises(PolicyError, match="route must be"):
        make_policy("cascade-routed", route="all").fit(
            enc.encode(["q"] * 10), np.ones((10, 3)), np.ones((10, 3)), MODELS,
            texts=["q"] * 10, responses=[["a"] * 3] * 10)
