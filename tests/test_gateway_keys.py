"""API keys: hashed auth, per-key budgets (no overspend under concurrency), rate limits."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import openai
import pytest

from tests.upstream import MATH, POEM, GatewayServer, UpstreamServer, gateway_config, tiny_artifact

ALICE, BOB, CAROL = "sk-alice-secret-1", "sk-bob-secret-2", "sk-carol-secret-3"


@pytest.fixture(scope="module")
def upstream():
    server = UpstreamServer(latency_ms=30).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("art") / "artifact")


def start(upstream, artifact, state_dir, keys, **sections) -> GatewayServer:
    cfg = gateway_config(upstream.base, artifact, state_dir, keys=keys, **sections)
    return GatewayServer(cfg).start()


def msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_keys_are_required_and_never_stored_in_clear(upstream, artifact, tmp_path):
    keys = {"keys": [{"name": "alice", "key": ALICE},
                     {"name": "bob", "key_sha256": hashlib.sha256(BOB.encode()).hexdigest()}]}
    gw = start(upstream, artifact, tmp_path / "state", keys)
    try:
        with pytest.raises(openai.AuthenticationError) as exc:
            gw.openai(api_key="sk-wrong").chat.completions.create(model="cheap",
                                                                  messages=msg("x"))
        assert exc.value.code == "invalid_api_key"
        r = httpx.post(gw.base + "/chat/completions", json={"model": "cheap",
                                                            "messages": msg("x")})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        for key in (ALICE, BOB):
            comp = gw.openai(api_key=key).chat.completions.create(model="cheap",
                                                                  messages=msg("hi"))
            assert comp.choices[0].message.content
        gw.gateway.outcomes.flush()
        recs = gw.gateway.outcome_store.records()
        ids = {r.get("key_id") for r in recs}
        assert hashlib.sha256(ALICE.encode()).hexdigest()[:16] in ids
    finally:
        gw.stop()
    for f in (tmp_path / "state").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert ALICE.encode() not in data and BOB.encode() not in data, f


def test_budget_is_never_overspent_under_concurrency(upstream, artifact, tmp_path):
    # each call reserves ~5.2e-5 USD (cheap, max_tokens 16) and costs ~4.2e-5
    budget = 5e-4
    gw = start(upstream, artifact, tmp_path / "state",
               {"keys": [{"name": "alice", "key": ALICE, "budget_usd": budget}]})

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post("/chat/completions", json={
            "model": "router-knn-1000", "messages": msg(MATH.format(i)), "max_tokens": 16})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.base, timeout=30, headers={
                "authorization": f"Bearer {ALICE}"}) as client:
            return await asyncio.gather(*(one(client, i) for i in range(40)))

    try:
        responses = asyncio.run(burst())
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert all(r.status_code == 402 for r in refused)
        assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
        spent = sum(r.json()["router"]["cost"] for r in ok)
        assert 9 <= len(ok) < 40 and refused
        assert spent <= budget + 1e-12
        usage = httpx.get(gw.base + "/router/usage",
                          headers={"authorization": f"Bearer {ALICE}"}).json()
        assert usage["spent_usd"] == pytest.approx(spent)
        assert usage["spent_usd"] <= budget and usage["reserved_usd"] == pytest.approx(0)
    finally:
        gw.stop()
    # spend survives a restart (embedded state)
    gw = start(upstream, artifact, tmp_path / "state",
               {"keys": [{"name": "alice", "key": ALICE, "budget_usd": budget}]})
    try:
        again = httpx.get(gw.base + "/router/usage",
                          headers={"authorization": f"Bearer {ALICE}"}).json()
        assert again["spent_usd"] == pytest.approx(spent)
        r = httpx.post(gw.base + "/chat/completions", headers={"authorization": f"Bearer {ALICE}"},
                       json={"model": "strong", "messages": msg("x"), "max_tokens": 16})
        assert r.status_code == 402
    finally:
        gw.stop()


def test_budget_routes_to_an_affordable_model(upstream, artifact, tmp_path):
    # strong reserves ~5e-4 per call, cheap ~5e-5: a 2e-4 budget affords only cheap
    gw = start(upstream, artifact, tmp_path / "state",
               {"keys": [{"name": "carol", "key": CAROL, "budget_usd": 2e-4}]},
               routing={"reserve_output_tokens": 16})
    client = gw.openai(api_key=CAROL)
    try:
        comp = client.chat.completions.create(model="router-auto", messages=msg(POEM.format(1)))
        router = comp.model_extra["router"]
        assert router["model"] == "cheap"  # the policy would have picked strong
        assert router["candidates"][0]["model"] == "cheap"
        # no max_tokens in the request: the reserved cap was sent upstream
        assert comp.usage.completion_tokens == 16
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(model="strong", messages=msg(POEM.format(1)))
        assert exc.value.status_code == 402
        # spend until nothing fits any more
        codes = [httpx.post(gw.base + "/chat/completions",
                            headers={"authorization": f"Bearer {CAROL}"},
                            json={"model": "router-auto", "messages": msg(POEM.format(i))}
                            ).status_code for i in range(8)]
        assert codes[0] == 200 and codes[-1] == 402
        assert codes == sorted(codes)  # once refused, always refused
    finally:
        gw.stop()


def test_rate_limit_per_key(upstream, artifact, tmp_path):
    gw = start(upstream, artifact, tmp_path / "state",
               {"keys": [{"name": "alice", "key": ALICE, "rpm": 3},
                         {"name": "bob", "key": BOB}]})
    try:
        alice = gw.openai(api_key=ALICE)
        for _ in range(3):
            alice.chat.completions.create(model="cheap", messages=msg("x"))
        with pytest.raises(openai.RateLimitError) as exc:
            alice.chat.completions.create(model="cheap", messages=msg("x"))
        assert exc.value.code == "rate_limit_exceeded"
        # another key is not affected
        gw.openai(api_key=BOB).chat.completions.create(model="cheap", messages=msg("x"))
    finally:
        gw.stop()


def test_global_budget_pacing_never_overspends(upstream, artifact, tmp_path):
    """routing.global_budget: router.budget's online knapsack picks and reserves globally."""
    budget = 4e-4
    gw = start(upstream, artifact, tmp_path / "state", {},
               routing={"global_budget": {"amount": budget}})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.base, timeout=30) as client:
            return await asyncio.gather(*(client.post("/chat/completions", json={
                "model": "router-auto", "max_tokens": 16,
                "messages": msg((MATH if i % 2 else POEM).format(i))}) for i in range(30)))

    try:
        responses = asyncio.run(burst())
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert ok and refused
        assert {r.status_code for r in refused} == {429}
        assert {r.json()["error"]["code"] for r in refused} == {"global_budget_exhausted"}
        spent = sum(r.json()["router"]["cost"] for r in ok)
        assert spent <= budget + 1e-12
        deadline = time.monotonic() + 5  # settlements run after the responses
        while (status := gw.gateway.pacer.status())[0]["reserved"] > 1e-12:
            assert time.monotonic() < deadline, str(status)
            time.sleep(0.05)
        assert status[0]["spent"] == pytest.approx(spent)
    finally:
        gw.stop()
