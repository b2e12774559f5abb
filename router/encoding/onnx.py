"""ONNX Runtime encoder backend: the sentence-transformers model without torch on the hot path.

The first use of a model exports it once: the whole sentence-transformers pipeline
(transformer, pooling, any Dense/Normalize modules) plus a final L2 normalisation is traced
with ``torch.onnx.export`` (dynamic batch and sequence axes) and written atomically to
``<cache>/onnx/<fingerprint>/model.onnx`` together with the model's fast tokenizer
(``tokenizer.json``) and ``meta.json``. Later processes load only onnxruntime and
``tokenizers`` (no torch import), so startup is fast and resident memory small.

``quantize=True`` adds ``model.int8.onnx``: dynamic int8 quantisation (per-channel weights)
of the weight MatMuls, *except* the feed-forward output projections, whose large
GELU activations lose the most precision under int8. On sample RouterBench prompts this
keeps cosine similarity with the reference encoder at >= 0.99 (plain per-tensor
quantisation of every MatMul falls to ~0.93; see ``benchmarks/bench_route.py``).

``<cache>`` is ``cache_dir`` or ``$COSTROUTE_CACHE_DIR`` or ``~/.cache/costroute``. The
fingerprint covers the model directory's config, tokenizer and weight files (size and
mtime), the export recipe version and the quantisation recipe, so editing a model
re-exports it. Exports run under a file lock (one process exports, the others wait).

Registered with :class:`router.encoding.encoder.Encoder` as ``backend="onnx"`` (fp32) and
``backend="onnx-int8"``; each has its own embedding-cache tag (never mixed with torch's).
``router serve`` / ``router route`` use them by default (:mod:`router.encoding.select`).
On a fresh machine the export runs once, offline, from the installed weights, when the
gateway starts; ``python -m router.encoding.onnx`` does it ahead (e.g. in an image build).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.encoding.build_cache import cache_cli, lru_put
from router.encoding.errors import EncoderError, text_list
from router.encoding.onnx_export import (
    default_model_dir,
    ensure_onnx,
    model_fingerprint,
)

__all__ = ["OnnxBackend", "OnnxInt8Backend", "default_threads", "ensure_onnx",
           "model_fingerprint", "main"]

log = logging.getLogger(__name__)


def _providers(device: str | None) -> tuple[list[str], str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    dev = (device or "").lower()
    if dev.startswith("cuda") or (not dev and "CUDAExecutionProvider" in available):
        if "CUDAExecutionProvider" not in available:
            raise EncoderError(
                "device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu)"
            )
        dev_id = int(dev.split(":")[1]) if ":" in dev else 0
        return [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"], (
            f"cuda:{dev_id}"
        )
    if dev and dev != "cpu":
        raise EncoderError(f"unknown device {device!r} for the ONNX backend (use 'cpu' or 'cuda')")
    return ["CPUExecutionProvider"], "cpu"


def _length_chunks(lengths: Sequence[int], batch_size: int, slack: float = 0.25,
                   allowance: int = 32) -> list[list[int]]:
    """Row groups for forward passes: sorted by length, cut where padding would cost much.

    A row joins the current group while the group's padded tokens exceed its real tokens
    by at most ``max(slack * real, allowance)``: one pass per group saves per-call
    overhead, but a long row padding many short ones costs more than it saves.
    """
    order = np.argsort(lengths, kind="stable")
    chunks: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n = int(lengths[i])
        if cur and (
            len(cur) >= batch_size or n * (len(cur) + 1) - (real + n) > max(slack * (real + n), allowance)
        ):
            chunks.append(cur)
            cur, real = [], 0
        cur.append(int(i))
        real += n
    if cur:
        chunks.append(cur)
    return chunks


def default_threads() -> int:
    """Intra-op threads when none are given: two where the machine has them."""
    return max(1, min(2, os.cpu_count() or 1))


class OnnxBackend:
    """Sentence embeddings with onnxruntime and the Rust tokenizer.

    Parameters
    ----------
    model_path: local sentence-transformers directory (default: the packaged
        all-MiniLM-L6-v2).
    device: ``None`` (CUDA if onnxruntime has it, else CPU), ``"cpu"`` or ``"cuda[:i]"``.
    max_seq_length: tokens per text incl. special tokens (default: the model's, 256 for
        all-MiniLM-L6-v2); shorter is faster on long prompts.
    quantize: run the int8 model (see the module docstring).
    threads: onnxruntime intra-op threads (default ``min(2, cores)``: measured on 2 cores,
        a lone short prompt encodes in 3.3 ms on 2 threads against 3.7 ms on 1, and a
        test-set prompt in 10.4 against 14.8 ms, while micro-batched throughput at 64
        callers drops ~12%; set 1 to favour throughput).
    batch_size: texts per forward pass inside :meth:`encode_batch` (sorted by length).
    lru_size: recently encoded texts kept in memory (0 disables).
    cache_dir: where the exported files live (see :func:`default_onnx_cache_dir`).
    """

    cache_tag = "onnx"  # fp32, but not bit-identical to torch: cached apart

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        max_seq_length: int | None = None,
        quantize: bool = False,
        threads: int | None = None,
        batch_size: int = 32,
        lru_size: int = 4096,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EncoderError(f"the ONNX backend needs onnxruntime and tokenizers: {exc}") from exc
        for value, what, low in ((batch_size, "batch_size", 1), (lru_size, "lru_size", 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise EncoderError(f"{what} must be an integer >= {low}, got {value!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise EncoderError(f"threads must be a positive integer or None, got {threads!r}")
        model_dir = Path(model_path) if model_path is not None else default_model_dir()
        self.model_path = str(model_dir)
        self.quantize = bool(quantize)
        self.model_file, self.meta = ensure_onnx(model_dir, cache_dir, quantize=self.quantize)
        self.dim = int(self.meta["dim"])
        limit = self.meta.get("max_position_embeddings") or None
        msl = int(max_seq_length) if max_seq_length is not None else int(self.meta["max_seq_length"])
        if msl < 2 or (limit and msl > limit):
            raise EncoderError(
                f"max_seq_length must be between 2 and {limit or 'the model limit'}, got {msl}"
            )
        self.max_seq_length = msl
        self.batch_size = batch_size
        self.lru_size = lru_size

        tok = Tokenizer.from_file(str(self.model_file.parent / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(max_length=msl)
        self._tok = tok
        self._pad_id = int(self.meta.get("pad_id", 0))
        self._inputs: list[str] = list(self.meta["inputs"])

        providers, self.device = _providers(device)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or default_threads())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting worker threads: they steal the few cores from the event loop
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.threads = opts.intra_op_num_threads
        try:
            self._session = ort.InferenceSession(
                str(self.model_file), sess_options=opts, providers=providers
            )
        except Exception as exc:
            raise EncoderError(f"onnxruntime cannot load {self.model_file}: {exc}") from exc
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # -- encoding ---------------------------------------------------------------------
    def _forward(self, encodings: Sequence[Any]) -> np.ndarray:
        n = len(encodings)
        width = max(len(e.ids) for e in encodings)
        ids = np.full((n, width), self._pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {name: arrays[name] for name in self._inputs}
        return self._session.run(None, feed)[0].astype(np.float32, copy=False)

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:
            return self._forward([self._tok.encode(texts[0])])
        encodings = self._tok.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in _length_chunks(lengths, self.batch_size):
            out[rows] = self._forward([encodings[i] for i in rows])
        return out

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 (len(texts), dim), rows L2-normalised."""
        texts = text_list(texts, "encode_batch() takes a list of texts, not one string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if self.lru_size == 0:
            out[:] = self._encode_uncached(texts)
            return out
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, t in enumerate(texts):
                vec = self._lru.get(t)
                if vec is None:
                    todo.setdefault(t, []).append(i)
                else:
                    self._lru.move_to_end(t)
                    out[i] = vec
            self.hits += len(texts) - sum(len(v) for v in todo.values())
            self.misses += sum(len(v) for v in todo.values())
        if todo:
            fresh = self._encode_uncached(list(todo))
            for rows, vec in zip(todo.values(), fresh, strict=True):
                out[rows] = vec
            lru_put(self._lru, self._lock, zip(todo, fresh, strict=True), self.lru_size)
        return out

    def encode_one(self, text: str) -> np.ndarray:
        """Float32 (dim,) embedding of one text."""
        return self.encode_batch([text])[0]

    def clear_cache(self) -> None:
        with self._lock:
            self._lru.clear()
            self.hits = self.misses = 0

    def __repr__(self) -> str:
        kind = "int8" if self.quantize else "fp32"
        return (
            f"{type(self).__name__}({self.model_path!r}, {kind}, device={self.device!r}, "
            f"max_seq_length={self.max_seq_length}, threads={self.threads})"
        )


class OnnxInt8Backend(OnnxBackend):
    """:class:`OnnxBackend` with the int8 model; its vectors are cached apart (``cache_tag``)."""

    cache_tag = "onnx-int8"

    def __init__(self, model_path: str | os.PathLike | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("quantize", True)
        if not kwargs["quantize"]:
            raise EncoderError("OnnxInt8Backend is the quantised model; use OnnxBackend for fp32")
        super().__init__(model_path, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m router.encoding.onnx [MODEL_DIR] [--fp32-only]``: export (and quantise) now."""
    ap = cache_cli("export a sentence-transformers model to ONNX (and int8) into the "
                   "costroute cache", "onnx")
    ap.add_argument("--fp32-only", action="store_true", help="skip the int8 model")
    args = ap.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    try:
        for quantize in (False,) if args.fp32_only else (False, True):
            path, meta = ensure_onnx(model_dir, args.cache_dir, quantize=quantize)
            print(f"{path} (dim {meta['dim']})")
    except EncoderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
