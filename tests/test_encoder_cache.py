"""The SQLite embedding cache: bulk get/put, persistence, corruption, concurrency, kills."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from router.encoding.cache import DB_NAME, EmbeddingCache, default_cache_dir, text_hash

REPO = Path(__file__).resolve().parents[1]
DIM = 16


def vec_for(key: str) -> np.ndarray:
    """A deterministic vector per key, so any writer stores the same value."""
    seed = int.from_bytes(text_hash(key)[:4], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def items(keys):
    return [(text_hash(k), vec_for(k)) for k in keys]


def test_put_get_round_trip_and_bulk(tmp_path):
    keys = [f"text {i}" for i in range(5000)]
    with EmbeddingCache(tmp_path) as cache:
        t0 = time.perf_counter()
        assert cache.put_many("m", "v", items(keys)) == 5000
        found = cache.get_many("m", "v", [text_hash(k) for k in keys])
        elapsed = time.perf_counter() - t0
        assert len(found) == 5000
        for k in keys[:50]:
            got = found[text_hash(k)]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, vec_for(k))
        assert elapsed < 20  # thousands of keys in one go, not one round trip each
        # keys are scoped by model and view; unknown keys are simply absent
        assert cache.get_many("other-model", "v", [text_hash(keys[0])]) == {}
        assert cache.get_many("m", "other-view", [text_hash(keys[0])]) == {}
        assert cache.get_many("m", "v", [text_hash("never stored")]) == {}
        # first writer wins; a duplicate put writes nothing
        assert cache.put_many("m", "v", [(text_hash(keys[0]), np.zeros(DIM))]) == 0
        np.testing.assert_array_equal(
            cache.get_many("m", "v", [text_hash(keys[0])])[text_hash(keys[0])], vec_for(keys[0])
        )
        assert cache.count() == 5000 and cache.count("m", "v") == 5000
        assert cache.integrity_ok()


def test_survives_new_instance_and_process(tmp_path):
    with EmbeddingCache(tmp_path) as cache:
        cache.put_many("m", "v", items(["a", "b"]))
    with EmbeddingCache(tmp_path) as again:
        assert len(again.get_many("m", "v", [text_hash("a"), text_hash("b")])) == 2
    code = (
        "import sys; from router.encoding.cache import EmbeddingCache, text_hash\n"
        f"c = EmbeddingCache({str(tmp_path)!r})\n"
        "print(len(c.get_many('m', 'v', [text_hash('a'), text_hash('b')])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "2"


def test_default_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COSTROUTE_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("COSTROUTE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "costroute" / "embeddings"


def test_garbage_file_is_detected_and_rebuilt(tmp_path, caplog):
    with EmbeddingCache(tmp_path) as cache:
        cache.put_many("m", "v", items(["a", "b"]))
    db = tmp_path / DB_NAME
    db.write_bytes(os.urandom(8192))
    with caplog.at_level(logging.WARNING, logger="router.encoding.cache"):
        cache = EmbeddingCache(tmp_path)
        assert cache.get_many("m", "v", [text_hash("a")]) == {}  # fresh, empty cache
    assert cache.rebuilt == 1
    assert "corrupt" in caplog.text
    assert list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))
    assert cache.put_many("m", "v", items(["c"])) == 1
    assert cache.integrity_ok()
    cache.close()


def test_damaged_pages_are_detected_by_the_integrity_check(tmp_path, caplog):
    with EmbeddingCache(tmp_path) as cache:
        cache.put_many("m", "v", items([f"t{i}" for i in range(3000)]))
    db = tmp_path / DB_NAME
    size = db.stat().st_size
    with open(db, "r+b") as fh:  # keep the header valid, smash interior b-tree pages
        for offset in range(4096 * 2, size - 4096, 4096 * 7):
            fh.seek(offset)
            fh.write(b"\xff" * 512)
    with caplog.at_level(logging.WARNING, logger="router.encoding.cache"):
        cache = EmbeddingCache(tmp_path)
        cache.put_many("m", "v", items(["fresh"]))
    assert cache.rebuilt == 1 and "corrupt" in caplog.text
    assert cache.count() == 1 and cache.integrity_ok()
    cache.close()


def test_corruption_found_mid_use_is_rebuilt(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put_many("m", "v", items(["a"]))
    cache.close()
    cache = EmbeddingCache(tmp_path, check="none")  # skip the open-time check
    (tmp_path / DB_NAME).write_bytes(b"not a database at all" * 500)
    assert cache.get_many("m", "v", [text_hash("a")]) == {}
    assert cache.put_many("m", "v", items(["b"])) == 1
    assert cache.rebuilt == 1 and cache.integrity_ok()
    cache.close()


def test_unusable_directory_disables_cache(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="router.encoding.cache"):
        cache = EmbeddingCache(blocker / "sub")
        assert cache.put_many("m", "v", items(["a"])) == 0
        assert cache.get_many("m", "v", [text_hash("a")]) == {}
    assert cache.disabled and "caching disabled" in caplog.text


def _writer(cache_dir: str, worker: int, n: int) -> None:
    cache = EmbeddingCache(cache_dir)
    # overlapping key ranges, small transactions, so the writers interleave
    keys = [f"k{i}" for i in range(worker * n // 2, worker * n // 2 + n)]
    for start in range(0, n, 25):
        cache.put_many("m", "v", items(keys[start : start + 25]))
        cache.get_many("m", "v", [text_hash(k) for k in keys[: start + 25]])
    cache.close()


def test_concurrent_writers_leave_a_consistent_cache(tmp_path):
    n, workers = 400, 3
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    expected = {f"k{i}" for w in range(workers) for i in range(w * n // 2, w * n // 2 + n)}
    with EmbeddingCache(tmp_path) as cache:
        assert cache.integrity_ok()
        assert cache.count() == len(expected)
        found = cache.get_many("m", "v", [text_hash(k) for k in sorted(expected)])
        assert len(found) == len(expected)
        for k in sorted(expected):
            np.testing.assert_array_equal(found[text_hash(k)], vec_for(k))


KILL_WRITER = """
import sys
from tests.test_encoder_cache import items
from router.encoding.cache import EmbeddingCache
cache = EmbeddingCache(sys.argv[1])
i = 0
while True:
    cache.put_many("m", "v", items([f"x{j}" for j in range(i, i + 200)]))
    i += 200
    if i == 1000:
        print("ready", flush=True)
