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

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router.encoding.encoder import EncoderError, text_list

if TYPE_CHECKING:
    import argparse

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the exported graph changes
QUANT_RECIPE = "dyn-int8-pc-matmul-w-noffnout-v1"
OPSET = 17
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx")
_CONFIG_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
)
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_onnx_cache_dir() -> Path:
    """``$COSTROUTE_CACHE_DIR/onnx`` or ``~/.cache/costroute/onnx``."""
    env = os.environ.get("COSTROUTE_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "costroute"
    return base / "onnx"


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Short hash identifying a local sentence-transformers model directory's contents."""
    model_dir = Path(model_dir).resolve()
    if not model_dir.is_dir():
        raise EncoderError(f"model directory {model_dir} does not exist")
    parts: list[Any] = [str(model_dir), EXPORT_VERSION, OPSET]
    for name in _CONFIG_FILES:
        f = model_dir / name
        if f.is_file():
            parts.append([name, hashlib.sha256(f.read_bytes()).hexdigest()])
    for name in _WEIGHT_FILES:
        f = model_dir / name
        if f.is_file():
            st = f.stat()
            parts.append([name, st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# export and quantisation (need torch / onnx; only run on a cache miss)
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(done: Path, lock: Path, build: Callable[[], None], what: str) -> None:
    """Run ``build`` unless the file ``done`` exists, holding the file lock ``lock``: one
    process builds a cache entry, the others wait for it and reuse it."""
    if done.is_file():
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EncoderError(f"cannot create the {what} cache directory {lock.parent}: {exc}") \
            from exc
    with _file_lock(lock):
        if not done.is_file():
            build()


def lru_put(lru: OrderedDict[str, np.ndarray], lock: threading.Lock,
            items: Iterable[tuple[str, np.ndarray]], size: int) -> None:
    """Keep read-only copies of ``items`` as the newest entries of ``lru`` (at most ``size``)."""
    with lock:
        for text, vec in items:
            vec = vec.copy()
            vec.setflags(write=False)
            lru[text] = vec
            lru.move_to_end(text)
        while len(lru) > size:
            lru.popitem(last=False)


def _atomic_target(target: Path) -> Path:
    """A temporary file next to ``target`` (same filesystem, for ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared like any cache file
    return Path(tmp)


def _export(model_dir: Path, out_dir: Path) -> None:
    """Trace the sentence-transformers pipeline to ``out_dir/model.onnx`` (+ tokenizer, meta)."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise EncoderError(f"exporting to ONNX needs torch and sentence-transformers: {exc}") from exc

    from router.encoding.encoder import _finite_length, _quiet_transformers

    with _quiet_transformers():
        try:
            st = SentenceTransformer(
                str(model_dir), device="cpu", model_kwargs={"attn_implementation": "eager"}
            )
        except Exception:  # models without an eager attention switch
            try:
                st = SentenceTransformer(str(model_dir), device="cpu")
            except Exception as exc:
                raise EncoderError(
                    f"cannot load sentence-transformers model from {model_dir}: {exc}"
                ) from exc
    st.eval()
    first = st[0]
    hf_tok = getattr(first, "tokenizer", None)
    backend_tok = getattr(hf_tok, "backend_tokenizer", None)
    if backend_tok is None:
        raise EncoderError(
            f"{model_dir}: the ONNX backend needs a fast (Rust) tokenizer; this model has none"
        )
    names = [n for n in getattr(hf_tok, "model_input_names", _KNOWN_INPUTS) if n in _KNOWN_INPUTS]
    if "input_ids" not in names or "attention_mask" not in names:
        raise EncoderError(f"{model_dir}: unsupported tokenizer inputs {names}")
    config = getattr(getattr(first, "auto_model", None), "config", None)
    max_pos = int(getattr(config, "max_position_embeddings", 0) or 0) or None

    class _Pipeline(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            features = dict(zip(names, inputs, strict=True))
            emb = self.model(features)["sentence_embedding"]
            return torch.nn.functional.normalize(emb.float(), p=2.0, dim=1)

    example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["embedding"] = {0: "batch"}
    tmp = _atomic_target(out_dir / "model.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    _Pipeline(st), example, str(tmp), dynamo=False,
                    input_names=names, output_names=["embedding"], dynamic_axes=axes,
                    opset_version=OPSET, do_constant_folding=True,
                )
            except TypeError:  # a torch without the legacy (TorchScript) exporter switch
                torch.onnx.export(
                    _Pipeline(st), example, str(tmp), input_names=names,
                    output_names=["embedding"], dynamic_axes=axes, opset_version=OPSET,
                )
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise EncoderError(
            f"ONNX export of {model_dir} failed: {exc} (torch.onnx needs the 'onnx' package)"
        ) from exc
    try:
        with torch.no_grad():
            dim = int(_Pipeline(st)(*example).shape[1])
        tok_tmp = _atomic_target(out_dir / "tokenizer.json")
        backend_tok.save(str(tok_tmp))
        meta = {
            "source": str(model_dir),
            "export_version": EXPORT_VERSION,
            "opset": OPSET,
            "inputs": names,
            "dim": dim,
            "max_seq_length": _finite_length(st.max_seq_length) or max_pos or 512,
            "max_position_embeddings": max_pos,
            "pad_id": int(hf_tok.pad_token_id or 0),
            "pad_token": str(hf_tok.pad_token or "[PAD]"),
            "torch": torch.__version__,
        }
        meta_tmp = _atomic_target(out_dir / "meta.json")
        meta_tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tok_tmp, out_dir / "tokenizer.json")
        os.replace(meta_tmp, out_dir / "meta.json")
        os.replace(tmp, out_dir / "model.onnx")  # last: its presence marks a complete export
    finally:
        for leftover in out_dir.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)


def _quantize(fp32: Path, target: Path) -> None:
    """Dynamic int8: per-channel weight MatMuls, feed-forward output projections kept fp32."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise EncoderError(
            f"int8 quantisation needs the 'onnx' package (pip install onnx): {exc}"
        ) from exc
    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    keep, exclude = [], []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        is_weight = len(node.input) > 1 and node.input[1] in weights
        ffn_out = "/output/dense/" in node.name and "/attention/" not in node.name
        (keep if is_weight and not ffn_out else exclude).append(node.name)
    if not keep:
        raise EncoderError(f"{fp32}: found no weight MatMul to quantise")
    tmp = _atomic_target(target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint
            try:
                quantize_dynamic(
                    str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude,
                )
            finally:
                root.setLevel(level)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_onnx(
    model_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    quantize: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Path of the (exported, maybe quantised) ONNX file for ``model_dir``, and its meta.

    Exports on the first call for a model and reuses the cached files afterwards.
    """
    model_dir = Path(model_dir).expanduser().resolve()
    root = Path(cache_dir).expanduser() if cache_dir else default_onnx_cache_dir()
    out_dir = root / model_fingerprint(model_dir)
    fp32 = out_dir / "model.onnx"
    int8 = out_dir / f"model.int8.{hashlib.sha256(QUANT_RECIPE.encode()).hexdigest()[:8]}.onnx"
    want = int8 if quantize else fp32

    def build() -> None:
        if not fp32.is_file():
            log.info("exporting %s to ONNX in %s", model_dir, out_dir)
            _export(model_dir, out_dir)
        if quantize and not int8.is_file():
            log.info("quantising %s to int8", fp32)
            _quantize(fp32, int8)

    build_once(want, out_dir / ".lock", build, "ONNX")
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderError(
            f"{out_dir}: broken ONNX cache entry ({exc}); delete the directory to re-export"
        ) from exc
    return want, meta


# --------------------------------------------------------------------------------------
# runtime
# --------------------------------------------------------------------------------------
def _default_model_dir() -> Path:
    from router.encoding.encoder import _default_model_path

    return _default_model_path()


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
        model_dir = Path(model_path) if model_path is not None else _default_model_dir()
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


def cache_cli(description: str, sub: str) -> argparse.ArgumentParser:
    """Parser of a ``python -m`` command that fills the ``<cache>/<sub>`` cache ahead."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model_dir", nargs="?", default=None,
                    help="local model directory (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--cache-dir", default=None, help=f"default: $COSTROUTE_CACHE_DIR/{sub}")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m router.encoding.onnx [MODEL_DIR] [--fp32-only]``: export (and quantise) now."""
    ap = cache_cli("export a sentence-transformers model to ONNX (and int8) into the "
                   "costroute cache", "onnx")
    ap.add_argument("--fp32-only", action="store_true", help="skip the int8 model")
    args = ap.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else _default_model_dir()
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
