"""Numpy inference for the contrastive towers: one query without torch's per-call overhead.

A routed request embeds one prompt; running a small torch tower on one row costs about
0.2 ms of dispatch per network (module calls, ``eval()``, tensor wrapping; 0.71 ms for the
frozen routerdc's three heads), far more than the arithmetic. :func:`compile_tower` turns a trained :class:`~policies._contrastive.ResidualHead`
or :class:`~policies._contrastive.MLPTower` into a numpy function with the same maths
(float32 matmuls, exact-erf GELU, dropout off, L2-normalised output). The compiled form is
cached per module (weakly) and rebuilt whenever a parameter changes (torch bumps a tensor's
version on every in-place update: optimiser steps, ``load_state_dict``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from scipy.special import erf
from torch import nn

from policies._distance import unit  # rows / max(norm, 1e-12), as F.normalize

Forward = Callable[[np.ndarray], np.ndarray]
_SQRT_HALF = np.float32(np.sqrt(0.5))


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        c = np.float32(np.sqrt(2.0 / np.pi))
        return 0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x ** 3)))
    return 0.5 * x * (1.0 + erf(x * _SQRT_HALF))


def _sequential(seq: nn.Module) -> Forward:
    """A chain of Linear / GELU / ReLU / Dropout / Identity layers as numpy steps."""
    steps: list[Forward] = []
    for layer in seq.children() if isinstance(seq, nn.Sequential) else [seq]:
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().cpu().numpy().astype(np.float32).T.copy()
            b = None if layer.bias is None else layer.bias.detach().cpu().numpy().astype(np.float32)
            steps.append(lambda x, w=w, b=b: x @ w if b is None else x @ w + b)
        elif isinstance(layer, nn.GELU):
            steps.append(lambda x, a=layer.approximate: _gelu(x, a))
        elif isinstance(layer, nn.ReLU):
            steps.append(lambda x: np.maximum(x, 0.0))
        elif isinstance(layer, (nn.Dropout, nn.Identity)):
            continue
        else:
            raise TypeError(f"no numpy form for layer {type(layer).__name__}")

    def run(x: np.ndarray) -> np.ndarray:
        for step in steps:
            x = step(x)
        return x

    return run


def _build(module: nn.Module) -> Forward:
    skip = getattr(module, "skip", None)
    mlp = getattr(module, "mlp", None)
    if isinstance(skip, nn.Linear) and mlp is not None:  # ResidualHead: normalize(Px + MLP(x))
        p, f = _sequential(skip), _sequential(mlp)
        return lambda x: unit(p(x) + f(x))
    net = getattr(module, "net", None)
    if net is not None:  # MLPTower: normalize(net(x))
        g = _sequential(net)
        return lambda x: unit(g(x))
    raise TypeError(f"no numpy form for tower {type(module).__name__}")


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_tower(module: nn.Module) -> Forward:
    """The numpy forward of a tower in eval mode, cached until a parameter changes.

    Checked per call: the version counters of the parameters it was built from (listing
    a module's parameters costs more than the numpy forward itself). Assigning a new
    ``nn.Parameter`` object to a built tower is not seen; nothing here does that.
    """
    cached = _CACHE.get(module)
    if cached is not None:
        params, versions, fn = cached
        if all(p._version == v for p, v in zip(params, versions, strict=True)):
            return fn
    params = list(module.parameters())
    fn = _build(module)
    _CACHE[module] = (params, [p._version for p in params], fn)
    return fn
