"""``router-cascade`` over real HTTP with the openai SDK: agreement, escalation, failing and
timed-out first-stage backends, a stage skipped once out of reach, nothing answering,
streaming, spend and automatic rewards.

The backends are scripted models on the local upstream (tests/upstream.py); the cascade and
the LinUCB bandit are real policies fitted on a synthetic multiple-choice train set where
``small-a`` and ``small-b`` are each right 70% of the time and ``large`` 98%.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest

from policies import make_policy
from policies.cascade import CascadePlan, CascadeStage, PlanChoice
from router.proxy.config import parse_config
from router.proxy.routing import hashing_encoder_config, load_encoder
from tests.conftest import needs_shared
from tests.upstream import GatewayServer, backend_entry, parse_sse

MODELS = ["small-a", "small-b", "large"]
PRICES = {"small-a": (1e-6, 2e-6), "small-b": (1e-6, 2e-6), "large": (1e-5, 3e-5)}
KEY = "sk-cascade-test"
QUESTION = ("Question {}: which of the following is right?\nA) one\nB) two\nC) three\n"
            "D) four\nAnswer with the letter.")
CASCADE = "router-cascade-100"  # the train split's plan there: small-a+small-b>=2 -> large


def fit_artifacts(root) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    n = 200
    enc = load_encoder(hashing_encoder_config(32), use_cache=False)
    texts = [QUESTION.format(i) for i in range(n)]
    truth = rng.integers(0, 4, n)
    quality = np.zeros((n, 3))
    responses = []
    for i in range(n):
        row = []
        for j, acc in enumerate((0.7, 0.7, 0.98)):
            ok = rng.random() < acc
            letter = truth[i] if ok else (truth[i] + rng.integers(1, 4)) % 4
            row.append(f"The answer is ({'ABCD'[letter]}).")
            quality[i, j] = float(ok)
        responses.append(row)
    cost = np.tile([1e-4, 1e-4, 3e-3], (n, 1))
    X = enc.encode(texts)
    meta = {"encoder": enc.config()}
    cascade = make_policy("cascade").fit(X, quality, cost, MODELS, texts=texts,
                                         responses=responses)
    plans = cascade.plans_
    bandit = make_policy("linucb", alpha=0.0, prior_weight=1.0).fit(X, quality, cost, MODELS)
    # a hand-made lazy plan: small-b is called only when small-a gives an answer (2 needed)
    lazy = CascadePlan("mc", (CascadeStage(("small-a",), 2), CascadeStage(("small-b",), 2),
                              CascadeStage(("large",), 1)))
    cascade.plans_ = {k: [PlanChoice(lazy, 0.0, 0.9, 1e-3)] if k == "mc" else v
                      for k, v in cascade.plans_.items()}
    path = str(cascade.save(root / "lazy", meta=meta))
    cascade.plans_ = plans
    return (str(cascade.save(root / "cascade", meta=meta)),
            str(bandit.save(root / "linucb", meta=meta)), path)


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    cascade, bandit, lazy = fit_artifacts(root)
    cfg = parse_config({
        "model_list": [backend_entry(m, upstream.base, *PRICES[m]) for m in MODELS],
        "routing": {"artifact": bandit, "artifacts": {"cascade": cascade, "lazy": lazy},
                    "timeouts": {"small-b": 1.0}, "auto_reward_weight": 0.5},
        "state": {"dir": str(root / "state"), "sync_outcomes": True},
        "keys": {"keys": [{"name": "k", "key": KEY, "budget_usd": 10.0},
                          {"name": "poor", "key": "sk-poor", "budget_usd": 1e-9}]},
    }, source="cascade test")
    gw = GatewayServer(cfg).start()
    plan = gw.gateway.router.policies["cascade"].policy.plan(QUESTION.format(0), lam=100.0)
    assert plan.first() == ("small-a", "small-b") and plan.models[-1] == "large", plan
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset(upstream):
    yield
    upstream.upstream.reset()
    for m in MODELS:
        upstream.script(m, None)


def answers(upstream, **letters: str) -> None:
    for model, letter in letters.items():
        upstream.script(model.replace("_", "-"), lambda _t, x=letter: f"The answer is ({x}).")


def ask(gw: GatewayServer, i: int, model: str = CASCADE):
    client = gw.openai(api_key=KEY)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": QUESTION.format(i)}])
    return raw, raw.parse()


def record(gw: GatewayServer, rid: str) -> dict:
    recs = [r for r in gw.gateway.outcome_store.records() if r.get("request_id") == rid]
    assert len(recs) == 1
    return recs[0]


def expected_cost(model: str, usage: dict) -> float:
    p_in, p_out = PRICES[model]
    return usage["prompt_tokens"] * p_in + usage["completion_tokens"] * p_out


def test_agreement_stops_at_the_first_stage(gateway, upstream):
    answers(upstream, small_a="B", small_b="B", large="D")
    raw, comp = ask(gateway, 1)
    assert raw.headers["x-router-cascade"] == "small-a,small-b"
    assert upstream.calls("large") == 0
    assert comp.choices[0].message.content == "The answer is (B)."
    rec = record(gateway, raw.headers["x-router-request-id"])
    assert [a["model"] for a in rec["attempts"]] == ["small-a", "small-b"]
    assert all(a["error"] is None for a in rec["attempts"])
    total = sum(a["cost"] for a in rec["attempts"])
    assert total > 0
    assert float(raw.headers["x-router-cost"]) == pytest.approx(total, rel=1e-6)
    assert rec["cost"] == pytest.approx(total) and rec["kind"] == "cascade"
    assert rec["cascade"]["labels"] == {"small-a": 1.0, "small-b": 1.0}
    assert {(r["model"], r["reward"], r["source"]) for r in rec["auto_rewards"]} == {
        ("small-a", 1.0, "auto"), ("small-b", 1.0, "auto")}


def test_disagreement_escalates_and_every_call_is_paid(gateway, upstream):
    answers(upstream, small_a="A", small_b="C", large="B")
    before = httpx.get(gateway.base + "/router/usage",
                       headers={"authorization": f"Bearer {KEY}"}).json()["spent_usd"]
    raw, comp = ask(gateway, 2)
    assert raw.headers["x-router-cascade"] == "small-a,small-b,large"
    assert raw.headers["x-router-model"] == "large"
    assert comp.choices[0].message.content == "The answer is (B)."
    rec = record(gateway, raw.headers["x-router-request-id"])
    assert [a["stage"] for a in rec["attempts"]] == [0, 0, 1]
    assert rec["cascade"]["labels"] == {"small-a": 0.0, "small-b": 0.0}  # large: alone
    body = comp.model_dump()["router"]
    assert body["cascade"]["calls"] == ["small-a", "small-b", "large"]
    total = float(raw.headers["x-router-cost"])
    assert total == pytest.approx(sum(a["cost"] for a in body["attempts"]), rel=1e-6)
    assert body["attempts"][2]["cost"] == pytest.approx(
        expected_cost("large", comp.usage.model_dump()))

    def spent() -> float:
        return httpx.get(gateway.base + "/router/usage",
                         headers={"authorization": f"Bearer {KEY}"}).json()["spent_usd"]

    deadline = time.monotonic() + 5
    while abs(spent() - before - total) > 1e-9 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spent() - before == pytest.approx(total, abs=1e-9)


@pytest.mark.parametrize("fault", ["500", "timeout"])
def test_a_failing_first_stage_backend_counts_as_disagreement(gateway, upstream, fault):
    answers(upstream, small_a="B", small_b="B", large="B")
    failing = "small-a" if fault == "500" else "small-b"  # small-b has a 1 s timeout
    upstream.control(failing, fail=fault, hang_seconds=3.0)
    raw, comp = ask(gateway, 3)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-router-cascade"] == "small-a,small-b,large"
    assert comp.choices[0].message.content == "The answer is (B)."
    rec = record(gateway, raw.headers["x-router-request-id"])
    errors = {a["model"]: a["error"] for a in rec["attempts"]}
    assert errors[failing] == ("status" if fault == "500" else "timeout")
    # the survivor agreed with the escalated answer; the failed call gets no label
    other = "small-b" if failing == "small-a" else "small-a"
    assert rec["cascade"]["labels"] == {other: 1.0, "large": 1.0}
    gateway.gateway.pool.ok(failing)  # no cooldown for the next tests


def test_nothing_answering_is_a_502_not_a_500(gateway, upstream):
    upstream.control("*", fail="503")
    with pytest.raises(openai.APIStatusError) as info:
        ask(gateway, 4)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_error"
    for m in MODELS:
        gateway.gateway.pool.ok(m)


def test_a_stage_that_cannot_reach_its_min_agree_is_never_called(gateway, upstream):
    answers(upstream, small_a="B", small_b="B", large="D")
    raw, resp = ask(gateway, 40, model="router-lazy-100")
    assert raw.headers["x-router-cascade"] == "small-a,small-b"
    assert resp.choices[0].message.content == "The answer is (B)."
    upstream.script("small-a", lambda _t: "Hmm, hard to say.")  # no answer: 2 out of reach
    raw, resp = ask(gateway, 41, model="router-lazy-100")
    assert raw.headers["x-router-cascade"] == "small-a,large"
    assert resp.choices[0].message.content == "The answer is (D)."
    assert upstream.calls("small-b") == 1


def test_a_budget_name_mixes_two_plans_by_the_prompt(gateway, upstream):
    """``router-cascade-b<USD per 1k>``: the policy's budget mode; the prompt's hash picks
    one of two adjacent train plans, the same one on every request."""
    from policies.cascade_budget import prompt_share

    policy = gateway.gateway.router.policies["cascade"].policy
    lo, hi = policy.budget_mix(0.0).train_cost, policy.budget_mix(1e9).train_cost
    budget = next(float(b) for b in np.linspace(lo, hi, 21)[1:-1]
                  if 0.1 < policy.budget_mix(float(b)).kinds["mc"].share < 0.9)
    budget = round(budget * 1000, 6) / 1000  # as the model name gives it
    share = policy.budget_mix(budget).kinds["mc"].share
    answers(upstream, small_a="B", small_b="C", large="B")  # escalate: every stage called
    seen = set()
    for want_high in (True, False):
        i = next(i for i in range(100, 400)
                 if (prompt_share(QUESTION.format(i)) < share) == want_high)
        plan = policy.plan(QUESTION.format(i), budget=budget)
        for _ in range(2):
            raw, _comp = ask(gateway, i, model=f"router-cascade-b{budget * 1000:.6f}")
            rec = record(gateway, raw.headers["x-router-request-id"])
            assert rec["budget"] == pytest.approx(budget, rel=1e-5)
            assert rec["cascade"]["plan"] == plan.describe()
        seen.add(plan.describe())
    assert len(seen) == 2, seen


def test_no_call_fitting_the_budget_is_a_402(gateway, upstream):
    answers(upstream, small_a="B", small_b="B", large="B")
    client = gateway.openai(api_key="sk-poor")
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=CASCADE, messages=[{"role": "user", "content": QUESTION.format(8)}])
    assert info.value.status_code == 402
    assert info.value.body["code"] == "budget_exceeded"
    assert sum(upstream.calls(m) for m in MODELS) == 0


def test_streaming_client_gets_the_decided_answer(gateway, upstream):
    answers(upstream, small_a="A", small_b="D", large="C")
    client = gateway.openai(api_key=KEY)
    chunks = list(client.chat.completions.create(
        model=CASCADE, stream=True,
        messages=[{"role": "user", "content": QUESTION.format(5)}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The answer is (C)."
    r = httpx.post(gateway.base + "/chat/completions", timeout=30,
                   headers={"authorization": f"Bearer {KEY}"},
                   json={"model": CASCADE, "stream": True, "messages": [
                       {"role": "user", "content": QUESTION.format(6)}]})
    assert r.headers["x-router-cascade"] == "small-a,small-b,large"
    events, comments = parse_sse(r.content)
    assert events[-1] == "[DONE]"
    info = [c for c in comments if c.startswith("x-router ")]
    assert len(info) == 1
    cost = json.loads(info[0][len("x-router "):])["cost"]
    assert cost == pytest.approx(float(r.headers["x-router-cost"]), rel=1e-6)


def test_automatic_rewards_teach_the_bandit_without_feedback(gateway, upstream):
    served = gateway.gateway.router.policies["linucb"]
    policy = served.policy
    x = gateway.gateway.router.embed(served, QUESTION.format(7))
    j = policy.models_.index("small-a")
    mean_before = float(policy.predict(x[None]).quality[0, j])
    version = policy.store.version()
    answers(upstream, small_a="A", small_b="B", large="B")  # small-a is wrong every time
    for _ in range(5):
        raw, _ = ask(gateway, 7)
        assert raw.headers["x-router-cascade"] == "small-a,small-b,large"
    deadline = time.monotonic() + 5
    while policy.store.version() < version + 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert policy.store.version() == version + 15  # 3 labels per request
    mean_after = float(policy.predict(x[None]).quality[0, j])
    assert mean_after < mean_before - 0.05


@needs_shared
@pytest.mark.slow
def test_demo_serves_router_cascade_end_to_end(tmp_path):
    """``router serve --demo``'s pieces on the RouterBench subset: replayed answers, costs
    summed over every call, both the agreement and the escalation path, auto rewards."""
    from router.proxy.outcomes import prompt_hash
    from router.proxy.replay import build_demo

    demo = build_demo(tmp_path / "state", latency_ms=1, encoder="hashing")
    assert set(demo["policies"]) == {"linucb", "cascade"}
    gw = GatewayServer(demo["config"], policies=demo["policies"],
                       default_policy=demo["default_policy"], replay=demo["replay"]).start()
    try:
        provider, test = demo["replay"], demo["test"]
        store = gw.gateway.router.policies["linucb"].policy.store
        version = store.version()
        client = gw.openai()
        arc = [i for i, t in enumerate(test.tasks) if t == "arc-challenge"][:30]
        lengths, labels = [], 0
        for i in arc:
            raw = client.chat.completions.with_raw_response.create(
                model="router-cascade-10",
                messages=[{"role": "user", "content": test.prompts[i]}])
            comp = raw.parse()
            router = comp.model_extra["router"]
            calls = raw.headers["x-router-cascade"].split(",")
            assert calls == router["cascade"]["calls"] and router["model"] in calls
            lengths.append(len(calls))
            assert router["replay"]["match"] == "exact"
            row = provider.index[prompt_hash(test.prompts[i].strip())]
            j = test.models.index(router["model"])
            assert comp.choices[0].message.content == test.responses[i][j]
            expected = sum(provider.fill_cost[row, test.models.index(c)] for c in calls)
            assert float(raw.headers["x-router-cost"]) == pytest.approx(expected, rel=1e-6)
            labels += len(router["cascade"]["labels"])
        assert min(lengths) < max(lengths)  # some stopped at agreement, some escalated
        deadline = time.monotonic() + 10
        while store.version() < version + labels and time.monotonic() < deadline:
            time.sleep(0.05)
        assert labels > 0 and store.version() == version + labels
    finally:
        gw.stop()
