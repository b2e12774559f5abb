"""Redis bandit store: same decisions as embedded, no lost updates across processes,
exact restore from Redis, compaction with lagging replicas."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from policies.linucb import LinUCBPolicy
from router.state.bandit_store import (
    BanditState,
    BanditStoreError,
    EmbeddedBanditStore,
    RedisBanditStore,
)
from tests.test_bandit_linucb import MODELS, synthetic

pytestmark = pytest.mark.redis


def fitted(**params) -> LinUCBPolicy:
    X, quality, cost = synthetic()
    return LinUCBPolicy(**params).fit(X[:200], quality[:200], cost[:200], MODELS)


def test_redis_and_embedded_make_identical_decisions(redis_server):
    X, quality, cost = synthetic()
    truth = np.nan_to_num(quality)
    embedded = fitted(alpha=0.5, proj_dim=10)
    embedded.attach_store(EmbeddedBanditStore())
    shared = fitted(alpha=0.5, proj_dim=10)
    shared.attach_store(RedisBanditStore(redis_server.url, "t:eq", compact_every=37))
    for i in range(200, 300):
        a = embedded.route_one(X[i], lam=20.0)
        b = shared.route_one(X[i], lam=20.0)
        assert a == b  # same model, same scores, bit for bit
        for p in (embedded, shared):
            p.update(X[i], a.index, truth[i, a.index], cost[i, a.index])
    assert shared.bandit_state().same_params(embedded.bandit_state())


def _worker(url: str, prefix: str, artifact: str, rows: list[int], seed: int) -> None:
    policy = LinUCBPolicy.load(artifact)
    policy.attach_store(RedisBanditStore(url, prefix, compact_every=None))
    X, quality, cost = synthetic()
    rng = np.random.default_rng(seed)
    for i in rows:
        arm = int(rng.integers(len(MODELS)))
        policy.update(X[i], arm, float(np.nan_to_num(quality[i, arm])), float(cost[i, arm]))
        if i % 5 == 0:
            policy.predict(X[i:i + 1])  # sync mid-stream, as a gateway decision would


def test_concurrent_processes_lose_no_update(redis_server, tmp_path):
    artifact = str(fitted(proj_dim=12).save(tmp_path / "art"))
    seeder = LinUCBPolicy.load(artifact)
    prior = seeder.bandit_state()
    seeder.attach_store(RedisBanditStore(redis_server.url, "t:conc"))
    ctx = mp.get_context("spawn")
    rows = list(range(200, 300)) * 2  # 200 outcomes, 50 per process
    procs = [
        ctx.Process(target=_worker, args=(redis_server.url, "t:conc", artifact, rows[k::4], k))
        for k in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    shared = seeder.bandit_state()
    assert shared.version == 200 and shared.counts.sum() == 200

    # every process's outcomes are in the log exactly once, interleaved in some order
    X, quality, cost = synthetic()
    # one row at a time, exactly as update() computes them
    Z = {i: seeder.features(X[i:i + 1])[0] for i in range(200, 300)}
    want = {}
    for k in range(4):
        rng = np.random.default_rng(k)
        for i in rows[k::4]:
            arm = int(rng.integers(len(MODELS)))
            want.setdefault((i, arm), 0)
            want[(i, arm)] += 1
    log = RedisBanditStore(redis_server.url, "t:conc")._r.xrange("t:conc:log")
    assert [int(eid.split(b"-")[1]) for eid, _ in log] == list(range(1, 201))
    got = {}
    rows_of = {Z[i].tobytes(): i for i in range(200, 300)}
    for _, f in log:
        key = (rows_of[f[b"x"]], int(f[b"a"]))
        got[key] = got.get(key, 0) + 1
    assert got == want

    # counts and parameters equal the sequential fold of that log, bit for bit
    for _, f in log:
        prior.apply(int(f[b"a"]), np.frombuffer(f[b"x"], "<f8"), float(f[b"r"]), float(f[b"c"]))
    assert prior.same_params(shared)
    # ... and the batch ridge solution over prior + the 200 outcomes
    fresh = LinUCBPolicy.load(artifact).bandit_state()
    A, b = np.linalg.inv(fresh.A_inv), fresh.b.copy()
    for (i, arm), n in want.items():
        A[arm] += n * np.outer(Z[i], Z[i])
        b[arm] += n * float(np.nan_to_num(quality[i, arm])) * Z[i]
    theta = np.stack([np.linalg.solve(A[a], b[a]) for a in range(len(MODELS))])
    np.testing.assert_allclose(shared.theta(), theta, rtol=1e-8, atol=1e-10)
    # a replica started afterwards holds the same parameters
    again = LinUCBPolicy.load(artifact)
    again.attach_store(RedisBanditStore(redis_server.url, "t:conc"))
    assert again.bandit_state().same_params(shared)


def test_sequential_fold_of_the_log_is_exact(redis_server):
    """Without compaction the log *is* the order: folding it reproduces the state."""
    X, quality, cost = synthetic()
    policy = fitted()
    prior = policy.bandit_state()
    policy.attach_store(RedisBanditStore(redis_server.url, "t:log", compact_every=None))
    for i in range(200, 260):
        policy.update(X[i], i % 3, float(i % 2), float(cost[i, i % 3]))
    store = RedisBanditStore(redis_server.url, "t:log")
    for _, fields in store._r.xrange("t:log:log"):
        prior.apply(int(fields[b"a"]), np.frombuffer(fields[b"x"], "<f8"),
                    float(fields[b"r"]), float(fields[b"c"]))
    assert prior.same_params(policy.bandit_state())


def test_restart_from_redis_restores_exactly(redis_server, tmp_path):
    X, quality, cost = synthetic()
    artifact = fitted(alpha=0.2).save(tmp_path / "art")
    first = LinUCBPolicy.load(artifact)
    first.attach_store(RedisBanditStore(redis_server.url, "t:rs", compact_every=16))
    for i in range(200, 250):
        first.update(X[i], i % 3, float(i % 2), float(cost[i, i % 3]))
    before = first.predict(X).quality
    # a brand-new process: artifact (prior only) + the shared store
    second = LinUCBPolicy.load(artifact)
    assert not np.array_equal(second.predict(X).quality, before)
    second.attach_store(RedisBanditStore(redis_server.url, "t:rs"))
    np.testing.assert_array_equal(second.predict(X).quality, before)
    assert second.bandit_state().same_params(first.bandit_state())


def test_lagging_replica_catches_up_after_compaction(redis_server):
    X, _, cost = synthetic()
    a = fitted()
    a.attach_store(RedisBanditStore(redis_server.url, "t:lag", compact_every=10))
    b = fitted()
    b.attach_store(RedisBanditStore(redis_server.url, "t:lag", compact_every=10))
    b.predict(X[:1])  # b syncs now, then stays idle while a writes and compacts
    for i in range(200, 235):
        a.update(X[i], i % 3, 1.0, float(cost[i, i % 3]))
    assert a.store.log_length() < 35
    assert b.bandit_state().same_params(a.bandit_state())


def test_redis_store_of_another_artifact_is_refused(redis_server):
    fitted(reg=1.0).attach_store(RedisBanditStore(redis_server.url, "t:fp"))
    with pytest.raises(BanditStoreError, match="another artifact"):
        fitted(reg=3.0).attach_store(RedisBanditStore(redis_server.url, "t:fp"))


def test_unreachable_redis_is_a_clear_error():
    from tests.conftest import free_port

    store = RedisBanditStore(f"redis://127.0.0.1:{free_port()}/0", "t:none")
    with pytest.raises(BanditStoreError, match="unreachable"):
        fitted().attach_store(store)


def test_a_stale_outage_buffer_from_another_artifact_does_not_block_start(redis_server, tmp_path,
                                                                          caplog):
    """Buffered outcomes written by an artifact with other arms/dims (a redeploy after a
    crash during an outage) are dropped with a warning; the fitting ones are pushed."""
    import logging

    from router.proxy.bandit import ResilientBanditStore
    from router.state.outcome_store import DiskBuffer

    m, d = 3, 4
    state = BanditState.from_ridge(np.tile(np.eye(d), (m, 1, 1)), np.zeros((m, d)),
                                   np.zeros(m), np.zeros(m), np.zeros(m))
    path = tmp_path / "bandit-linucb-pending.jsonl"
    DiskBuffer(path).append([
        {"a": 1, "z": [0.1, 0.2, 0.3, 0.4], "r": 1.0, "c": 0.01},  # fits
        {"a": 5, "z": [0.1, 0.2, 0.3, 0.4], "r": 1.0, "c": 0.01},  # no such arm
        {"a": 0, "z": [0.1, 0.2], "r": 0.0, "c": 0.01},  # other dimension
        {"a": 0},  # malformed
    ])
    store = ResilientBanditStore(RedisBanditStore(redis_server.url, "t:stale"),
                                 buffer_path=path)
    with caplog.at_level(logging.WARNING):
        store.initialize(state)
    assert "dropping 2 of 3 buffered bandit outcomes" in caplog.text
    assert "malformed" in caplog.text
    assert store.healthy and store.version() == 1
    counts = store.state().counts
    assert int(counts.sum()) == 1 and int(counts[1]) == 1
    assert len(DiskBuffer(path)) == 0  # pushed, buffer emptied