"""


def test_killed_writer_leaves_a_usable_cache(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with EmbeddingCache(tmp_path) as cache:
        assert cache.rebuilt == 0 and cache.integrity_ok()
        n = cache.count()
        assert n >= 1000 and n % 200 == 0  # whole transactions only
        keys = [f"x{j}" for j in range(n)]
        found = cache.get_many("m", "v", [text_hash(k) for k in keys])
        assert len(found) == n
        np.testing.assert_array_equal(found[text_hash(keys[-1])], vec_for(keys[-1]))


def test_truncated_vector_blob_is_a_miss(tmp_path):
    with EmbeddingCache(tmp_path) as cache:
        cache.put_many("m", "v", items(["a"]))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("UPDATE embeddings SET vec = substr(vec, 1, 8)")
    conn.commit()
    conn.close()
    with EmbeddingCache(tmp_path) as cache:
        assert cache.get_many("m", "v", [text_hash("a")]) == {}


def test_bad_check_mode():
    with pytest.raises(ValueError, match="check"):
        EmbeddingCache("/tmp", check="sometimes")


def test_threads_share_one_cache_object(tmp_path, caplog):
    from concurrent.futures import ThreadPoolExecutor

    cache = EmbeddingCache(tmp_path)

    def work(worker: int) -> int:
        keys = [f"t{worker}-{i}" for i in range(100)]
        for start in range(0, 100, 10):
            cache.put_many("m", "v", items(keys[start : start + 10]))
        return len(cache.get_many("m", "v", [text_hash(k) for k in keys]))

    with caplog.at_level(logging.WARNING, logger="router.encoding.cache"), \
            ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [100] * 4
    assert caplog.text == "" and not cache.disabled
    assert cache.count() == 400
    cache.close()
