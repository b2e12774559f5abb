"""Several `router serve` processes sharing one real Redis: learning, budgets, crashes.

Every replica is a real subprocess started through the CLI with a config file written here;
the backends are the local OpenAI-compatible upstream (tests/upstream.py), the policy a
LinUCB bandit over the model-free hashing encoder (instant start).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.state import redis_client
from router.state.outcome_store import RedisOutcomeStore
from tests.upstream import MATH, POEM, UpstreamServer, backend_entry, linucb_artifact

pytestmark = pytest.mark.redis

KEY = "sk-replica-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
KEY_HASH = hashlib.sha256(KEY.encode()).hexdigest()
BANDIT = "costroute:bandit:linucb"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return linucb_artifact(tmp_path_factory.mktemp("art") / "linucb")


def config(upstream: UpstreamServer, artifact: Path, redis_url: str, state_dir: Path,
           budget: float | None = None, **state: Any) -> dict[str, Any]:
    """The YAML mapping a replica is started with."""
    return {
        "model_list": [backend_entry("cheap", upstream.base, 1e-6, 2e-6),
                       backend_entry("strong", upstream.base, 1e-5, 2e-5)],
        "routing": {"artifact": str(artifact), "lam": 10.0, "fallback": ["cheap", "strong"]},
        "state": {"dir": str(state_dir), "redis_url": redis_url,
                  "flush_interval_seconds": 0.2, **state},
        "keys": {"keys": [{"name": "k", "key": KEY, "budget_usd": budget}]},
    }


@functools.cache
def http() -> httpx.Client:
    """One keep-alive client for the sequential calls (a new client per call costs ~0.1 s)."""
    return httpx.Client(headers=AUTH, timeout=20)


def route(base: str, text: str, model: str = "router-auto") -> httpx.Response:
    r = http().post(base + "/chat/completions", json={
        "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r


def feedback(base: str, request_id: str, reward: float) -> httpx.Response:
    return http().post(base + "/feedback", json={"request_id": request_id, "reward": reward})


def scores(base: str, texts: list[str]) -> list[list[tuple[str, float]]]:
    """The policy's candidate scores for each text (identical states give identical scores)."""
    out = []
    for t in texts:
        cands = route(base, t).json()["router"]["candidates"]
        out.append([(c["model"], c["score"]) for c in cands])
    return out


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_feedback_through_any_replica_and_late_replica(upstream, artifact, tmp_path,
                                                        redis_server, replica_factory):
    a, b = replica_factory.start_all(*(
        replica_factory(config(upstream, artifact, redis_server.url, tmp_path / n))
        for n in ("sa", "sb")))
    prompt = MATH.format(2)
    assert route(b.base, prompt).headers["x-router-model"] == "cheap"
    # requests served by A, feedback posted to B: the cheap model fails these questions
    for _ in range(15):
        r = route(a.base, prompt)
        reward = {"cheap": 0.0, "strong": 1.0}[r.headers["x-router-model"]]
        fb = feedback(b.base, r.headers["x-router-request-id"], reward)
        assert fb.status_code == 200 and fb.json()["updated"] is True, fb.text
    # both replicas now route with the learned state
    assert route(b.base, prompt).headers["x-router-model"] == "strong"
    assert route(a.base, prompt).headers["x-router-model"] == "strong"

    # the same feedback through both replicas at once: accepted exactly once
    rid = route(a.base, POEM.format(3)).headers["x-router-request-id"]
    with ThreadPoolExecutor(2) as pool:
        codes = sorted(pool.map(lambda base: feedback(base, rid, 1.0).status_code,
                                (a.base, b.base)))
    assert codes == [200, 409]
    assert feedback(a.base, rid, 1.0).status_code == 409
    unknown = feedback(b.base, "cr-" + "0" * 24, 1.0)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"

    # a replica started now loads the learned state: the same scores as the others, exactly
    c = replica_factory(config(upstream, artifact, redis_server.url, tmp_path / "sc")).start()
    probe = [MATH.format(2), MATH.format(7), POEM.format(3), "hello there"]
    learned = scores(a.base, probe)
    assert scores(c.base, probe) == learned
    assert scores(b.base, probe) == learned
    assert learned[0][0][0] == "strong"


