"""Which encoder runtime serves a trained artifact: the fast path by default, with checks.

An artifact records the encoder it was trained with (``meta["encoder"]``: model, text
view, max_seq_length, backend and, once known, dim). ``torch``, ``onnx`` and ``onnx-int8``
are runtimes of the *same* sentence-transformers model, so serving may swap one for
another; any other backend (e.g. ``hashing``) computes different vectors and is kept.

``choice`` (``routing.encoder_backend``, ``--encoder-backend``):

* ``auto`` (default): on CPU ``onnx-int8`` for models whose int8 accuracy was measured
  (:data:`INT8_VALIDATED`: cosine >= 0.99 with the reference and kNN AIQ unchanged on
  RouterBench, see ``benchmarks/bench_route.py``), else ``onnx`` (fp32, same vectors as
  torch up to float rounding), and ``torch`` if neither loads (no onnxruntime, export
  failed). With CUDA: torch in fp16 on the GPU, or ONNX on the CUDA provider.
* ``artifact``: exactly the recorded backend;
* ``torch`` / ``onnx`` / ``onnx-int8``: that runtime, no fallback;
* ``static`` (:mod:`router.encoding.static`): a static model distilled from the recorded
  one; different vectors, so only for artifacts trained with it (``router train
  --encoder-backend static``), which ``auto`` serves with it too.

The chosen backend is loaded at once (the ONNX export, cached on disk, happens here at
start, not on the first request), and checked against the artifact: same dimension,
and, when recorded, the same model files (:func:`router.encoding.encoder.model_signature`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from router.encoding.encoder import (
    DEFAULT_MODEL,
    Encoder,
    EncoderError,
    cuda_present,
    resolve_model,
)

log = logging.getLogger(__name__)

CHOICES = ("auto", "artifact", "torch", "onnx", "onnx-int8", "static")
#: backends an artifact can be trained with (``router train --encoder-backend``)
TRAIN_BACKENDS = ("torch", "onnx", "onnx-int8", "static")
#: what ``router eval`` (one encoder for every policy) and ``router train`` for the other
#: policies embed with when no backend is named (the bandit's online parameters were chosen
#: on MiniLM embeddings and on static ones none kept the frozen prior's accuracy on every
#: train cut; routerdc fine-tunes the transformer itself)
TRAIN_DEFAULT = "torch"
#: policies ``router train`` trains on ``static`` by default (stock model, no backend named),
#: their routing quality on the static backend was measured to hold against MiniLM int8
#: (``benchmarks/bench_static.py``: the paired interval's lower end >= -0.005 on both shared
#: datasets), so their artifacts serve with sub-millisecond route decisions
STATIC_SERVING_POLICIES = frozenset({"knn", "cscr", "mlp"})
#: runtimes of one sentence-transformers model (interchangeable vectors)
SAME_MODEL_BACKENDS = frozenset({"torch", "onnx", "onnx-int8"})
ONNX_BACKENDS = frozenset({"onnx", "onnx-int8"})
#: models whose int8 ONNX export keeps routing accuracy (measured)
INT8_VALIDATED = frozenset({DEFAULT_MODEL})


def int8_ok(model_key: str) -> bool:
    """Int8 keeps this model's routing: measured for the stock model, or recorded for a
    model directory (a fine-tuned encoder) by :func:`router.encoding.check.validate_int8`."""
    if model_key in INT8_VALIDATED:
        return True
    from router.encoding.check import int8_validated

    return int8_validated(model_key)

Plan = list[tuple[str, str | None]]


class EncoderMismatchError(EncoderError):
    """The serving encoder does not produce the vectors the artifact was trained on."""


def ort_has_cuda() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def backend_plan(model_key: str, trained: str, choice: str = "auto",
                 device: str | None = None, *, cuda: bool = False,
                 ort_cuda: bool = False) -> Plan:
    """Ordered ``(backend, device)`` candidates to try; the first that loads serves.

    ``cuda``: torch sees a GPU; ``ort_cuda``: onnxruntime has the CUDA provider.
    """
    if choice not in CHOICES:
        raise EncoderError(f"unknown encoder backend choice {choice!r}; "
                           f"expected one of {', '.join(CHOICES)}")
    if trained in SAME_MODEL_BACKENDS and choice == "static":
        raise EncoderMismatchError(
            f"the artifact was trained with the {trained!r} encoder backend; 'static' (a "
            "distilled static model) computes different vectors: retrain it with "
            "`router train --encoder-backend static`, or serve it with 'auto'")
    if trained not in SAME_MODEL_BACKENDS:
        if choice not in ("auto", "artifact", trained):
            raise EncoderMismatchError(
                f"the artifact was trained with the {trained!r} encoder backend; {choice!r} "
                "computes different vectors (use 'auto' or 'artifact')")
        return [(trained, device)]
    if choice == "artifact":
        return [(trained, device)]
    if choice != "auto":
        return [(choice, device)]
    dev = (device or "").lower()
    want_gpu = dev.startswith("cuda") or (not dev and (cuda or ort_cuda))
    plan: Plan = []
    if want_gpu:
        gpu = device or "cuda"
        if cuda:
            plan.append(("torch", gpu))  # fp16 on CUDA
        if ort_cuda:
            plan.append(("onnx", gpu))
    cpu: Plan = [("onnx-int8", "cpu")] if int8_ok(model_key) else []
    cpu += [("onnx", "cpu"), ("torch", "cpu")]
    if dev and not dev.startswith(("cuda", "cpu")):  # e.g. "mps": only torch knows it
        return [("torch", device)]
    return plan + [c for c in cpu if c not in plan]


def serving_encoder(cfg: dict[str, Any] | None, choice: str = "auto",
                    device: str | None = None, expected_dim: int | None = None,
                    threads: int | None = None, **overrides: Any) -> Encoder:
    """The loaded encoder serving vectors compatible with an artifact's ``cfg``.

    ``threads``: intra-op threads of an ONNX runtime (None: the backend's default,
    ``min(2, cores)``, :func:`router.encoding.onnx.default_threads`).

    Raises :class:`EncoderMismatchError` when the artifact's dimension does not match,
    and :class:`~router.encoding.encoder.EncoderError` when no candidate backend loads.
    """
    cfg = dict(cfg or Encoder().config())
    trained = str(cfg.get("backend", "torch"))
    model_key, _ = resolve_model(str(cfg.get("model_name", DEFAULT_MODEL)))
    want_dim = expected_dim if expected_dim is not None else cfg.get("dim")
    gpu_probe = choice == "auto" and trained in SAME_MODEL_BACKENDS and (
        device is None or str(device).startswith("cuda"))
    plan = backend_plan(model_key, trained, choice, device,
                        cuda=gpu_probe and cuda_present(), ort_cuda=gpu_probe and ort_has_cuda())
    return first_loading(cfg, plan, want_dim, threads=threads, **overrides)


def first_loading(cfg: dict[str, Any], plan: Sequence[tuple[str, str | None]],
                  want_dim: int | None, threads: int | None = None,
                  **overrides: Any) -> Encoder:
    """Load the plan's candidates in order; the first that loads and fits is returned."""
    trained = str(cfg.get("backend", "torch"))
    base = {k: v for k, v in cfg.items() if k != "dim"}
    errors: list[str] = []
    for i, (backend, dev) in enumerate(plan):
        options = dict(cfg.get("backend_options") or {}) if backend == trained else {}
        if threads is not None and backend in ONNX_BACKENDS:
            options["threads"] = int(threads)
        spec = {**base, "backend": backend, "backend_options": options}
        try:
            enc = Encoder.from_config(spec, device=dev, **overrides)
            dim = enc.backend.dim  # load now: export/compile at start, not on a request
        except EncoderError as exc:
            errors.append(f"{backend}: {exc}")
            if i + 1 < len(plan):
                log.warning("encoder backend %s unavailable (%s); trying %s", backend, exc,
                            plan[i + 1][0])
            continue
        if want_dim is not None and int(dim) != int(want_dim):
            raise EncoderMismatchError(
                f"the artifact was trained on {want_dim}-d embeddings of {enc.model_id} "
                f"(backend {trained}), but the serving encoder ({backend}) gives {dim}-d "
                "ones: the model files differ; retrain or serve the training model")
        recorded, now = cfg.get("model_signature"), enc.model_signature
        if recorded and now and recorded != now:
            raise EncoderMismatchError(
                f"the artifact was trained with {enc.model_id} whose model files had "
                f"signature {recorded}; the model found here has {now}: a different model "
                "under the same name; retrain or install the training model")
        if backend != trained:
            log.info("serving %s with the %s backend on %s (artifact trained with %s)",
                     enc.model_id, backend, enc.device, trained)
        return enc
    raise EncoderError("no encoder backend could be loaded: " + "; ".join(errors))


