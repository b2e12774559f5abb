"""Fine-tuning a sentence-transformers encoder with RouterDC's dual contrastive losses.

Chen et al. (NeurIPS 2024) train the query encoder itself together with one learnable
embedding per LLM: the sample-LLM loss pulls a query's embedding toward its ``top_k``
best-scoring LLMs and away from the ``last_k`` worst, the sample-sample loss pulls
queries of the same k-means cluster (clusters of the *pretrained* embeddings) together.
:func:`finetune` does that for any sentence-transformers model on CPU or CUDA.

Speed on CPU
------------
Only the top ``train_layers`` transformer layers (and the modules after the transformer,
e.g. a Dense layer) train. For BERT-style models (``embeddings`` + ``encoder.layer``)
the frozen bottom is run *once*: its output for every training prompt is kept, and each
step runs just the trainable top layers on it (:class:`_TopRunner`, checked against the
full forward at start). Batches are drawn at random and then grouped by length inside
windows of a few batches, so little compute goes to padding. Other architectures, or
``train_layers=0`` (everything trains), run the whole model each step.

The result is an ordinary sentence-transformers model (:func:`save_model` writes it with a
:data:`router.encoding.encoder.FINETUNE_MARKER` file holding a digest of the weights, so the model's
signature, and with it the embedding cache key, changes with its contents), plus the
learned LLM embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies._contrastive import sample_llm_loss, supcon_loss
from policies.base import PolicyError

#: tokens per prompt while fine-tuning and serving (the text view already keeps the question)
DEFAULT_MAX_SEQ_LENGTH = 128
_WINDOW = 8  # batches per length-sorting window
_CHECK_TOL = 1e-4  # cached top-layer path vs full forward (max abs difference)


@dataclass(frozen=True)
class FinetuneSettings:
    """How :func:`finetune` trains (see :class:`policies.routerdc.RouterDCPolicy`)."""

    model: str = "all-MiniLM-L6-v2"
    text_view: str = "question"
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    train_layers: int = 2  # top transformer layers that train; 0 = the whole model
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    llm_lr: float = 1e-2
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps with a linear warm-up
    temperature: float = 0.1
    top_k: int = 3
    last_k: int = 3
    sample_weight: float = 1.0
    cluster_temperature: float = 0.2
    device: str | None = None  # None: CUDA when present, else CPU
    threads: int | None = None  # torch threads on CPU (None: leave the current setting)
    seed: int = 0


@dataclass
class FinetuneResult:
    """The fine-tuned model, the unit LLM embeddings (m, d) and how training went."""

    model: Any  # sentence_transformers.SentenceTransformer (on CPU, eval mode)
    llm: np.ndarray
    Z: np.ndarray  # (n, d) unit fine-tuned embeddings of every text given to finetune
    info: dict[str, Any]


# ---- model loading -------------------------------------------------------------------------
def model_directory(model: str) -> Path:
    """The local directory of a sentence-transformers model name or path (offline)."""
    from router.encoding.encoder import (
        DEFAULT_MODEL,
        EncoderError,
        default_model_path,
        find_in_hf_cache,
        resolve_model,
    )

    try:
        key, local = resolve_model(model)
        if local is not None:
            return local
        return default_model_path() if key == DEFAULT_MODEL else find_in_hf_cache(key)
    except EncoderError as exc:
        raise PolicyError(f"routerdc: cannot fine-tune {model!r}: {exc}") from None


def load_model(model: str, device: str, max_seq_length: int):
    """A fresh SentenceTransformer (its own copy of the weights) on ``device``."""
    from router.encoding.torch_backend import quiet_transformers

    path = model_directory(model)
    try:
        from sentence_transformers import SentenceTransformer

        with quiet_transformers():
            st = SentenceTransformer(str(path), device=device)
    except Exception as exc:  # bad directory, missing files
        raise PolicyError(f"routerdc: cannot load the encoder {model!r} to fine-tune: {exc}"
                          ) from exc
    st.max_seq_length = int(max_seq_length)
    return st


def pick_device(device: str | None) -> str:
    """``device``, or CUDA when torch sees one, else CPU (as :mod:`router.encoding.encoder`)."""
    from router.encoding.encoder import torch_placement

    return torch_placement(device, False, torch.cuda.is_available())[0]


# ---- the forward passes ----------------------------------------------------------------------
class _Passthrough(nn.Module):
    """Stands in for a BERT embeddings module: returns the given hidden states."""

    def forward(self, input_ids=None, inputs_embeds=None, **_: Any) -> torch.Tensor:
        return inputs_embeds


class _Batcher:
    """Tokenised prompts and padded batches of them."""

    def __init__(self, tokenizer, texts: Sequence[str], max_len: int, device: str) -> None:
        enc = tokenizer(list(texts), truncation=True, max_length=max_len, padding=False)
        self.keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        self.rows = [{k: enc[k][i] for k in self.keys} for i in range(len(texts))]
        self.lengths = np.array([len(r["input_ids"]) for r in self.rows])
        self.pad = int(tokenizer.pad_token_id or 0)
        self.device = device

    def batch(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        width = int(self.lengths[list(ids)].max())
        out = {}
        for k in self.keys:
            fill = self.pad if k == "input_ids" else 0
            out[k] = torch.tensor([r[k] + [fill] * (width - len(r[k]))
                                   for r in (self.rows[i] for i in ids)], device=self.device)
        return out


class _TopRunner:
    """Runs a sentence-transformers model either whole or as "cached bottom + top layers"."""

    def __init__(self, st, train_layers: int, batcher: _Batcher) -> None:
        self.st = st
        self.batcher = batcher
        hf = getattr(st[0], "auto_model", None)
        layers = getattr(getattr(hf, "encoder", None), "layer", None)
        self.hf = hf
        self.split = None  # index of the first trainable layer when the bottom is cached
        if (train_layers > 0 and hf is not None and hasattr(hf, "embeddings")
                and isinstance(layers, nn.ModuleList) and train_layers < len(layers)):
            self.split = len(layers) - train_layers
        self.cache: list[torch.Tensor] | None = None

    # -- which parameters train
    def trainable(self, train_layers: int) -> list[nn.Parameter]:
        for p in self.st.parameters():
            p.requires_grad_(train_layers == 0)
        if train_layers == 0:
            return [p for p in self.st.parameters()]
        layers = getattr(getattr(self.hf, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise PolicyError("routerdc: train_layers > 0 needs a BERT-style encoder "
                              "(encoder.layer); use train_layers=0 to fine-tune it whole")
        top = list(layers[max(0, len(layers) - train_layers):])
        params = [p for m in top for p in m.parameters()]
        params += [p for m in list(self.st)[1:] for p in m.parameters()]  # Dense etc.
        for p in params:
            p.requires_grad_(True)
        return params

    # -- the cached path
    def build_cache(self, progress: bool = False, batch: int = 64) -> None:
        """Run the frozen bottom once over every prompt (eval mode, no grad)."""
        if self.split is None:
            return
        n = len(self.batcher.rows)
        order = np.argsort(self.batcher.lengths)
        cache: list[torch.Tensor | None] = [None] * n
        self.hf.eval()
        bar = _bar(n, "routerdc: frozen layers", progress)
        enc = self.hf.encoder
        full = enc.layer
        enc.layer = nn.ModuleList(list(full)[: self.split])
        try:
            with torch.no_grad():
                for start in range(0, n, batch):
                    ids = order[start : start + batch].tolist()
                    hidden = self.hf(**self.batcher.batch(ids), return_dict=True).last_hidden_state
                    for j, i in enumerate(ids):
                        cache[i] = hidden[j, : self.batcher.lengths[i]].clone()
                    bar.update(len(ids))
        finally:
            enc.layer = full
            bar.close()
        self.cache = cache  # type: ignore[assignment]

    @contextlib.contextmanager
    def _top_only(self) -> Iterator[None]:
        enc, emb = self.hf.encoder, self.hf.embeddings
        full = enc.layer
        enc.layer = nn.ModuleList(list(full)[self.split:])
        self.hf.embeddings = _Passthrough()
        try:
            yield
        finally:
            enc.layer = full
            self.hf.embeddings = emb

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """Unit sentence embeddings (b, d) of the prompts ``ids`` (grad where training)."""
        b = self.batcher.batch(ids)
        if self.cache is None:
            return F.normalize(self.st(dict(b))["sentence_embedding"], dim=-1)
        width = b["input_ids"].shape[1]
        dim = self.cache[ids[0]].shape[-1]
        hidden = torch.zeros(len(ids), width, dim, device=b["input_ids"].device)
        for j, i in enumerate(ids):
            h = self.cache[i]
            hidden[j, : h.shape[0]] = h
        with self._top_only():
            out = self.hf(inputs_embeds=hidden, attention_mask=b["attention_mask"],
                          return_dict=True)
        features = {"token_embeddings": out.last_hidden_state,
                    "attention_mask": b["attention_mask"]}
        for module in list(self.st)[1:]:
            features = module(features)
        return F.normalize(features["sentence_embedding"], dim=-1)

    def check(self, ids: Sequence[int]) -> float:
        """Max abs difference of the cached path from the whole model (eval mode)."""
        if self.cache is None:
            return 0.0
        self.st.eval()
        with torch.no_grad():
            a = self.embed(ids)
            b = F.normalize(self.st(dict(self.batcher.batch(ids)))["sentence_embedding"], dim=-1)
        return float((a - b).abs().max())

    def embed_all(self, batch: int = 128) -> np.ndarray:
        n = len(self.batcher.rows)
        order = np.argsort(self.batcher.lengths)
        out = np.zeros((n, 0), dtype=np.float32)
        self.st.eval()
        with torch.no_grad():
            for start in range(0, n, batch):
                ids = order[start : start + batch].tolist()
                z = self.embed(ids).float().cpu().numpy()
                if out.shape[1] == 0:
                    out = np.zeros((n, z.shape[1]), dtype=np.float32)
                out[ids] = z
        return out


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=(None if progress else True),
                leave=False)


def _batches(lengths: np.ndarray, rows: np.ndarray, size: int,
             rng: np.random.Generator) -> list[list[int]]:
    """Random batches of ``rows``, sorted by length inside windows of a few batches."""
    perm = rows[rng.permutation(len(rows))]
    out: list[list[int]] = []
    span = size * _WINDOW
    for start in range(0, len(perm), span):
        window = perm[start : start + span]
        window = window[np.argsort(lengths[window], kind="stable")]
        out += [window[i : i + size].tolist() for i in range(0, len(window), size)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


# ---- training -----------------------------------------------------------------------------
def finetune(
    texts: Sequence[str], quality: np.ndarray, clusters: np.ndarray,
    settings: FinetuneSettings, rows: np.ndarray | None = None, progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``settings.model`` on ``texts[rows]`` (prompts after the text view) with
    RouterDC's losses; ``quality`` (n, m) NaN = unobserved, ``clusters`` (n,) the
    sample-sample groups. ``result.Z`` holds the fine-tuned embeddings of *all* texts."""
    s = settings
    n, m = quality.shape
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise PolicyError("routerdc: no rows to fine-tune the encoder on")
    device = pick_device(s.device)
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(s.seed))
        if s.threads and device == "cpu":
            torch.set_num_threads(int(s.threads))
        try:
            return _finetune(texts, quality, clusters, s, rows, device, progress)
        finally:
            torch.set_num_threads(old_threads)


