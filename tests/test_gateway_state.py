"""Outcome records and shared state: SQLite export, Redis outage without loss, replicas."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import yaml

from router.cli import main as router_main
from tests.upstream import MATH, POEM, GatewayServer, gateway_config, tiny_artifact

KEY = "sk-state-test-key"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("art") / "artifact")


def chat(gw: GatewayServer, text: str, **headers) -> httpx.Response:
    return httpx.post(gw.base + "/chat/completions", headers=headers, timeout=20, json={
        "model": "router-auto", "messages": [{"role": "user", "content": text}],
        "max_tokens": 8})


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_outcome_records_and_logs_export(upstream, artifact, tmp_path, capsys):
    state = tmp_path / "state"
    cfg = gateway_config(upstream.base, artifact, state, routing={"lam": 10.0})
    gw = GatewayServer(cfg).start()
    try:
        ok = chat(gw, MATH.format(1))
        rid = ok.headers["x-router-request-id"]
        httpx.post(gw.base + "/feedback", json={"request_id": rid, "reward": 1.0})
        bad = httpx.post(gw.base + "/chat/completions", json={"model": "zzz", "messages": []})
        assert bad.status_code == 400
    finally:
        gw.stop()  # drains the writer
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "cheap", "litellm_params": {"model": "openai/cheap",
                                                                  "api_base": upstream.base}}],
        "state": {"dir": str(state)}}))
    out = tmp_path / "outcomes.jsonl"
    assert router_main(["logs", "export", "--config", str(cfg_file), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    rec = next(r for r in records if r["request_id"] == rid)
    for field in ("ts", "key_id", "prompt_hash", "model", "candidates", "lam", "latency_ms",
                  "prompt_tokens", "completion_tokens", "cost", "status", "attempts"):
        assert field in rec, field
    assert rec["model"] == "cheap" and rec["status"] == "ok" and rec["lam"] == 10.0
    assert {c["model"] for c in rec["candidates"]} == {"cheap", "strong"}
    assert all("score" in c for c in rec["candidates"])
    assert rec["feedback"]["reward"] == 1.0
    assert MATH.format(1) not in out.read_text()  # prompts are stored as hashes only
    err = next(r for r in records if r["request_id"] != rid)
    assert err["status"] == "error" and err["http_status"] == 400 and err["error"]
    # a state dir without outcomes is a clear CLI error
    assert router_main(["logs", "export", "--state-dir", str(tmp_path / "none"),
                        "--out", str(out)]) == 2
    assert "no outcome store" in capsys.readouterr().err


@pytest.mark.redis
def test_redis_outage_loses_no_outcomes(upstream, artifact, tmp_path, redis_factory):
    redis = redis_factory(aof=True).start()
    cfg = gateway_config(upstream.base, artifact, tmp_path / "state",
                         state={"redis_url": redis.url, "flush_interval_seconds": 0.1},
                         keys={"keys": [{"name": "k", "key": KEY, "budget_usd": 1.0}]})
    gw = GatewayServer(cfg).start()
    auth = {"authorization": f"Bearer {KEY}"}
    ids: list[str] = []
    costs: list[float] = []
    try:
        def send(n: int, offset: int) -> None:
            for i in range(n):
                r = chat(gw, (MATH if i % 2 else POEM).format(offset + i), **auth)
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-router-request-id"])
                costs.append(r.json()["router"]["cost"])

        send(10, 0)
        wait_for(lambda: gw.gateway.outcomes.queued == 0)
        redis.stop()
        send(10, 100)  # the gateway keeps serving on local state
        wait_for(lambda: gw.gateway.outcome_store.pending() >= 10)
        ready = httpx.get(gw.url + "/ready").json()
        assert ready["status"] == "ready"
        assert ready["state"]["outcome_store_healthy"] is False
        redis.start()  # same port, same AOF directory
        send(5, 200)
        wait_for(lambda: gw.gateway.outcome_store.pending() == 0 and gw.gateway.outcomes.queued
                 == 0, timeout=15)
        usage = httpx.get(gw.base + "/router/usage", headers=auth).json()
        # spend made while Redis was down was pushed once it came back
        assert usage["spent_usd"] == pytest.approx(sum(costs))
    finally:
        gw.stop()
    out = tmp_path / "out.jsonl"
    assert router_main(["logs", "export", "--redis-url", redis.url, "--state-dir",
                        str(tmp_path / "state"), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["request_id"] for r in records) == sorted(ids)
    assert all(r["status"] == "ok" for r in records)


@pytest.mark.redis
def test_two_replicas_share_one_budget(upstream, artifact, tmp_path, redis_server):
    budget = 4e-4
    gws = []
    for i in range(2):
        cfg = gateway_config(upstream.base, artifact, tmp_path / f"state{i}",
                             state={"redis_url": redis_server.url},
                             keys={"keys": [{"name": "k", "key": KEY, "budget_usd": budget}]})
        gws.append(GatewayServer(cfg).start())
    upstream.control("*", latency_ms=20)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {KEY}"}
                                     ) as client:
            return await asyncio.gather(*(
                client.post(gws[i % 2].base + "/chat/completions", json={
                    "model": "router-knn-1000", "max_tokens": 16,
                    "messages": [{"role": "user", "content": MATH.format(i)}]})
                for i in range(40)))

    auth = {"authorization": f"Bearer {KEY}"}
    try:
        first = httpx.post(gws[0].base + "/chat/completions", headers=auth, json={
            "model": "cheap", "max_tokens": 16, "messages": [{"role": "user", "content": "a"}]})
        cost0 = first.json()["router"]["cost"]
        # the other replica sees that spend
        seen = httpx.get(gws[1].base + "/router/usage", headers=auth).json()
        assert seen["spent_usd"] == pytest.approx(cost0)
        responses = asyncio.run(burst())
        ok = [r for r in responses if r.status_code == 200]
        assert {r.status_code for r in responses} == {200, 402}
        spent = cost0 + sum(r.json()["router"]["cost"] for r in ok)
        assert spent <= budget + 1e-12
        for g in gws:
            usage = httpx.get(g.base + "/router/usage", headers=auth).json()
            assert usage["spent_usd"] == pytest.approx(spent)
    finally:
        upstream.control("*", latency_ms=0)
        for g in gws:
            g.stop()
