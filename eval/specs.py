"""What an evaluation runs: the policy list (``--policies``) and the lam grid (``--lams``).

Split from :mod:`eval.harness`, which re-exports every name here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import REGISTRY, get_policy_class
from policies.base import Policy

#: registered policies that ignore the query embedding (they may run without an encoder)
EMBEDDING_FREE = frozenset({"cheapest", "single", "best-single", "task-static", "oracle"})
#: parametrised baselines left out of the default list (every single model is a reference)
NOT_DEFAULT = frozenset({"single"})
#: fixed-rule and reference policies (the embedding-free ones and random); every other
#: policy counts as learned
BASELINE_POLICIES = EMBEDDING_FREE | {"random"}
#: policies that read the models' answers before deciding (compared with the best
#: prompt-only learned policy as well as with task-static)
ANSWER_AWARE = frozenset({"cascade", "cascade-routed"})
DEFAULT_LAM_POINTS = 60


class EvalError(ValueError):
    """A bad evaluation request (policy list, lam grid, model names)."""


# ---- policy selection -------------------------------------------------------------------
@dataclass
class PolicySpec:
    """One policy to evaluate: a registry name with parameters, or an artifact directory."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    artifact: str | None = None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_policies(text: str | None) -> list[PolicySpec]:
    """``a,b:k=10:metric=cosine,c`` or ``all`` (None = the default list) -> specs.

    Names are checked against the registry; parameters are JSON values where they parse
    (``k=10`` -> 10) and strings otherwise.
    """
    if text is None or text.strip() == "":
        return [PolicySpec(n, n) for n in default_policy_names()]
    if text.strip() == "all":
        return [PolicySpec(n, n) for n in default_policy_names(include_online=True)]
    specs: list[PolicySpec] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            raise EvalError(f"--policies {text!r}: empty policy name")
        name, *pairs = item.split(":")
        if name not in REGISTRY:
            raise EvalError(f"unknown policy {name!r}; available: {', '.join(REGISTRY)}")
        params: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise EvalError(f"--policies: parameter {pair!r} of {name} is not KEY=VALUE")
            params[key] = _parse_value(value)
        specs.append(PolicySpec(item if params else name, name, params))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise EvalError(f"--policies names a policy twice: {text!r}")
    return specs


def available_policy(name: str) -> type[Policy] | None:
    """The policy class, or None when its module is not part of this build."""
    try:
        return get_policy_class(name)
    except (ImportError, AttributeError):
        return None


def default_policy_names(include_online: bool = False) -> list[str]:
    """Every registered policy whose module exists, minus online-only ones (unless
    ``include_online``) and the parametrised ``single`` baseline."""
    names = []
    for name in REGISTRY:
        klass = available_policy(name)
        if klass is None or name in NOT_DEFAULT:
            continue
        if klass.online and not include_online:
            continue
        names.append(name)
    return names


def needs_embeddings(klass: type[Policy]) -> bool:
    flag = getattr(klass, "uses_embeddings", None)
    if flag is not None:
        return bool(flag)
    return klass.name not in EMBEDDING_FREE


# ---- lam grid ---------------------------------------------------------------------------
def cost_scale(cost: np.ndarray) -> tuple[float, float] | None:
    """(smallest positive, largest) model mean cost of a (n, m) cost matrix with NaNs."""
    with np.errstate(invalid="ignore"):
        means = np.nanmean(np.where(np.isfinite(cost), cost, np.nan), axis=0)
    means = means[np.isfinite(means) & (means > 0)]
    if means.size == 0:
        return None
    return float(means.min()), float(means.max())


def lam_grid(spec: str, cost: np.ndarray) -> np.ndarray:
    """The lam values to sweep, sorted, always starting with 0.

    ``auto`` / ``auto:N``: 0 plus N (default 60) log-spaced values from 0.01 / c_max to
    100 / c_min, with c_min, c_max the smallest positive and largest model mean cost in
    ``cost`` (the training split): at the low end even the dearest model's cost weighs
    at most 0.01 quality (the best-quality choice), at the high end even the cheapest
    model's cost outweighs any quality difference (the cheapest choice).
    ``log:LO:HI:N``: 0 plus N log-spaced values from LO to HI. ``A,B,C``: those values.
    """
    spec = spec.strip()
    try:
        if spec.startswith("auto"):
            n = int(spec.split(":", 1)[1]) if ":" in spec else DEFAULT_LAM_POINTS
            if n < 1:
                raise EvalError(f"--lams {spec!r}: the number of points must be >= 1")
            scale = cost_scale(cost)
            if scale is None:  # quality-only data: cost never matters
                return np.array([0.0])
            lo, hi = 1e-2 / scale[1], 1e2 / scale[0]
            values = np.geomspace(lo, hi, n)
        elif spec.startswith("log:"):
            parts = spec.split(":")
            if len(parts) != 4:
                raise EvalError(f"--lams {spec!r}: expected log:LO:HI:N")
            lo, hi, n = float(parts[1]), float(parts[2]), int(parts[3])
            if not (0 < lo < hi and math.isfinite(hi)) or n < 1:
                raise EvalError(f"--lams {spec!r}: need 0 < LO < HI and N >= 1")
            values = np.geomspace(lo, hi, n)
        else:
            values = np.array([float(v) for v in re.split(r"[,\s]+", spec) if v])
            if values.size == 0:
                raise EvalError("--lams: no values given")
    except ValueError as exc:
        if isinstance(exc, EvalError):
            raise
        raise EvalError(
            f"--lams {spec!r}: not a grid spec (auto[:N], log:LO:HI:N or A,B,C)"
        ) from None
    if not np.isfinite(values).all() or (values < 0).any():
        raise EvalError(f"--lams {spec!r}: lam values must be finite and >= 0")
    return np.unique(np.concatenate(([0.0], values)))
