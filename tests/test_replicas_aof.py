"""Redis with AOF (appendfsync always): restart keeps the state; an outage loses no learning.

A real `router serve` subprocess learns (bandit updates, key spend, outcome records); Redis is
shut down and restarted on the same directory: the state equals what it was. Then Redis goes
down while the replica keeps serving and learning, once with the replica surviving and once
with it SIGKILLed during the outage (its disk buffers carry the outcomes and bandit updates
to the next start).
"""

from __future__ import annotations

import contextlib
import time

import pytest
import redis as redis_py

from router.state import redis_client
from router.state.bandit_store import RedisBanditStore
from tests.test_replicas import (  # noqa: F401 (module fixtures)
    BANDIT,
    KEY_HASH,
    artifact,
    config,
    feedback,
    http,
    route,
    wait_for,
)
from tests.upstream import MATH

pytestmark = pytest.mark.redis
STREAM = "costroute:outcomes"


def shared_state(url: str) -> tuple[object, float, int]:
    """(bandit state, key spend, outcome stream length) as Redis holds them."""
    r = redis_client(url)
    state = RedisBanditStore(url, BANDIT).state()
    spent = float(r.hget(f"costroute:key:{KEY_HASH}", "spent") or 0)
    return state, spent, int(r.xlen(STREAM))


def shutdown(server) -> None:
    """SHUTDOWN (AOF fsynced), then wait for the process to exit."""
    with contextlib.suppress(redis_py.ConnectionError):
        redis_client(server.url).shutdown()
    server.proc.wait(timeout=10)
    server.proc = None


def learn(base: str, rounds: int, offset: int) -> float:
    """Routed requests each given feedback; returns what they cost."""
    cost = 0.0
    for i in range(rounds):
        r = route(base, MATH.format(offset + i))
        cost += r.json()["router"]["cost"]
        reward = {"cheap": 0.0, "strong": 1.0}[r.headers["x-router-model"]]
        fb = feedback(base, r.headers["x-router-request-id"], reward)
        assert fb.status_code == 200 and fb.json()["updated"] is True, fb.text
    return cost


def test_aof_restart_and_outages(upstream, artifact, tmp_path, redis_factory,  # noqa: F811
                                 replica_factory):
    redis = redis_factory(aof=True).start()
    cfg = config(upstream, artifact, redis.url, tmp_path / "state", budget=1.0,
                 sync_outcomes=True)
    a = replica_factory(cfg, "a").start()
    learn(a.base, 6, 0)
    wait_for(lambda: shared_state(redis.url)[2] == 12)  # 6 outcomes + 6 feedback events
    state0, spent0, n0 = shared_state(redis.url)
    assert state0.version == 6 and spent0 > 0

    # 1. restart on the same AOF directory: bandit, spend and outcomes are what they were
    shutdown(redis)
    redis.start()
    state1, spent1, n1 = shared_state(redis.url)
    assert state1.same_params(state0) and spent1 == spent0 and n1 == n0

    # 2. outage, replica survives: it serves and learns locally, then pushes everything
    shutdown(redis)
    cost = learn(a.base, 3, 100)
    ready = http().get(a.url + "/ready").json()
    assert ready["status"] == "ready"
    assert ready["state"]["bandit_store_healthy"] is False
    assert ready["state"]["outcome_store_healthy"] is False
    redis.start()
    time.sleep(1.1)  # past the stores' retry interval
    probe = route(a.base, MATH.format(0)).json()["router"]["cost"]  # retries Redis, pushes
    wait_for(lambda: shared_state(redis.url)[0].version == 9, timeout=15)
    wait_for(lambda: shared_state(redis.url)[2] == n0 + 7, timeout=15)  # +3 +3 feedback +1
    state2, spent2, _ = shared_state(redis.url)
    assert int(state2.counts.sum()) == 9
    assert spent2 == pytest.approx(spent0 + cost + probe, rel=1e-9)

    # 3. outage, replica SIGKILLed before Redis returns: its disk buffers survive it
    _, spent3, n3 = shared_state(redis.url)
    shutdown(redis)
    learn(a.base, 3, 200)
    a.kill()
    redis.start()
    b = replica_factory(cfg, "b").start()  # same state dir: pushes what a buffered
    wait_for(lambda: shared_state(redis.url)[0].version == 12, timeout=15)
    wait_for(lambda: shared_state(redis.url)[2] == n3 + 6, timeout=15)
    assert not (tmp_path / "state" / "bandit-linucb-pending.jsonl").exists()
    # (key spend made during the outage by the killed replica was held in its memory only)
    b.stop()



def test_spend_of_a_replica_killed_during_an_outage_reaches_redis_once(
        upstream, artifact, tmp_path, redis_factory, replica_factory):  # noqa: F811
    """Spend on a key while Redis is down, SIGKILL, Redis back, restart: charged exactly once."""
    server = redis_factory(aof=True).start()
    rep = replica_factory(config(upstream, artifact, server.url, tmp_path / "state",
                                 budget=5.0), "outage").start()
    text = MATH.format(7)
    before = [float(route(rep.base, text).headers["x-router-cost"]) for _ in range(2)]
    server.stop()
    during = [float(route(rep.base, text).headers["x-router-cost"]) for _ in range(3)]
    assert sum(during) > 0
    rep.kill()  # SIGKILL: the outage's spend lives only in the replica's journal now
    server.start()
    rc = redis_py.Redis.from_url(server.url)

    def spent() -> float:
        return float(rc.hget(f"costroute:key:{KEY_HASH}", "spent") or 0.0)

    assert spent() == pytest.approx(sum(before), rel=1e-9)
    rep.start()  # the restarted replica pushes its journal, with no request needed
    want = sum(before) + sum(during)
    wait_for(lambda: spent() >= want * (1 - 1e-9), timeout=15)
    time.sleep(2.5)  # later housekeeping rounds must not push it again
    assert spent() == pytest.approx(want, rel=1e-9)
    rep.stop()
