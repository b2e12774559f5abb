"""Thin FAISS wrapper: exact or approximate nearest-neighbour search over embeddings.

``VectorIndex(dim, kind=...)``:

* ``flat``: exact search;
* ``hnsw``: graph index (``IndexHNSWFlat``), CPU only;
* ``ivf``: inverted lists (``IndexIVFFlat``), trained on the first ``add``;
* ``auto`` (default): exact flat search while the index is small, rebuilt once into HNSW
  when it grows past ``auto_flat_max`` vectors (default :data:`AUTO_FLAT_MAX`; on GPU:
  flat up to :data:`AUTO_FLAT_MAX_GPU`, then IVF, as HNSW does not run on GPU).

Scores are "higher is closer": the inner product for ``metric="ip"`` (cosine for
L2-normalised vectors) and the *negated* squared distance for ``metric="l2"``. Ids are the
insertion order, 0..n-1. Approximate searches that find fewer than ``k`` neighbours are
retried with wider parameters (and finally exactly), so ids are never -1.

With ``use_gpu="auto"`` flat and IVF indexes move to all GPUs when
``faiss.get_num_gpus() > 0``. Single queries run on one OpenMP thread (thread start-up
costs more than it saves there); batches use ``threads`` (default: all cores).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

FORMAT_VERSION = 1
KINDS = ("auto", "flat", "hnsw", "ivf")
METRICS = ("ip", "l2")
AUTO_FLAT_MAX = 50_000
AUTO_FLAT_MAX_GPU = 1_000_000
SMALL_BATCH = 4  # queries at or below this run single-threaded
_omp_lock = threading.Lock()


class VectorIndexError(ValueError):
    """Bad input to a vector index, or an unreadable index file."""


def _auto_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def vectors_checksum(x: np.ndarray, chunk: int = 65_536) -> str:
    """blake2b (16-byte digest, hex) of float32 rows ``x``; equal vectors, equal sums."""
    x = np.asarray(x, dtype=np.float32)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(x.shape, dtype=np.int64).tobytes())
    for start in range(0, len(x), chunk):
        h.update(np.ascontiguousarray(x[start : start + chunk]).data)
    return h.hexdigest()


def _flat_storage(index: Any) -> Any:
    """The ``IndexFlat`` holding an index's raw vectors (flat or HNSW), else ``None``."""
    if index is None:
        return None
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    return index if isinstance(index, faiss.IndexFlat) else None


class _Pinned:
    """Array interface of a view into FAISS memory that keeps the owning index alive."""

    def __init__(self, view: np.ndarray, owner: Any) -> None:
        iface = dict(view.__array_interface__)
        iface["data"] = (iface["data"][0], True)  # read-only
        self.__array_interface__ = iface
        self._view = view
        self._owner = owner


