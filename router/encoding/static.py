"""Static-embedding encoder backend: a per-token table, mean-pooled, no forward pass.

``backend="static"`` serves a *static* model: one vector per token of the tokenizer's
vocabulary; a text's embedding is the mean of its tokens' vectors, L2-normalised. A short
prompt encodes in tens of microseconds on one core (``benchmarks/bench_route.py``).

Where the model comes from, by what ``model_path`` holds:

* a static model already: a model2vec directory (``config.json`` with ``"model_type":
  "model2vec"``, ``model.safetensors`` with ``embeddings``, ``tokenizer.json``) or a
  sentence-transformers model whose first module is ``StaticEmbedding``: loaded as it is;
* any other sentence-transformers directory (the default all-MiniLM-L6-v2 among them):
  distilled once with model2vec (:func:`model2vec.distill.distill`: every vocabulary token
  run through the model, PCA to ``pca_dims``, Zipf/SIF weighting), offline from the
  installed weights, and cached at ``<cache>/static/<fingerprint>-<recipe>/`` (written
  atomically under a file lock, like the ONNX export of :mod:`router.encoding.onnx`);
  ``python -m router.encoding.static`` does it ahead (e.g. in an image build).

The vectors differ from the source model's (a different model, not a runtime of it), so
an artifact trained with ``static`` is served with ``static`` and checked by its
signature (the source model's files plus the distillation recipe), see
:mod:`router.encoding.select`. Embedding-cache tag: ``static-<recipe>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.encoding.build_cache import build_once, cache_cli, default_onnx_cache_dir, lru_put
from router.encoding.encoder import EncoderError, model_signature, text_list
from router.encoding.onnx_export import model_fingerprint

log = logging.getLogger(__name__)

DISTILL_VERSION = 1  # bump when the distillation call changes
DEFAULT_PCA_DIMS = 256
DEFAULT_MAX_TOKENS = 512  # tokens pooled per text (model2vec's default max_length)


def default_static_cache_dir() -> Path:
    """``$COSTROUTE_CACHE_DIR/static`` or ``~/.cache/costroute/static``."""
    return default_onnx_cache_dir().parent / "static"


def recipe(pca_dims: int, token_remove_pattern: str | None = None) -> str:
    """Name of the distillation recipe (part of cache paths, cache tags and signatures)."""
    name = f"m2v{DISTILL_VERSION}-pca{int(pca_dims)}"
    if token_remove_pattern:  # a reduced vocabulary
        name += "-v" + hashlib.sha256(token_remove_pattern.encode()).hexdigest()[:8]
    return name


def static_kind(model_dir: Path) -> str | None:
    """``"model2vec"``, ``"sentence-transformers"`` (a StaticEmbedding first module), or
    None when ``model_dir`` holds a contextual model (to be distilled)."""
    cfg = model_dir / "config.json"
    if cfg.is_file():
        try:
            if json.loads(cfg.read_text()).get("model_type") == "model2vec":
                return "model2vec"
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    modules = model_dir / "modules.json"
    if modules.is_file():
        try:
            first = json.loads(modules.read_text())[0]
        except (OSError, json.JSONDecodeError, IndexError, KeyError, TypeError):
            return None
        if isinstance(first, dict) and str(first.get("type", "")).endswith("StaticEmbedding"):
            return "sentence-transformers"
    return None


# --------------------------------------------------------------------------------------
# distillation (model2vec, torch; only on a cache miss)
# --------------------------------------------------------------------------------------
def _distil(model_dir: Path, out_dir: Path, pca_dims: int,
            token_remove_pattern: str | None) -> None:
    """Distil ``model_dir`` into a model2vec directory ``out_dir`` (atomic rename)."""
    try:
        from model2vec.distill import distill
    except ImportError as exc:
        raise EncoderError(
            "distilling a static model needs model2vec with its distill extra "
            f"(pip install 'model2vec[distill]'): {exc}") from exc
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        from router.encoding.torch_backend import quiet_transformers

        with quiet_transformers():
            kwargs = {} if token_remove_pattern is None else {
                "token_remove_pattern": token_remove_pattern}
            model = distill(model_name=str(model_dir), pca_dims=int(pca_dims), **kwargs)
        model.save_pretrained(str(tmp))
        meta = {"source": str(model_dir), "source_signature": model_signature(model_dir),
                "recipe": recipe(pca_dims, token_remove_pattern), "model2vec": _version("model2vec"),
                "torch": _version("torch")}
        (tmp / "costroute.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_dir)  # last: the directory's presence marks a complete model
    except EncoderError:
        raise
    except Exception as exc:
        raise EncoderError(f"static distillation of {model_dir} failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def ensure_static(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  pca_dims: int = DEFAULT_PCA_DIMS,
                  token_remove_pattern: str | None = None) -> Path:
    """Directory of the static model for ``model_dir``: itself when already static, else
    its cached distillation (made now on the first call)."""
    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise EncoderError(f"model directory {model_dir} does not exist")
    if static_kind(model_dir) is not None:
        return model_dir
    if not isinstance(pca_dims, int) or isinstance(pca_dims, bool) or pca_dims < 2:
        raise EncoderError(f"pca_dims must be an integer >= 2, got {pca_dims!r}")
    root = Path(cache_dir).expanduser() if cache_dir else default_static_cache_dir()
    if token_remove_pattern is not None:
        try:
            re.compile(token_remove_pattern)
        except (re.error, TypeError) as exc:
            raise EncoderError(f"token_remove_pattern {token_remove_pattern!r}: {exc}") from None
    out_dir = root / f"{model_fingerprint(model_dir)}-{recipe(pca_dims, token_remove_pattern)}"

    def build() -> None:
        log.warning("distilling %s into a static model (once; cached in %s)", model_dir, out_dir)
        _distil(model_dir, out_dir, pca_dims, token_remove_pattern)

    build_once(out_dir / "model.safetensors", root / f".{out_dir.name}.lock", build,
               "static-model")
    return out_dir


# --------------------------------------------------------------------------------------
# runtime (numpy, safetensors, tokenizers)
# --------------------------------------------------------------------------------------
def _load_table(model_dir: Path, kind: str) -> tuple[np.ndarray, Path]:
    """``(table (vocab, dim) float32 with any per-token weights applied, tokenizer.json)``."""
    from safetensors.numpy import load_file

    if kind == "model2vec":
        weights_file, tok_file, key = model_dir / "model.safetensors", model_dir / \
            "tokenizer.json", "embeddings"
    else:
        first = json.loads((model_dir / "modules.json").read_text())[0]
        sub = model_dir / str(first.get("path", ""))
        weights_file, tok_file, key = sub / "model.safetensors", sub / "tokenizer.json", \
            "embedding.weight"
    for f in (weights_file, tok_file):
        if not f.is_file():
            raise EncoderError(f"static model {model_dir}: missing {f.name} ({f})")
    try:
        tensors = load_file(str(weights_file))
    except Exception as exc:
        raise EncoderError(f"static model {model_dir}: cannot read {weights_file}: {exc}") from exc
    if key not in tensors:
        raise EncoderError(f"static model {model_dir}: {weights_file.name} has no {key!r} "
                           f"tensor (found {', '.join(tensors) or 'none'})")
    table = np.asarray(tensors[key], dtype=np.float32)
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 1:
        raise EncoderError(f"static model {model_dir}: embedding table shape {table.shape}")
    weights = tensors.get("weights")
    if "mapping" in tensors:  # vocabulary-quantised model2vec: token -> row
        table = table[np.asarray(tensors["mapping"], dtype=np.int64)]
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        if weights.shape[0] != table.shape[0]:
            raise EncoderError(f"static model {model_dir}: {weights.shape[0]} token weights "
                               f"for {table.shape[0]} tokens")
        table = table * weights[:, None]
    if not np.isfinite(table).all():
        raise EncoderError(f"static model {model_dir}: the embedding table is not finite")
    return np.ascontiguousarray(table), tok_file


class StaticBackend:
    """Mean of per-token vectors (see the module docstring).

    Parameters
    ----------
    model_path: a static model directory, or a sentence-transformers directory to distil.
    device: only ``None`` / ``"cpu"`` (a table lookup gains nothing from a GPU).
    max_seq_length: tokens pooled per text (default 512).
    pca_dims: dimensions of a distillation (default 256).
    token_remove_pattern: regex of vocabulary tokens left out of a distillation (model2vec's
        option; default: its own, the ``[unusedN]`` tokens).
    lru_size: recently encoded texts kept in memory (default 0: encoding is cheaper
        than most cache bookkeeping).
    cache_dir: where distilled models live (see :func:`default_static_cache_dir`).
    """

    @staticmethod
    def cache_tag_for(device: str | None, options: dict[str, Any]) -> str:
        return "static-" + recipe(int(options.get("pca_dims", DEFAULT_PCA_DIMS)),
                                  options.get("token_remove_pattern"))

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str | None = None,
        max_seq_length: int | None = None,
        pca_dims: int = DEFAULT_PCA_DIMS,
        token_remove_pattern: str | None = None,
        lru_size: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - a sentence-transformers dependency
            raise EncoderError(f"the static backend needs tokenizers: {exc}") from exc
        if device not in (None, "cpu"):
            raise EncoderError(f"the static backend runs on the CPU only, not {device!r}")
        if max_seq_length is not None and (
                not isinstance(max_seq_length, int) or max_seq_length < 1):
            raise EncoderError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
        if not isinstance(lru_size, int) or isinstance(lru_size, bool) or lru_size < 0:
            raise EncoderError(f"lru_size must be an integer >= 0, got {lru_size!r}")
        source = Path(model_path).expanduser().resolve()
        self.source = source
        self.model_dir = ensure_static(source, cache_dir, pca_dims, token_remove_pattern)
        kind = static_kind(self.model_dir)
        if kind is None:
            raise EncoderError(f"{self.model_dir} is not a static model")
        self.kind = kind
        self.table, tok_file = _load_table(self.model_dir, kind)
        self.dim = int(self.table.shape[1])
        self.device = "cpu"
        self.max_seq_length = int(max_seq_length or DEFAULT_MAX_TOKENS)
        try:
            tok = Tokenizer.from_file(str(tok_file))
        except Exception as exc:
            raise EncoderError(f"static model {self.model_dir}: cannot load {tok_file}: {exc}") \
                from exc
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        if tok.get_vocab_size() > self.table.shape[0]:
            log.debug("tokenizer has %d tokens, table %d rows", tok.get_vocab_size(),
                      self.table.shape[0])
        unk = None
        if kind == "model2vec":
            try:
                cfg = json.loads(tok_file.read_text())
                unk_tok = (cfg.get("model") or {}).get("unk_token")
                unk = tok.token_to_id(unk_tok) if unk_tok else None
            except (OSError, json.JSONDecodeError, AttributeError):
                unk = None
        self._unk = unk
        self.signature = self._signature(recipe(pca_dims, token_remove_pattern))
        self.lru_size = lru_size
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _signature(self, recipe_name: str) -> str:
        """The source model's signature and the recipe (distilled), or the static model's."""
        if self.model_dir != self.source:
            return f"{model_signature(self.source)}+{recipe_name}"
        h = hashlib.sha256(model_signature(self.model_dir).encode())
        h.update(f"{self.table.shape}".encode())
        return h.hexdigest()[:16]

    # -- encoding ---------------------------------------------------------------------
    def _pool(self, ids: Sequence[int]) -> np.ndarray:
        if self._unk is not None:
            ids = [i for i in ids if i != self._unk]
        ids = list(ids[: self.max_seq_length])
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        # the mean as ndarray.mean computes it (a float32 sum, divided in place) without
        # its Python-level bookkeeping, which costs more than the sum for one short prompt
        v = np.add.reduce(self.table[ids], axis=0)
        v /= len(ids)
        # float64 sqrt of a float32: the same float32 once ``v / n`` rounds n to float32
        n = math.sqrt(v @ v)
        return v / n if n > 1e-12 else v

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 (len(texts), dim), rows L2-normalised (a text with no known token: 0)."""
        texts = text_list(texts, "encode_batch() takes a list of texts, not one string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if len(texts) == 1:  # the gateway's common case: no batch machinery
            hit = self._lru.get(texts[0]) if self.lru_size else None
            if hit is not None:
                out[0] = hit
                return out
            out[0] = self._pool(self._tok.encode(texts[0], add_special_tokens=False).ids)
        else:
            encs = self._tok.encode_batch(texts, add_special_tokens=False)
            for i, e in enumerate(encs):
                out[i] = self._pool(e.ids)
        if self.lru_size:
            lru_put(self._lru, self._lock, zip(texts, out, strict=True), self.lru_size)
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def __repr__(self) -> str:
        return f"StaticBackend({str(self.model_dir)!r}, dim={self.dim}, kind={self.kind})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m router.encoding.static [MODEL_DIR]``: distil now (into the cache)."""
    ap = cache_cli("distil a sentence-transformers model into a static model in the "
                   "costroute cache", "static")
    ap.add_argument("--pca-dims", type=int, default=DEFAULT_PCA_DIMS)
    args = ap.parse_args(argv)
    from router.encoding.models import default_model_path

    try:
        model_dir = Path(args.model_dir) if args.model_dir else default_model_path()
        print(ensure_static(model_dir, args.cache_dir, args.pca_dims))
    except EncoderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