def _finetune(texts, quality, clusters, s: FinetuneSettings, rows, device, progress):
    import time

    t0 = time.perf_counter()
    m = quality.shape[1]
    st = load_model(s.model, device, s.max_seq_length)
    batcher = _Batcher(st.tokenizer, texts, s.max_seq_length, device)
    runner = _TopRunner(st, s.train_layers, batcher)
    params = runner.trainable(s.train_layers)
    runner.build_cache(progress=progress)
    deviation = runner.check(rows[: min(8, len(rows))].tolist())
    if deviation > _CHECK_TOL:  # the top-only trick does not reproduce this architecture
        runner.cache = None
    t_cache = time.perf_counter() - t0

    dim = int(runner.embed([int(rows[0])]).shape[-1])
    llm = nn.Parameter(F.normalize(torch.randn(m, dim), dim=-1).to(device))
    opt = torch.optim.AdamW(
        [{"params": params, "lr": s.lr, "weight_decay": s.weight_decay},
         {"params": [llm], "lr": s.llm_lr, "weight_decay": 0.0}])
    rng = np.random.default_rng(s.seed)
    plan = [_batches(batcher.lengths, rows, min(s.batch_size, len(rows)), rng)
            for _ in range(s.epochs)]
    total = sum(len(p) for p in plan)
    warm = max(1, int(round(s.warmup * total)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm))))
    top_k = min(s.top_k, max(1, m // 2))
    last_k = min(s.last_k, max(1, m - top_k))
    observed = torch.from_numpy(~np.isnan(quality)).to(device)
    qt = torch.from_numpy(np.nan_to_num(quality, nan=0.0).astype(np.float32)).to(device)
    labels = torch.from_numpy(np.asarray(clusters, dtype=np.int64)).to(device)
    st.train()
    losses: list[float] = []
    bar = _bar(total, "routerdc: fine-tuning", progress)
    bar.unit = "batch"
    for epoch_batches in plan:
        for ids in epoch_batches:
            z = runner.embed(ids)
            logits = z @ F.normalize(llm, dim=-1).T / s.temperature
            noise = torch.rand(len(ids), m, device=device) * 1e-3
            loss = sample_llm_loss(logits, qt[ids], observed[ids], top_k, last_k, noise)
            if s.sample_weight > 0:
                loss = loss + s.sample_weight * supcon_loss(z, labels[ids],
                                                            s.cluster_temperature)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
    bar.close()
    st.eval()
    t_train = time.perf_counter() - t0 - t_cache
    llm_np = F.normalize(llm.detach(), dim=-1).float().cpu().numpy()
    if not math.isfinite(losses[-1] if losses else 0.0):
        raise PolicyError("routerdc: fine-tuning diverged (non-finite loss); lower lr")

    info = {"device": device, "cached_bottom": runner.cache is not None,
            "path_deviation": deviation, "steps": total, "rows": int(len(rows)),
            "cache_s": round(t_cache, 2), "train_s": round(t_train, 2),
            "loss_first": round(float(np.mean(losses[:20])), 4) if losses else None,
            "loss_last": round(float(np.mean(losses[-20:])), 4) if losses else None}
    Z = runner.embed_all()  # every row through the fine-tuned top (cheap on the cached bottom)
    runner.cache = None  # free the bottom activations
    st.to("cpu")
    return FinetuneResult(model=st, llm=llm_np, Z=Z, info=info)


# ---- saving --------------------------------------------------------------------------------
def weights_digest(model_dir: Path) -> str:
    """sha256 of the model's weight files' contents (what the file sizes cannot tell)."""
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin"):
            h.update(f.relative_to(model_dir).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def save_model(st, path: Path, info: dict[str, Any]) -> None:
    """Write the sentence-transformers model to ``path`` with the fine-tune marker."""
    from router.encoding.encoder import FINETUNE_MARKER

    path.mkdir(parents=True, exist_ok=True)
    st.save(str(path), create_model_card=False)
    marker = {"weights_sha256": weights_digest(path), **info}
    (path / FINETUNE_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")


def settings_dict(s: FinetuneSettings) -> dict[str, Any]:
    return asdict(s)
