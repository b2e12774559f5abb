"""Embedded bandit store: snapshot/log round trips, crash recovery, threads, mismatches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from policies.linucb import LinUCBPolicy
from router.state.bandit_store import BanditStoreError, EmbeddedBanditStore
from tests.test_bandit_linucb import MODELS, synthetic


def fitted(**params) -> tuple[LinUCBPolicy, np.ndarray, np.ndarray]:
    X, quality, cost = synthetic()
    return LinUCBPolicy(**params).fit(X[:200], quality[:200], cost[:200], MODELS), X, cost


def feed(policy: LinUCBPolicy, X, cost, start: int, stop: int) -> None:
    for i in range(start, stop):
        arm = (i * 7) % len(MODELS)
        policy.update(X[i], arm, float(i % 3 == 0), float(cost[i, arm]))


def test_snapshot_round_trip_is_exact(tmp_path):
    policy, X, cost = fitted(alpha=0.3, proj_dim=8)
    artifact = policy.save(tmp_path / "artifact")  # the prior only (version 0)
    store = EmbeddedBanditStore(tmp_path / "bandit.npz", snapshot_every=None)
    policy.attach_store(store)
    feed(policy, X, cost, 200, 260)
    store.close()  # snapshot
    assert (tmp_path / "bandit.npz").is_file()
    assert (tmp_path / "bandit.npz.log").stat().st_size == 0

    reopened = EmbeddedBanditStore(tmp_path / "bandit.npz")
    assert reopened.state().same_params(policy.bandit_state())
    other = LinUCBPolicy.load(artifact)  # a restarted gateway: artifact + snapshot
    assert other.bandit_state().version == 0
    other.attach_store(reopened)  # the store holds this artifact's bandit: it takes over
    assert other.bandit_state().version == 60
    np.testing.assert_array_equal(other.predict(X).quality, policy.predict(X).quality)


def test_crash_without_snapshot_replays_the_log(tmp_path):
    policy, X, cost = fitted()
    store = EmbeddedBanditStore(tmp_path / "b.npz", snapshot_every=25)
    policy.attach_store(store)
    feed(policy, X, cost, 200, 290)  # snapshots at 25, 50, 75; 15 outcomes only in the log
    # no close(): simulate a crash, and a torn half-written last record
    with open(tmp_path / "b.npz.log", "ab") as f:
        f.write(b"\x01\x02\x03")
    recovered = EmbeddedBanditStore(tmp_path / "b.npz")
    assert recovered.version() == 90
    assert recovered.state().same_params(policy.bandit_state())


def test_snapshot_then_crash_before_log_truncation_does_not_double_count(tmp_path):
    policy, X, cost = fitted()
    store = EmbeddedBanditStore(tmp_path / "b.npz", snapshot_every=None)
    policy.attach_store(store)
    feed(policy, X, cost, 200, 240)
    log_bytes = (tmp_path / "b.npz.log").read_bytes()
    store.snapshot()
    (tmp_path / "b.npz.log").write_bytes(log_bytes)  # as if truncation never happened
    recovered = EmbeddedBanditStore(tmp_path / "b.npz")
    assert recovered.version() == 40
    assert recovered.state().same_params(policy.bandit_state())


def test_store_of_another_artifact_is_refused(tmp_path):
    policy, X, cost = fitted(reg=1.0)
    policy.attach_store(EmbeddedBanditStore(tmp_path / "b.npz"))
    policy._store.close()
    other, _, _ = fitted(reg=2.0)
    with pytest.raises(BanditStoreError, match="another artifact"):
        other.attach_store(EmbeddedBanditStore(tmp_path / "b.npz"))


def test_corrupt_snapshot_and_empty_store_errors(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BanditStoreError, match="unreadable"):
        EmbeddedBanditStore(tmp_path / "bad.npz")
    with pytest.raises(BanditStoreError, match="empty"):
        EmbeddedBanditStore().update(0, np.zeros(3), 1.0, 0.0)
    policy, X, _ = fitted()
    store = policy.store
    with pytest.raises(BanditStoreError, match="dimension"):
        store.update(0, np.zeros(3), 1.0, 0.0)
    with pytest.raises(BanditStoreError, match="out of range"):
        store.update(9, policy.features(X[:1])[0], 1.0, 0.0)


def test_concurrent_threads_lose_no_update():
    policy, X, cost = fitted()
    reference, _, _ = fitted()
    outcomes = [(X[200 + i % 100], i % 3, float(i % 2), 1e-3) for i in range(400)]

    def worker(chunk):
        for x, a, r, c in chunk:
            policy.update(x, a, r, c)
            policy.predict(x[None])  # readers interleave with writers

    threads = [threading.Thread(target=worker, args=(outcomes[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, a, r, c in outcomes:
        reference.update(x, a, r, c)
    got, want = policy.bandit_state(), reference.bandit_state()
    assert got.version == 400
    np.testing.assert_array_equal(got.counts, want.counts)
    # folded in another order: equal up to round-off (the ridge solution is order-free)
    np.testing.assert_allclose(got.theta(), want.theta(), rtol=1e-9, atol=1e-12)
