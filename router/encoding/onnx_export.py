"""Exporting a sentence-transformers model to ONNX once (and quantising it to int8), into
the costroute cache; see :mod:`router.encoding.onnx` for the format and the runtime that
serves it. Needs torch and onnx, and runs only on a cache miss."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from router.encoding.build_cache import atomic_target, build_once, default_onnx_cache_dir
from router.encoding.errors import EncoderError

log = logging.getLogger("router.encoding.onnx")

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


def _export(model_dir: Path, out_dir: Path) -> None:
    """Trace the sentence-transformers pipeline to ``out_dir/model.onnx`` (+ tokenizer, meta)."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise EncoderError(f"exporting to ONNX needs torch and sentence-transformers: {exc}") from exc

    from router.encoding.torch_backend import finite_length, quiet_transformers

    with quiet_transformers():
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
    tmp = atomic_target(out_dir / "model.onnx")
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
        tok_tmp = atomic_target(out_dir / "tokenizer.json")
        backend_tok.save(str(tok_tmp))
        meta = {
            "source": str(model_dir),
            "export_version": EXPORT_VERSION,
            "opset": OPSET,
            "inputs": names,
            "dim": dim,
            "max_seq_length": finite_length(st.max_seq_length) or max_pos or 512,
            "max_position_embeddings": max_pos,
            "pad_id": int(hf_tok.pad_token_id or 0),
            "pad_token": str(hf_tok.pad_token or "[PAD]"),
            "torch": torch.__version__,
        }
        meta_tmp = atomic_target(out_dir / "meta.json")
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
    tmp = atomic_target(target)
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
def default_model_dir() -> Path:
    from router.encoding.models import default_model_path

    return default_model_path()
