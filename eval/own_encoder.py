"""Test embeddings for policies that bring their own encoder (``Policy.own_encoder``).

A fine-tuned RouterDC (:mod:`policies.routerdc`, ``finetune=True``) fits its own encoder,
and its ``predict`` expects that encoder's embeddings, not the run's. Every evaluation
path that fits policies (``router eval``, ``--leave-one-task-out``, benchmarks) asks
:func:`own_embeddings` before predicting. Vectors go through the on-disk embedding cache,
keyed by the fine-tuned model's signature (a digest of its weights), so a repeated run
with the same fitted encoder does not re-encode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from policies.base import Policy


def own_embeddings(
    policy: Policy, prompts: Sequence[str], cache_dir: str | os.PathLike | None = None,
    progress: bool = False, say: Callable[[str], None] | None = None,
) -> np.ndarray | None:
    """``prompts`` embedded with the policy's own encoder, or None when it has none."""
    cfg = policy.own_encoder()
    if cfg is None:
        return None
    from router.encoding.encoder import Encoder

    cache = {"cache_dir": cache_dir} if cache_dir else {}
    enc = Encoder.from_config(cfg, **cache)
    if say is not None:
        say(f"{policy.name}: embedding the test prompts with its own encoder "
            f"({cfg.get('model_signature')}, view {enc.text_view})")
    return np.asarray(enc.encode(list(prompts), progress=progress), dtype=np.float32)
