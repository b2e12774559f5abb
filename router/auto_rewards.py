"""Automatic rewards: the labels a cascade gives for free, and how a bandit learns them.

When a cascade has decided (:meth:`policies.cascade.CascadePlan.step`), every model it
called and that answered gets a label without any user feedback: 1 when its answer key
equals the returned answer's, 0 when it differs (a response with no answer of the
prompt's kind differs too). No label is given for a call that failed (a timeout says
nothing about quality), when the returned answer has no key, or to the returned model
when nothing else agreed with it (an answer accepted alone at the last stage confirms
nothing about itself).

:func:`weighted_update` folds a label into a LinUCB bandit with a weight ``w`` in (0, 1]:
the rank-one update ``A += w z z^T``, ``b += w r z`` (the features and the reward are scaled
by ``sqrt(w)`` before the store's ordinary update, so shared/durable stores need no new
record type). The gateway (router.proxy.cascade) and the replay (eval.online_auto) use the
same two functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

SOURCE = "auto"


def auto_labels(plan: Any, answers: Mapping[str, str | None], model: str | None,
                agreed: tuple[str, ...] = ()) -> dict[str, float]:
    """``{called model: 0.0 or 1.0}`` from a decided cascade (see the module docstring).

    ``plan`` is a :class:`policies.cascade.CascadePlan`; ``answers`` the raw responses
    (None = failed); ``model`` / ``agreed`` the decided step's fields.
    """
    if model is None or answers.get(model) is None:
        return {}
    keys = plan.keys(answers)
    final = keys.get(model)
    if final is None:
        return {}
    confirmed = len(agreed) >= 2
    out: dict[str, float] = {}
    for m, text in answers.items():
        if text is None:
            continue
        if m == model:
            if confirmed:
                out[m] = 1.0
            continue
        out[m] = 1.0 if keys.get(m) == final else 0.0
    return out


def check_weight(weight: float) -> float:
    w = float(weight)
    if not (math.isfinite(w) and 0.0 <= w <= 1.0):
        raise ValueError(f"auto reward weight must be in [0, 1], got {weight!r}")
    return w


def weighted_update(policy: Any, x: np.ndarray, model: str | int, reward: float,
                    cost: float, weight: float) -> None:
    """Fold one automatic reward into a LinUCB ``policy`` with ``weight`` in (0, 1]."""
    w = check_weight(weight)
    if w == 0.0:
        return
    if w == 1.0:
        policy.update(x, model, reward, cost)
        return
    reward = float(reward)
    if not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
        raise ValueError(f"auto reward must be in [0, 1], got {reward!r}")
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if x.shape[0] != policy.dim_ or not np.isfinite(x).all():
        raise ValueError(f"auto reward: one finite embedding of dimension {policy.dim_} "
                         f"needed, got shape {x.shape}")
    s = math.sqrt(w)
    z = policy.features(x)[0] * s
    policy.store.update(policy.model_index(model), z, reward * s, float(cost))
