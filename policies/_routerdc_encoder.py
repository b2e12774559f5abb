"""The fine-tuned encoder of :class:`policies.routerdc.RouterDCPolicy` (``finetune=True``):
checking its settings, keeping the trained model in a private directory until the artifact
is saved, writing it into the artifact (``encoder/``, with its int8 export measured),
loading it back, and telling callers to embed with it (:meth:`own_encoder`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from policies._contrastive import check_positive
from policies.base import ArtifactError, PolicyError

ENCODER_DIR = "encoder"  # the fine-tuned encoder's folder inside an artifact
#: meta.encoder.model_name of a fine-tuned artifact: the folder above, relative to it
ARTIFACT_ENCODER = "artifact:encoder"


class FinetunedEncoder:
    """Mixin of RouterDCPolicy: everything about its own (fine-tuned) encoder but the
    training itself."""

    def _checked_finetune(self) -> dict[str, Any]:
        n = self.name
        p: dict[str, Any] = {
            "max_seq_length": check_positive("max_seq_length", n, self.max_seq_length,
                                             integer=True),
            "train_layers": check_positive("train_layers", n, self.train_layers, integer=True,
                                           allow_zero=True),
            "finetune_epochs": check_positive("finetune_epochs", n, self.finetune_epochs,
                                              integer=True),
            "finetune_batch_size": check_positive("finetune_batch_size", n,
                                                  self.finetune_batch_size, integer=True),
            "finetune_lr": check_positive("finetune_lr", n, self.finetune_lr),
            "llm_lr": check_positive("llm_lr", n, self.llm_lr),
        }
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise PolicyError(f"{n}: encoder must be a model name or path, got {self.encoder!r}")
        from router.textview import TextViewError, parse_view

        try:
            parse_view(self.text_view)
        except TextViewError as exc:
            raise PolicyError(f"{n}: text_view: {exc}") from None
        holdout = float(self.holdout) if isinstance(self.holdout, int | float) else -1.0
        if not 0 < holdout < 1:
            raise PolicyError(f"{n}: holdout must be in (0, 1), got {self.holdout!r}")
        p["holdout"] = holdout
        if self.encoder_threads is not None:
            check_positive("encoder_threads", n, self.encoder_threads, integer=True)
        if self.device is not None and not isinstance(self.device, str):
            raise PolicyError(f"{n}: device must be a string such as 'cpu' or 'cuda', got "
                              f"{self.device!r}")
        return p

    def _set_encoder_dir_from(self, result) -> None:
        """Save the fine-tuned model into a private temporary directory (until saved)."""
        import tempfile

        from policies._finetune import save_model

        self._tmp = tempfile.TemporaryDirectory(prefix="routerdc-encoder-")
        path = Path(self._tmp.name).resolve() / "encoder"
        save_model(result.model, path, {"base_model": self.encoder, "text_view": self.text_view,
                                        "max_seq_length": int(self.max_seq_length),
                                        "train_layers": int(self.train_layers)})
        self.encoder_dir_ = path

    def _drop_finetuned(self) -> None:
        for attr in ("encoder_dir_", "_tmp", "finetune_info_", "_recorded_signature",
                     "_check_texts"):
            self.__dict__.pop(attr, None)

    def own_encoder(self) -> dict[str, Any] | None:
        """The encoder config (as ``Encoder.config()``) of the fine-tuned model, whose
        embeddings ``predict`` expects; None for the frozen-encoder mode."""
        path = getattr(self, "encoder_dir_", None)
        if path is None:
            return None
        from router.encoding.encoder import Encoder, model_signature

        cfg = Encoder(model_name=str(path), text_view=self.text_view).config()
        cfg["dim"] = int(self.dim_)
        cfg["model_signature"] = self.__dict__.get("_recorded_signature") or model_signature(path)
        return cfg

    # the fine-tuned encoder travels inside the artifact, under ENCODER_DIR
    def save(self, path, meta: dict[str, Any] | None = None) -> Path:
        """As :meth:`Policy.save`; a fine-tuned policy also writes its encoder (``encoder/``)
        and records it, artifact-relative, as the artifact's encoder."""
        own = self.own_encoder()
        if own is not None:
            portable = {**own, "model_name": ARTIFACT_ENCODER}
            portable["model_id"] = portable["model_id"].replace(str(self.encoder_dir_),
                                                                ARTIFACT_ENCODER, 1)
            meta = {**(meta or {}), "encoder": portable}
            path = Path(path)
            path.mkdir(parents=True, exist_ok=True)
            self._place_encoder(path)
        return super().save(path, meta)

    def _place_encoder(self, path: Path) -> None:
        """Copy the encoder into ``path/encoder`` (atomically) and measure its int8 export."""
        target = path / ENCODER_DIR
        if target.resolve() == Path(self.encoder_dir_).resolve():
            return  # saving over the artifact it was loaded from
        import shutil
        import tempfile

        staging = Path(tempfile.mkdtemp(dir=path, prefix=".encoder."))
        try:
            shutil.copytree(self.encoder_dir_, staging, dirs_exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        texts = self.__dict__.get("_check_texts")
        if texts:  # measure the int8 export of the saved encoder (router.encoding.check)
            self._validate_int8(target, texts)

    def _validate_int8(self, folder: Path, texts: list[str]) -> dict[str, Any]:
        from policies._anchor import lam_grid
        from policies.base import choose
        from router.encoding.check import validate_int8

        lams = lam_grid(self.nb_.cost, points=5)

        def decide(Z: np.ndarray) -> np.ndarray:
            est = self.predict(Z)
            return np.stack([choose(est.quality, est.cost, lam=float(v)) for v in lams], 1)

        record = validate_int8(folder, texts, text_view=self.text_view, decide=decide)
        self.finetune_info_["int8"] = {k: record.get(k) for k in
                                       ("validated", "mean_cosine", "min_cosine", "agreement",
                                        "error") if k in record}
        return record

    def _load_files(self, path: Path) -> None:
        if not bool(self.finetune):
            return
        enc = (self.meta_ or {}).get("encoder")
        folder = path / ENCODER_DIR
        if not folder.is_dir() or not isinstance(enc, dict):
            raise ArtifactError(f"{path}: a fine-tuned routerdc artifact needs its encoder "
                                f"directory {ENCODER_DIR}/ and meta.encoder; retrain it")
        self.encoder_dir_ = folder.resolve()
        self._recorded_signature = enc.get("model_signature")
        # consumers (router serve/route/eval) read meta_["encoder"]: point it at the folder
        self.meta_["encoder"] = {**enc, **{k: v for k, v in self.own_encoder().items()
                                           if k in ("model_name", "model_id")}}
