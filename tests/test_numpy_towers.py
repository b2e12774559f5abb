"""The contrastive towers' numpy forward (a routed request's path) matches torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from policies import _contrastive as C
from policies._numpy_towers import compile_tower


def _torch_forward(module: nn.Module, X: np.ndarray) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("make", [
    lambda: C.ResidualHead(16, 8, 32, dropout=0.3),
    lambda: C.MLPTower(16, 8, 24),
])
def test_numpy_forward_matches_torch_and_follows_training(make) -> None:
    torch.manual_seed(0)
    tower = make()
    with torch.no_grad():  # the residual head starts with a zero MLP output: move it
        for p in tower.parameters():
            p.add_(0.1 * torch.randn_like(p))
    X = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    np.testing.assert_allclose(compile_tower(tower)(X), _torch_forward(tower, X), atol=1e-5)
    before = compile_tower(tower)(X)

    # a training step changes the parameters in place: the compiled form follows
    tower.train()
    opt = torch.optim.SGD(tower.parameters(), lr=0.5)
    loss = tower(torch.from_numpy(X)).sum()
    loss.backward()
    opt.step()
    after = compile_tower(tower)(X)
    assert np.abs(after - before).max() > 1e-4
    np.testing.assert_allclose(after, _torch_forward(tower, X), atol=1e-5)

    # embed(): small batches take the numpy path, large ones torch; the same vectors
    big = np.random.default_rng(1).normal(size=(C.NUMPY_ROWS + 7, 16)).astype(np.float32)
    np.testing.assert_allclose(C.embed(tower, big[:3]), C.embed(tower, big)[:3], atol=1e-5)
    assert np.allclose(np.linalg.norm(C.embed(tower, big[:3]), axis=1), 1.0, atol=1e-5)


def test_a_layer_without_numpy_form_is_named() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 4), nn.Tanh())

    with pytest.raises(TypeError, match="Tanh"):
        compile_tower(Odd())