def default_encoder(**kwargs: Any) -> Encoder:
    """The encoder training and evaluation use when none is named: the default model (or
    ``model_name``) on the :data:`TRAIN_DEFAULT` runtime."""
    return Encoder(**{"backend": TRAIN_DEFAULT, **kwargs})


def default_train_backend(policy: str | None, model: str | None) -> str:
    """The backend an artifact is trained with when none is named: ``static`` for the stock
    model and a policy in :data:`STATIC_SERVING_POLICIES`, else :data:`TRAIN_DEFAULT`."""
    if policy in STATIC_SERVING_POLICIES and (model is None or model == DEFAULT_MODEL):
        return "static"
    return TRAIN_DEFAULT


def train_encoder_kwargs(model: str | None, backend: str | None, text_view: str | None,
                         cache_dir: str | None = None, policy: str | None = None
                         ) -> dict[str, Any]:
    """``Encoder`` keyword arguments for training (``policy`` given: its serving default,
    :func:`default_train_backend`) or evaluating (one encoder for every policy:
    :data:`TRAIN_DEFAULT`) from CLI flags (None = default); ValueError naming the flag for
    an unknown backend."""
    backend = backend or (default_train_backend(policy, model) if policy else TRAIN_DEFAULT)
    if backend not in TRAIN_BACKENDS:
        raise ValueError(f"--encoder-backend {backend!r}: expected one of "
                         + ", ".join(TRAIN_BACKENDS))
    kwargs: dict[str, Any] = {"backend": backend}
    if model:
        kwargs["model_name"] = model
    if text_view:
        kwargs["text_view"] = text_view
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    return kwargs
