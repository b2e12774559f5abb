"""The built-in ``"torch"`` encoder runtime: sentence-transformers on PyTorch (CUDA and fp16
when present), plus the helpers other runtimes share (device placement, finite token
limits, quiet model loading)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from router.encoding.errors import EncoderError


def cuda_present() -> bool:
    """Whether torch sees a CUDA device (torch is imported only if a driver node exists)."""
    if not any(os.path.exists(f"/dev/nvidia{i}") for i in range(8)):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def torch_placement(device: str | None, fp16: bool | None, cuda: bool) -> tuple[str, bool]:
    """``(device, fp16)`` for the torch backend: CUDA when present, fp16 there by default."""
    dev = device or ("cuda" if cuda else "cpu")
    return dev, dev.startswith("cuda") if fp16 is None else bool(fp16)


class TorchBackend:
    """sentence-transformers on PyTorch; fp16 on CUDA unless ``fp16=False``."""

    cache_tag = ""

    @staticmethod
    def cache_tag_for(device: str | None, options: dict[str, Any]) -> str:
        """fp16 vectors (CUDA default) are cached apart from fp32 ones."""
        fp16 = options.get("fp16")
        if fp16 is None and device is None:
            return "fp16" if cuda_present() else ""
        return "fp16" if torch_placement(device, fp16, cuda=False)[1] else ""

    def __init__(
        self,
        model_path: str,
        *,
        device: str | None = None,
        max_seq_length: int | None = None,
        fp16: bool | None = None,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        device, fp16 = torch_placement(device, fp16, torch.cuda.is_available())
        try:
            with quiet_transformers():
                model = SentenceTransformer(str(model_path), device=device)
        except Exception as exc:  # bad directory, missing files, bad device
            raise EncoderError(
                f"cannot load sentence-transformers model from {model_path}: {exc}"
            ) from exc
        try:
            if fp16:
                model.half()
            if max_seq_length is not None:
                model.max_seq_length = int(max_seq_length)
            self.max_seq_length = finite_length(model.max_seq_length)
            get_dim = getattr(model, "get_embedding_dimension", None)
            if get_dim is None:  # sentence-transformers < 5
                get_dim = model.get_sentence_embedding_dimension
            dim = get_dim()
        except Exception as exc:  # a module without a length limit setter, fp16, dimension
            raise EncoderError(
                f"sentence-transformers model at {model_path} cannot be set up "
                f"(max_seq_length={max_seq_length}, fp16={fp16}): {exc}") from exc
        self.model = model
        self.device = device
        self.model_path = str(model_path)
        if not dim:
            raise EncoderError(f"model at {model_path} does not report an embedding dimension")
        self.dim = int(dim)

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        try:
            out = self.model.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        except Exception as exc:
            raise EncoderError(f"sentence-transformers model at {self.model_path} failed to "
                               f"encode {len(texts)} texts: {type(exc).__name__}: {exc}") from exc
        return np.asarray(out, dtype=np.float32)


def finite_length(value: Any) -> int | None:
    """A model's token limit as an int; None when it has none (StaticEmbedding: inf)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return int(value) if value == value and abs(value) != float("inf") else None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load 'Loading weights' progress bar."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
