"""MLP router (RouterBench's predictive baseline): embedding -> per-model quality.

A small feed-forward network trained with torch on the observed cells only (masked
binary cross-entropy, or MSE), with early stopping on a seeded validation split. Costs
come from a per-model ridge regression on the embedding (cost grows with prompt length),
clipped to each model's observed range, or from the per-model train means.

Both estimates are anchored on the query's inferred task (:mod:`policies._anchor`): the
network's quality is shrunk toward the task's train means by ``shrink`` (picked on the
validation split by routing utility), the cost likewise by ``cost_shrink``.

Weights are kept and saved as numpy arrays and inference runs in numpy, so predictions
after ``save``/``load`` are bit-identical and serving needs no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies._anchor import (
    TaskPrior,
    anchor_meta,
    check_shrink,
    pick_anchor,
    set_anchor_state,
)
from policies._priors import encode_tasks, fill_cost, masked_col_mean, validation_split
from policies.base import ArtifactError, Estimate, Policy, PolicyError, TrainData

LOSSES = ("bce", "mse")
COST_MODELS = ("ridge", "mean")
RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


class MLPPolicy(Policy):
    """Feed-forward per-model quality predictor plus a ridge cost model.

    Parameters
    ----------
    hidden: hidden layer sizes (an int, a list, or ``"256,128"``).
    dropout, lr, weight_decay, batch_size: training settings (AdamW).
    max_epochs, patience: early stopping on the validation loss.
    val_fraction: share of train rows held out (seeded, stratified by task when tasks
        are given) for early stopping.
    loss: ``"bce"`` (graded targets in [0, 1] are fine) or ``"mse"``.
    cost_model: ``"ridge"`` (per-model ridge on the embedding) or ``"mean"``.
    threads: torch CPU threads used while training.
    shrink, cost_shrink: how far estimates move from the inferred-task means toward the
        network's / ridge's (0 = task means, 1 = raw), or ``"auto"`` (picked on the
        validation split: utility for quality, squared error for cost).
    seed: seeds the split, the initialisation and the batch order.
    """

    name = "mlp"
    artifact_version = 2  # 2: task anchor (anchor_* arrays, shrink / cost_shrink)

    def __init__(
        self,
        hidden: int | str | list[int] = 256,
        dropout: float = 0.1,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        batch_size: int = 64,
        max_epochs: int = 200,
        patience: int = 15,
        val_fraction: float = 0.15,
        loss: str = "bce",
        cost_model: str = "ridge",
        threads: int = 1,
        shrink: float | str = "auto",
        cost_shrink: float | str = "auto",
        seed: int = 0,
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.loss = loss
        self.cost_model = cost_model
        self.threads = threads
        self.shrink = shrink
        self.cost_shrink = cost_shrink
        self.seed = seed

    # ---- parameters -----------------------------------------------------------------
    def _hidden_sizes(self) -> list[int]:
        h = self.hidden
        try:
            if isinstance(h, str):
                sizes = [int(s) for s in h.replace(" ", "").split(",") if s]
            elif isinstance(h, int | np.integer):
                sizes = [int(h)]
            else:
                sizes = [int(s) for s in h]
        except (TypeError, ValueError):
            raise PolicyError(f"mlp: hidden must be sizes like 256 or '256,128', got {h!r}") from None
        if any(s < 1 for s in sizes):
            raise PolicyError(f"mlp: hidden sizes must be >= 1, got {h!r}")
        return sizes

    def _check_params(self) -> None:
        self._hidden_sizes()
        num = {}
        for key, kind in (("dropout", float), ("lr", float), ("weight_decay", float),
                          ("batch_size", int), ("max_epochs", int), ("patience", int),
                          ("val_fraction", float), ("threads", int), ("seed", int)):
            value = getattr(self, key)
            try:
                num[key] = kind(value)
            except (TypeError, ValueError, OverflowError):
                raise PolicyError(f"mlp: {key} must be a number, got {value!r}") from None
            if kind is int and num[key] != value:
                raise PolicyError(f"mlp: {key} must be an integer, got {value!r}")
            if not np.isfinite(num[key]):
                raise PolicyError(f"mlp: {key} must be finite, got {value!r}")
        checks = (
            (0 <= num["dropout"] < 1, "dropout must be in [0, 1)"),
            (num["lr"] > 0, "lr must be > 0"),
            (num["weight_decay"] >= 0, "weight_decay must be >= 0"),
            (num["batch_size"] >= 1, "batch_size must be >= 1"),
            (num["max_epochs"] >= 1, "max_epochs must be >= 1"),
            (num["patience"] >= 1, "patience must be >= 1"),
            (0 < num["val_fraction"] < 1, "val_fraction must be in (0, 1)"),
            (self.loss in LOSSES, f"loss must be one of {list(LOSSES)}"),
            (self.cost_model in COST_MODELS, f"cost_model must be one of {list(COST_MODELS)}"),
            (num["threads"] >= 1, "threads must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise PolicyError(f"mlp: {message}")
        check_shrink("mlp", "shrink", self.shrink)
        check_shrink("mlp", "cost_shrink", self.cost_shrink)

    # ---- fitting ----------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        X, quality, cost, tasks = data.X, data.quality, data.cost, data.tasks
        self._check_params()
        sizes = self._hidden_sizes()
        X = X.astype(np.float64)
        self.x_mean_ = X.mean(axis=0)
        self.x_scale_ = X.std(axis=0) + 1e-6
        Z = ((X - self.x_mean_) / self.x_scale_).astype(np.float32)
        codes = None if tasks is None else encode_tasks(tasks, len(Z))[1]
        train, val = validation_split(len(Z), float(self.val_fraction), int(self.seed), codes)
        self.weights_, self.history_ = self._train(Z, quality, train, val, sizes)
        val_cost = self._fit_cost(Z, cost, train, val)
        names, all_codes = encode_tasks(tasks, len(Z))
        # the anchor's shrinkage is picked on the validation rows, priors from train rows
        held = TaskPrior.fit(X[train], all_codes[train], names, quality[train], cost[train],
                             backoff=False)
        pq, pc = held.query(X[val])
        self.shrink_, self.cost_shrink_, self.shrink_utility_ = pick_anchor(
            self.shrink, self.cost_shrink, pq, self._network(Z[val]), pc, val_cost,
            quality[val], cost[val])
        self.anchor_ = TaskPrior.fit(X, all_codes, names, quality, cost)

    def _train(self, Z, quality, train, val, sizes):
        import torch

        old_threads = torch.get_num_threads()
        torch.set_num_threads(int(self.threads))
        try:
            return self._train_torch(torch, Z, quality, train, val, sizes)
        finally:
            torch.set_num_threads(old_threads)

    def _train_torch(self, torch, Z, quality, train, val, sizes):
        gen = torch.Generator().manual_seed(int(self.seed))
        torch.manual_seed(int(self.seed))
        layers: list[Any] = []
        width = Z.shape[1]
        for size in sizes:
            layers += [torch.nn.Linear(width, size), torch.nn.ReLU(),
                       torch.nn.Dropout(float(self.dropout))]
            width = size
        layers.append(torch.nn.Linear(width, quality.shape[1]))
        net = torch.nn.Sequential(*layers)
        opt = torch.optim.AdamW(
            net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay)
        )
        mask = torch.from_numpy(~np.isnan(quality))
        target = torch.from_numpy(np.nan_to_num(quality, nan=0.0).astype(np.float32))
        inputs = torch.from_numpy(Z)
        tr, va = torch.from_numpy(train), torch.from_numpy(val)

        def loss_of(logits, rows):
            m = mask[rows]
            if self.loss == "bce":
                cell = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, target[rows], reduction="none"
                )
            else:
                cell = (torch.sigmoid(logits) - target[rows]) ** 2
            return (cell * m).sum() / m.sum().clamp(min=1)

        best, best_state, since, history = np.inf, None, 0, []
        bs = int(self.batch_size)
        for _epoch in range(int(self.max_epochs)):
            net.train()
            order = tr[torch.randperm(len(tr), generator=gen)]
            for start in range(0, len(order), bs):
                rows = order[start : start + bs]
                opt.zero_grad()
                loss_of(net(inputs[rows]), rows).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                v = float(loss_of(net(inputs[va]), va))
            history.append(v)
            if v < best - 1e-6:
                best, since = v, 0
                best_state = [p.detach().clone() for p in net.parameters()]
            else:
                since += 1
                if since >= int(self.patience):
                    break
        params = best_state or [p.detach() for p in net.parameters()]
        weights = [p.numpy().astype(np.float32).copy() for p in params]
        self.best_epoch_ = int(np.argmin(history)) + 1
        return weights, [float(h) for h in history]

    def _fit_cost(self, Z, cost, train, val) -> np.ndarray:
        """Fit the cost model; returns its predictions for the validation rows."""
        filled = fill_cost(cost)
        self.cost_mean_ = masked_col_mean(filled, 0.0)
        observed = ~np.isnan(cost)
        lo = np.where(observed, cost, np.inf).min(axis=0)
        hi = np.where(observed, cost, -np.inf).max(axis=0)
        self.cost_lo_ = np.where(np.isfinite(lo), lo, 0.0)
        self.cost_hi_ = np.where(np.isfinite(hi), hi, 0.0)
        m = cost.shape[1]
        self.cost_W_ = np.zeros((Z.shape[1], m), dtype=np.float64)
        self.cost_b_ = self.cost_mean_.astype(np.float64).copy()
        self.ridge_alpha_ = None
        best_pred = np.tile(self.cost_mean_, (len(val), 1))
        if self.cost_model == "mean" or np.all(self.cost_hi_ - self.cost_lo_ <= 0):
            return best_pred  # every model has a constant cost: nothing to regress
        Z64 = Z.astype(np.float64)
        scale = np.maximum(self.cost_mean_, 1e-12)
        best_alpha, best_err = RIDGE_GRID[0], np.inf
        for alpha in RIDGE_GRID:
            W, b = _ridge(Z64[train], cost[train], alpha)
            pred = self._clip_cost(Z64[val] @ W + b)
            err = np.nanmean(((pred - cost[val]) / scale) ** 2)
            if err < best_err:
                best_alpha, best_err, best_pred = alpha, err, pred
        self.ridge_alpha_ = float(best_alpha)
        self.cost_W_, self.cost_b_ = _ridge(Z64, cost, best_alpha)
        return best_pred

    def _clip_cost(self, c: np.ndarray) -> np.ndarray:
        return np.clip(c, self.cost_lo_[None, :], self.cost_hi_[None, :])

    # ---- prediction -------------------------------------------------------------------
    def _predict(self, X, tasks, truth) -> Estimate:
        Z = ((X.astype(np.float64) - self.x_mean_) / self.x_scale_).astype(np.float32)
        c = self._clip_cost(Z.astype(np.float64) @ self.cost_W_ + self.cost_b_)
        q, c = self.anchor_.anchor(X, self._network(Z), c, self.shrink_, self.cost_shrink_)
        return Estimate(q, c)

    def _network(self, Z: np.ndarray) -> np.ndarray:
        """The network's raw quality estimates (n, m) for standardised embeddings."""
        h = Z
        n_layers = len(self.weights_) // 2
        for i in range(n_layers):
            W, b = self.weights_[2 * i], self.weights_[2 * i + 1]
            h = h @ W.T + b
            if i < n_layers - 1:
                h = np.maximum(h, 0)
        return 1.0 / (1.0 + np.exp(-h.astype(np.float64)))

    # ---- artifacts --------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"w{i}": w for i, w in enumerate(self.weights_)}
        arrays |= {
            "x_mean": self.x_mean_, "x_scale": self.x_scale_, "cost_W": self.cost_W_,
            "cost_b": self.cost_b_, "cost_mean": self.cost_mean_, "cost_lo": self.cost_lo_,
            "cost_hi": self.cost_hi_, **self.anchor_.arrays(),
        }
        meta = {
            **anchor_meta(self),
            "n_weights": len(self.weights_),
            "ridge_alpha": self.ridge_alpha_,
            "best_epoch": getattr(self, "best_epoch_", None),
            "val_loss": self.history_,
        }
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        try:
            self.weights_ = [arrays[f"w{i}"] for i in range(int(meta["n_weights"]))]
            for key in ("x_mean", "x_scale", "cost_W", "cost_b", "cost_mean", "cost_lo",
                        "cost_hi"):
                setattr(self, f"{key}_", arrays[key])
            set_anchor_state(self, arrays, meta)
        except KeyError as exc:
            raise ArtifactError(f"mlp: artifact lacks {exc}") from None
        self.ridge_alpha_ = meta.get("ridge_alpha")
        self.best_epoch_ = meta.get("best_epoch")
        self.history_ = list(meta.get("val_loss", []))


def _ridge(Z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ridge regression on the observed cells of y; returns (W (d, m), b (m,))."""
    d, m = Z.shape[1], y.shape[1]
    W = np.zeros((d, m))
    b = np.zeros(m)
    for j in range(m):
        rows = ~np.isnan(y[:, j])
        if not rows.any():
            continue
        Zj, yj = Z[rows], y[rows, j]
        mu, ym = Zj.mean(axis=0), yj.mean()
        Zc = Zj - mu
        W[:, j] = np.linalg.solve(Zc.T @ Zc + alpha * np.eye(d), Zc.T @ (yj - ym))
        b[j] = ym - mu @ W[:, j]
    return W, b
