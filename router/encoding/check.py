"""Int8 validation of a model that is not the stock encoder (e.g. a fine-tuned RouterDC's).

The stock all-MiniLM-L6-v2 is served in int8 because its int8 export was measured to keep
routing accuracy (:data:`router.encoding.select.INT8_VALIDATED`). A fine-tuned copy has
other weights, so its int8 export is measured when the artifact is written
(:func:`validate_int8`): the int8 ONNX vectors of sample training prompts against the
torch fp32 ones (cosine, the criterion used for the stock model), and, given a decision
function, how often the routing decision stays the same. The result goes into
:data:`INT8_FILE` next to the model, with the model's signature; :func:`int8_validated`
reads it when :mod:`router.encoding.select` plans the serving backends (int8 only when the
file says it passed *for these model files*; otherwise ONNX fp32).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.encoding.encoder import Encoder, EncoderError, model_signature

log = logging.getLogger(__name__)

INT8_FILE = "costroute_int8.json"
MIN_MEAN_COSINE = 0.99  # as for the stock encoder (router/encoding/onnx.py)
MIN_COSINE = 0.95
MIN_AGREEMENT = 0.95  # share of sample prompts routed the same at every checked lam


def validate_int8(
    model_dir: str | Path, texts: Sequence[str], text_view: str = "full",
    decide: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Measure the int8 ONNX export of ``model_dir`` on ``texts`` and record it.

    ``decide`` maps embeddings (n, d) to decisions (n, ...) (e.g. the chosen model at a few
    lams); agreement is the share of rows whose decisions all match. Writes and returns
    the record; an export that fails is recorded as not validated (with the reason).
    """
    model_dir = Path(model_dir).resolve()
    record: dict[str, Any] = {"signature": model_signature(model_dir), "n_texts": len(texts),
                              "criterion": {"mean_cosine": MIN_MEAN_COSINE,
                                            "min_cosine": MIN_COSINE,
                                            "agreement": MIN_AGREEMENT}}
    try:
        ref = Encoder(str(model_dir), text_view=text_view, use_cache=False,
                      backend="torch", device="cpu").encode(list(texts))
        int8 = Encoder(str(model_dir), text_view=text_view, use_cache=False,
                       backend="onnx-int8").encode(list(texts))
    except (EncoderError, ImportError, RuntimeError, OSError) as exc:  # export failed
        record.update(validated=False, error=f"{type(exc).__name__}: {exc}")
        log.warning("int8 export of %s not validated: %s", model_dir, exc)
    else:
        cos = np.sum(ref * int8, axis=1)
        record.update(mean_cosine=round(float(cos.mean()), 5),
                      min_cosine=round(float(cos.min()), 5))
        ok = cos.mean() >= MIN_MEAN_COSINE and cos.min() >= MIN_COSINE
        if decide is not None:
            a, b = np.asarray(decide(ref)), np.asarray(decide(int8))
            same = (a == b).reshape(len(texts), -1).all(axis=1)
            record["agreement"] = round(float(same.mean()), 4)
            ok = ok and same.mean() >= MIN_AGREEMENT
        record["validated"] = bool(ok)
    (model_dir / INT8_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def int8_validated(model_dir: str | Path) -> bool:
    """Whether :data:`INT8_FILE` in ``model_dir`` passed, for the model files now there."""
    path = Path(model_dir)
    f = path / INT8_FILE
    if not path.is_dir() or not f.is_file():
        return False
    try:
        record = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(record.get("validated")) and record.get("signature") == model_signature(path)
