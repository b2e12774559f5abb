"""Asyncio micro-batcher: concurrent requests share one encoder forward pass.

Each request awaits :meth:`MicroBatcher.encode` with its own text. A single collector task
takes the first waiting text, then gathers more until ``max_batch`` texts are queued or
``max_wait_ms`` has passed, and runs ``encode_batch(texts)`` once in a worker thread (the
event loop stays free). Up to ``workers`` batches run at once (one thread each; with a
single-threaded encoder, ``workers=2`` keeps both cores of a small machine busy; a batch
collected while several workers are idle is split between them). While the
workers are busy, new requests queue up and form the next batch, so under load batches
grow by themselves and throughput scales with concurrency instead of queueing one forward
pass per request.

``max_wait_ms`` is only paid under concurrent load (a pass is running, several requests
arrived together, or the previous batch held several): a lone request on an idle batcher
goes straight through. Requests created in the same event-loop iteration always share a
batch.

Any ``encode_batch(list[str]) -> (n, d) array`` works: :class:`router.encoding.onnx.OnnxBackend`,
a torch backend, or ``Encoder.encode``. An exception from it is raised in every request of
that batch; a cancelled request is dropped without affecting the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EncodeFn = Callable[[list[str]], Any]


class BatcherError(RuntimeError):
    """The batcher is closed, or was used from a different event loop."""


@dataclass
class BatcherStats:
    """Counts since start: requests served, forward passes run, batch-size histogram."""

    requests: int = 0
    batches: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    encode_seconds: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0

    @property
    def max_batch(self) -> int:
        return max(self.sizes, default=0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch": round(self.mean_batch, 3),
            "max_batch": self.max_batch,
            "encode_seconds": round(self.encode_seconds, 6),
        }


class MicroBatcher:
    """Gather concurrent :meth:`encode` calls into batched ``encode_batch`` calls.

    Parameters
    ----------
    encode_batch: the batch encoder (run in a worker thread).
    max_batch: most texts per forward pass.
    max_wait_ms: how long the first text of a batch waits for company.
    workers: forward passes allowed to run at the same time (the encoder must be
        thread-safe for ``workers > 1``; onnxruntime sessions are).
    """

    def __init__(
        self,
        encode_batch: EncodeFn,
        max_batch: int = 32,
        max_wait_ms: float = 1.0,
        workers: int = 1,
    ) -> None:
        if not callable(encode_batch):
            raise TypeError("encode_batch must be callable")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not (isinstance(max_wait_ms, int | float) and 0 <= max_wait_ms < 1000):
            raise ValueError(f"max_wait_ms must be in [0, 1000), got {max_wait_ms!r}")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.encode_batch = encode_batch
        self.max_batch = max_batch
        self.max_wait_ms = float(max_wait_ms)
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._running: set[asyncio.Task] = set()
        self._last_size = 0

    # -- lifecycle --------------------------------------------------------------------
    def _ensure_started(self) -> asyncio.Queue:
        if self._closed:
            raise BatcherError("the micro-batcher is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._executor = ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="microbatch"
            )
            self._task = loop.create_task(self._run(), name="micro-batcher")
        elif self._loop is not loop:
            raise BatcherError("a MicroBatcher serves one event loop; create one per loop")
        assert self._queue is not None
        return self._queue

    async def aclose(self) -> None:
        """Stop collecting; requests still queued fail with :class:`BatcherError`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(BatcherError("the micro-batcher was closed"))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def __aenter__(self) -> MicroBatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests ---------------------------------------------------------------------
    async def encode(self, text: str) -> np.ndarray:
        """The (dim,) embedding of ``text``, computed in a shared batch."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        queue = self._ensure_started()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        queue.put_nowait((text, fut))
        return await fut

    async def encode_many(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) embeddings of several texts (each joins the shared batches)."""
        vecs = await asyncio.gather(*(self.encode(t) for t in texts))
        return np.stack(vecs) if vecs else np.zeros((0, 0), dtype=np.float32)

    # -- the collector ----------------------------------------------------------------
    async def _collect(self, queue: asyncio.Queue) -> list[tuple[str, asyncio.Future]]:
        batch = [await queue.get()]
        await asyncio.sleep(0)  # requests made in the same loop iteration join this batch
        while len(batch) < self.max_batch and not queue.empty():
            batch.append(queue.get_nowait())
        # wait for company only under concurrent load: a lone request on an idle batcher
        # goes straight through instead of paying max_wait_ms
        busy = len(batch) > 1 or self._last_size > 1 or bool(self._running)
        deadline = time.monotonic() + (self.max_wait_ms / 1000.0 if busy else 0.0)
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        self._last_size = len(batch)
        return [(t, f) for t, f in batch if not f.cancelled()]

    async def _run(self) -> None:
        assert self._queue is not None
        slots = asyncio.Semaphore(self.workers)
        running = self._running
        try:
            while True:
                await slots.acquire()  # a batch forms only when a worker can take it
                try:
                    batch = await self._collect(self._queue)
                except BaseException:
                    slots.release()
                    raise
                if not batch:
                    slots.release()
                    continue
                # idle workers share a big batch instead of one worker taking it all
                parts = 1
                while parts < min(self.workers, len(batch) // 2) and not slots.locked():
                    await slots.acquire()  # does not block: a slot is free
                    parts += 1
                bounds = [len(batch) * i // parts for i in range(parts + 1)]  # parts >= 2 rows
                for lo, hi in zip(bounds, bounds[1:], strict=False):
                    task = asyncio.create_task(self._encode(batch[lo:hi], slots))
                    running.add(task)
                    task.add_done_callback(running.discard)
        except asyncio.CancelledError:
            for task in list(running):
                task.cancel()
            raise

    async def _encode(
        self, batch: list[tuple[str, asyncio.Future]], slots: asyncio.Semaphore
    ) -> None:
        loop = asyncio.get_running_loop()
        texts = [t for t, _ in batch]
        start = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self.encode_batch, texts)
            vecs = np.asarray(out, dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(texts):
                raise BatcherError(
                    f"encode_batch returned shape {vecs.shape} for {len(texts)} texts"
                )
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(BatcherError("the micro-batcher was closed"))
            raise
        except Exception as exc:  # the encoder failed: every request of the batch sees it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self.stats.encode_seconds += time.perf_counter() - start
            slots.release()
        self.stats.batches += 1
        self.stats.requests += len(texts)
        self.stats.sizes[len(texts)] = self.stats.sizes.get(len(texts), 0) + 1
        for (_, fut), vec in zip(batch, vecs, strict=True):
            if not fut.done():
                fut.set_result(vec.copy())