def test_budget_through_both_replicas_is_never_exceeded(upstream, artifact, tmp_path,
                                                         redis_server, replica_factory):
    budget = 4e-4
    reps = replica_factory.start_all(*(
        replica_factory(config(upstream, artifact, redis_server.url, tmp_path / f"s{i}",
                               budget=budget)) for i in range(2)))
    upstream.control("*", latency_ms=20)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
            return await asyncio.gather(*(
                client.post(reps[i % 2].base + "/chat/completions", json={
                    "model": "router-auto", "max_tokens": 16,
                    "messages": [{"role": "user", "content": (MATH, POEM)[i % 3 == 0].format(i)}]})
                for i in range(60)))

    try:
        responses = asyncio.run(burst())
    finally:
        upstream.control("*", latency_ms=0)
    ok = [r for r in responses if r.status_code == 200]
    assert {r.status_code for r in responses} == {200, 402}
    paid = sum(r.json()["router"]["cost"] for r in ok)
    r = redis_client(redis_server.url)
    wait_for(lambda: float(r.hget(f"costroute:key:{KEY_HASH}", "reserved") or 0) < 1e-12)
    spent = float(r.hget(f"costroute:key:{KEY_HASH}", "spent"))
    assert spent <= budget + 1e-12
    assert spent == pytest.approx(paid, rel=1e-9)
    assert spent > budget / 2  # the budget was really used up, not refused from the start
    for rep in reps:
        usage = http().get(rep.base + "/router/usage").json()
        assert usage["spent_usd"] == pytest.approx(paid, rel=1e-9)


def test_sigkill_mid_load_loses_no_answered_outcome(upstream, artifact, tmp_path, redis_server,
                                                     replica_factory):
    reps = replica_factory.start_all(*(
        replica_factory(config(upstream, artifact, redis_server.url, tmp_path / f"s{i}",
                               sync_outcomes=True)) for i in range(2)))
    upstream.control("*", latency_ms=5)
    answered: list[tuple[int, str]] = []
    failed = [0, 0]
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(timeout=10, headers=AUTH) as http:
            for i in range(400):
                if stop.is_set():
                    return
                target = (worker + i) % 2
                try:
                    resp = http.post(reps[target].base + "/chat/completions", json={
                        "model": "router-auto", "max_tokens": 8,
                        "messages": [{"role": "user", "content": MATH.format(i)}]})
                except httpx.HTTPError:
                    failed[target] += 1
                    continue
                if resp.status_code == 200:
                    answered.append((target, resp.headers["x-router-request-id"]))

    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, w) for w in range(4)]
            wait_for(lambda: sum(t == 0 for t, _ in answered) >= 20, timeout=20)
            reps[0].kill()  # SIGKILL while requests are in flight
            time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result()
    finally:
        upstream.control("*", latency_ms=0)
    assert reps[0].proc.returncode == -9
    assert failed[0] > 0  # the kill really happened mid-load
    assert sum(t == 1 for t, _ in answered) > 0
    reps[1].stop()
    stored = {rec["request_id"] for rec in RedisOutcomeStore(redis_server.url).records()}
    missing = [rid for _, rid in answered if rid not in stored]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no record"
    # `router logs export` reads the same records from the stream
    from router.cli import main as router_main

    out = tmp_path / "out.jsonl"
    assert router_main(["logs", "export", "--redis-url", redis_server.url, "--state-dir",
                        str(tmp_path / "s0"), "--out", str(out)]) == 0
    exported = {json.loads(line)["request_id"] for line in out.read_text().splitlines()}
    assert {rid for _, rid in answered} <= exported