def gpu_count() -> int:
    """GPUs FAISS can use (0 for a faiss-cpu build)."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def choose_kind(n_total: int, on_gpu: bool, auto_flat_max: int | None = None) -> str:
    """The ``auto`` index kind for ``n_total`` vectors: exact while small, then approximate.

    CPU: flat below :data:`AUTO_FLAT_MAX`, then HNSW. GPU: flat below
    :data:`AUTO_FLAT_MAX_GPU` (brute force is fast there), then IVF (HNSW is CPU only).
    """
    if on_gpu:
        return "flat" if n_total < (auto_flat_max or AUTO_FLAT_MAX_GPU) else "ivf"
    return "flat" if n_total < (auto_flat_max or AUTO_FLAT_MAX) else "hnsw"


class VectorIndex:
    """Nearest-neighbour index over ``dim``-dimensional float32 vectors."""

    def __init__(
        self,
        dim: int,
        kind: str = "auto",
        metric: str = "ip",
        use_gpu: bool | str = "auto",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int | None = None,
        threads: int | None = None,
        auto_flat_max: int | None = None,
    ) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise VectorIndexError(f"dim must be a positive integer, got {dim!r}")
        if kind not in KINDS:
            raise VectorIndexError(f"unknown index kind {kind!r}; expected one of {KINDS}")
        if metric not in METRICS:
            raise VectorIndexError(f"unknown metric {metric!r}; expected 'ip' or 'l2'")
        if use_gpu not in ("auto", True, False):
            raise VectorIndexError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
        for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction),
                            ("ef_search", ef_search), ("nlist", nlist), ("nprobe", nprobe),
                            ("threads", threads), ("auto_flat_max", auto_flat_max)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise VectorIndexError(f"{name} must be a positive integer, got {value!r}")
        gpus = gpu_count()
        if use_gpu is True and gpus == 0:
            raise VectorIndexError("use_gpu=True but FAISS sees no GPU (faiss-cpu build?)")
        if use_gpu is True and kind == "hnsw":
            raise VectorIndexError("HNSW indexes run on CPU only; use kind='flat' or 'ivf'")
        self.dim = dim
        self.kind = kind
        self.metric = metric
        self.use_gpu = use_gpu
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.nlist = nlist
        self.nprobe = nprobe
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.auto_flat_max = auto_flat_max
        self._gpu_available = gpus > 0 and use_gpu in ("auto", True)
        self._index: Any = None  # faiss index (CPU or GPU)
        self.built_kind: str | None = None
        self.on_gpu = False

    def get_params(self) -> dict[str, Any]:
        return {
            "dim": self.dim, "kind": self.kind, "metric": self.metric, "use_gpu": self.use_gpu,
            "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
            "ef_search": self.ef_search, "nlist": self.nlist, "nprobe": self.nprobe,
            "threads": self.threads, "auto_flat_max": self.auto_flat_max,
        }

    # -- building ---------------------------------------------------------------------
    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def _faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

    def _check_vectors(self, x: Any, what: str) -> np.ndarray:
        try:
            arr = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise VectorIndexError(f"{what} must be a numeric array: {exc}") from None
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise VectorIndexError(f"{what} must be 2-D (n, {self.dim}), got shape {arr.shape}")
        if arr.shape[1] != self.dim:
            raise VectorIndexError(
                f"{what} have dimension {arr.shape[1]}, but the index has dimension {self.dim}"
            )
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise VectorIndexError(f"{what} contain NaN or infinite values (row {bad})")
        return np.ascontiguousarray(arr)

    def _target_kind(self, n_total: int) -> str:
        if self.kind != "auto":
            return self.kind
        return choose_kind(n_total, self._gpu_available, self.auto_flat_max)

    def _build(self, kind: str, x: np.ndarray) -> None:
        """Create an index of ``kind`` holding exactly ``x``."""
        if kind == "flat":
            index = faiss.IndexFlat(self.dim, self._faiss_metric)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, self._faiss_metric)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            n = len(x)
            nlist = self.nlist or _auto_nlist(n)
            if n < nlist:
                raise VectorIndexError(
                    f"an IVF index with nlist={nlist} needs at least {nlist} vectors in its "
                    f"first add (got {n}); add more vectors at once or lower nlist"
                )
            quantizer = faiss.IndexFlat(self.dim, self._faiss_metric)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, self._faiss_metric)
            index.own_fields = True
            quantizer.this.disown()
            sample = x
            if n > 256 * nlist:
                rng = np.random.default_rng(0)
                sample = x[rng.choice(n, 256 * nlist, replace=False)]
            index.train(sample)
            index.nprobe = self._nprobe(nlist)
        with _omp_lock:
            faiss.omp_set_num_threads(self.threads)
        if len(x):
            index.add(x)
        self._set_index(index, kind)

    def _nprobe(self, nlist: int) -> int:
        return min(nlist, self.nprobe or max(16, nlist // 8))

    def _set_index(self, cpu_index: Any, kind: str) -> None:
        self.built_kind = kind
        self.on_gpu = False
        if self._gpu_available and kind in ("flat", "ivf"):
            cpu_index = faiss.index_cpu_to_all_gpus(cpu_index)
            self.on_gpu = True
        self._index = cpu_index

    def _cpu_index(self) -> Any:
        return faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index

    def vectors(self) -> np.ndarray:
        """All stored vectors (n, dim), in id order (a copy)."""
        if self._index is None or len(self) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._cpu_index().reconstruct_n(0, len(self))

    def stored_vectors(self) -> np.ndarray:
        """Read-only (n, dim) float32 vectors in id order, without a copy when possible.

        Flat and HNSW indexes on CPU keep the raw vectors in one array: the result is a
        view of it (it keeps the index alive). IVF and GPU indexes have no such array, so
        this is a copy (as :meth:`vectors`).
        """
        flat = self._flat()
        if flat is None or len(self) == 0:
            out = self.vectors()
            out.setflags(write=False)
            return out
        n = len(self)
        raw = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim)
        return np.asarray(_Pinned(raw.reshape(n, self.dim), self._index))

    def _flat(self) -> Any:
        return None if self.on_gpu else _flat_storage(self._index)

    @property
    def vectors_are_view(self) -> bool:
        """Whether :meth:`stored_vectors` is a view (no copy) of the index's memory."""
        return self._flat() is not None

    def checksum(self) -> str:
        """blake2b of the stored vectors' bytes (id order), to check a file against them."""
        return vectors_checksum(self.stored_vectors())

    def add(self, vectors: Any) -> np.ndarray:
        """Append vectors (n, dim); returns their int64 ids."""
        x = self._check_vectors(vectors, "vectors")
        start = len(self)
        if self._index is None:
            self._build(self._target_kind(len(x)), x)
        else:
            target = self._target_kind(start + len(x))
            if target != self.built_kind:  # 'auto' outgrew exact search: rebuild once
                self._build(target, np.vstack([self.vectors(), x]))
            else:
                self._index.add(x)
        return np.arange(start, start + len(x), dtype=np.int64)

    # -- searching --------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours: scores float32 (n, k) best first, ids int64 (n, k).

        ``k`` is clipped to the index size; a 1-D query is treated as one row.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise VectorIndexError(f"k must be a positive integer, got {k!r}")
        if len(self) == 0:
            raise VectorIndexError("cannot search an empty index; add vectors first")
        q = self._check_vectors(queries, "queries")
        k = min(int(k), len(self))
        if len(q) == 0:
            return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
        threads = 1 if len(q) <= SMALL_BATCH else self.threads
        with _omp_lock:
            faiss.omp_set_num_threads(threads)
        dist, ids = self._search(q, k, widen=1)
        missing = (ids < 0).any(axis=1)
        widen = 4
        while missing.any() and self.built_kind != "flat":
            rows = np.flatnonzero(missing)
            if widen > len(self):  # last resort: exact search over the stored vectors
                exact = faiss.IndexFlat(self.dim, self._faiss_metric)
                exact.add(self.vectors())
                d2, i2 = exact.search(q[rows], k)
            else:
                d2, i2 = self._search(q[rows], k, widen=widen)
            dist[rows], ids[rows] = d2, i2
            missing = (ids < 0).any(axis=1)
            widen *= 4
        scores = dist if self.metric == "ip" else -dist
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def search_checked(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for one query row the caller has checked (finite float32, (1, dim),
        1 <= k <= len(self)): an exact CPU index answers it directly (it never misses a
        neighbour, so none of search's checks and widening apply); others go to search."""
        if self.built_kind != "flat" or self.on_gpu or len(query) != 1:
            return self.search(query, k)
        dist, ids = self._index.search(query, k)
        return (dist if self.metric == "ip" else -dist), ids

    def _search(self, q: np.ndarray, k: int, widen: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        if self.built_kind == "hnsw":
            ef = min(max(self.ef_search, k) * widen, max(len(self), k))
            params = faiss.SearchParametersHNSW(efSearch=ef)
            return index.search(q, k, params=params)
        if self.built_kind == "ivf":
            nlist = index.nlist
            nprobe = min(nlist, self._nprobe(nlist) * widen)
            if self.on_gpu:
                index.nprobe = nprobe
                return index.search(q, k)
            return index.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        return index.search(q, k)

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` and its settings to ``path + '.json'``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._index is None:
            if self._target_kind(0) == "ivf":
                raise VectorIndexError("cannot save an untrained IVF index; add vectors first")
            self._build(self._target_kind(0), np.zeros((0, self.dim), dtype=np.float32))
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "built_kind": self.built_kind,
            "ntotal": len(self),
            "faiss_version": faiss.__version__,
        }
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        faiss.write_index(self._cpu_index(), str(tmp))
        os.replace(tmp, path)
        sidecar = Path(str(path) + ".json")
        tmp_meta = sidecar.with_name(sidecar.name + f".tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_meta, sidecar)

    @classmethod
    def load(cls, path: str | os.PathLike, use_gpu: bool | str | None = None) -> VectorIndex:
        """Read an index written by :meth:`save` (``use_gpu`` overrides the saved choice)."""
        path = Path(path)
        sidecar = Path(str(path) + ".json")
        for p in (path, sidecar):
            if not p.is_file():
                raise VectorIndexError(f"index file {p} does not exist")
        try:
            meta = json.loads(sidecar.read_text())
            params = dict(meta["params"])
            version = meta["format_version"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VectorIndexError(f"index sidecar {sidecar} is malformed: {exc}") from None
        if version != FORMAT_VERSION:
            raise VectorIndexError(
                f"index {path} has format version {version}, this build reads {FORMAT_VERSION}"
            )
        if use_gpu is not None:
            params["use_gpu"] = use_gpu
        params.pop("threads", None)  # the saving machine's core count; use this one's
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorIndexError(f"cannot read FAISS index {path}: {exc}") from None
        try:
            obj = cls(**params)
        except TypeError as exc:
            raise VectorIndexError(f"index sidecar {sidecar} has bad params: {exc}") from None
        if index.d != obj.dim or index.ntotal != meta.get("ntotal"):
            raise VectorIndexError(
                f"index {path} holds {index.ntotal} vectors of dimension {index.d}, but its "
                f"sidecar says {meta.get('ntotal')} of dimension {obj.dim}"
            )
        obj._set_index(index, meta["built_kind"])
        return obj

    def __repr__(self) -> str:
        return (
            f"VectorIndex(dim={self.dim}, kind={self.kind!r}, built={self.built_kind!r}, "
            f"metric={self.metric!r}, n={len(self)}, gpu={self.on_gpu})"
        )
