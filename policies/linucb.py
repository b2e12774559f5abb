"""LinUCB with an offline prior (PILOT-style): a contextual bandit over the query embedding.

Features are ``z = [P^T (x - mu), 1]``: the embedding, centred on the train mean, optionally
projected to ``proj_dim`` dimensions (a PCA fitted on the train embeddings, or a seeded
Gaussian random projection; stored in the artifact), plus a bias term.

Each arm (model) keeps ridge statistics ``A = prior_weight * Z^T Z + reg * I + sum z z^T``
and ``b = prior_weight * Z^T q + sum r z``: :meth:`fit` fills them from the train split's
observed cells (the *prior*, from full-information data, so the bandit starts good) and
:meth:`update` folds one bandit outcome with a Sherman-Morrison step on ``A^-1`` (O(d^2)),
so the parameters always equal a batch ridge fit on prior plus outcomes. Estimated quality
is the upper confidence bound ``z^T theta + alpha * sqrt(z^T A^-1 z)`` clipped to [0, 1]
(:meth:`predict_parts` gives mean and bonus separately); estimated cost is the per-arm
running mean cost (train costs as a prior, then observed costs).

The parameters live in a :class:`router.state.bandit_store.BanditStore` (in memory by
default); :meth:`attach_store` shares them through a durable embedded store or Redis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies._priors import fill_cost
from policies.base import ArtifactError, Estimate, Policy, PolicyError, TrainData
from router.state.bandit_store import BanditState, BanditStore, EmbeddedBanditStore

PROJECTIONS = ("pca", "random")


class LinUCBPolicy(Policy):
    """Per-arm ridge regression on embedding features with a UCB exploration bonus.

    Parameters: ``alpha`` (exploration, >= 0), ``prior_weight`` (weight of the offline
    train fit, >= 0; 0 = cold start), ``reg`` (ridge penalty, > 0), ``proj_dim`` (None =
    full embedding dimension), ``projection`` ("pca" or "random"), ``seed``.
    """

    name = "linucb"
    online = True

    def __init__(
        self,
        alpha: float = 0.1,
        prior_weight: float = 1.0,
        reg: float = 1.0,
        proj_dim: int | None = None,
        projection: str = "pca",
        seed: int = 0,
    ) -> None:
        self.alpha = alpha
        self.prior_weight = prior_weight
        self.reg = reg
        self.proj_dim = proj_dim
        self.projection = projection
        self.seed = seed

    # ---- parameters and features --------------------------------------------------------
    def _check_params(self) -> None:
        for key, low, strict in (("alpha", 0, False), ("prior_weight", 0, False), ("reg", 0, True)):
            value = getattr(self, key)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise PolicyError(f"linucb: {key} must be a number, got {value!r}") from None
            if not np.isfinite(value) or value < low or (strict and value == low):
                sign = ">" if strict else ">="
                raise PolicyError(f"linucb: {key} must be a finite number {sign} {low}, got {value}")
        if self.projection not in PROJECTIONS:
            raise PolicyError(f"linucb: projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.proj_dim is not None and (
            isinstance(self.proj_dim, bool) or not isinstance(self.proj_dim, int | np.integer)
            or self.proj_dim < 1
        ):
            raise PolicyError(f"linucb: proj_dim must be a positive integer or None, got {self.proj_dim!r}")

    def _fit_projection(self, X: np.ndarray) -> None:
        X = X.astype(np.float64)
        self.mean_ = X.mean(axis=0)
        d = X.shape[1]
        k = self.proj_dim
        if k is None or k >= d:
            self.proj_ = None
            return
        if self.projection == "pca":
            k = min(k, X.shape[0])
            _, _, vt = np.linalg.svd(X - self.mean_, full_matrices=False)
            self.proj_ = np.ascontiguousarray(vt[:k].T)
        else:
            rng = np.random.default_rng(self.seed)
            self.proj_ = rng.standard_normal((d, k)) / np.sqrt(k)

    def features(self, X: np.ndarray) -> np.ndarray:
        """Bandit features (n, k+1) for embeddings X (n, d)."""
        Z = np.atleast_2d(np.asarray(X, dtype=np.float64)) - self.mean_
        if self.proj_ is not None:
            Z = Z @ self.proj_
        return np.hstack([Z, np.ones((Z.shape[0], 1))])

    # ---- fitting --------------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        X, quality, cost = data.X, data.quality, data.cost
        self._check_params()
        self._fit_projection(X)
        Z = self.features(X)
        n, k = Z.shape
        m = len(self.models_)
        pw, reg = float(self.prior_weight), float(self.reg)
        observed = ~np.isnan(quality)
        q = np.where(observed, quality, 0.0)
        A = np.empty((m, k, k))
        b = np.empty((m, k))
        for a in range(m):
            Za = Z[observed[:, a]]
            A[a] = pw * (Za.T @ Za) + reg * np.eye(k)
            b[a] = pw * (Za.T @ q[observed[:, a], a])
        filled = fill_cost(cost)
        cost_mean = filled.mean(axis=0)
        cost_n = np.full(m, max(pw * n, 1.0))
        state = BanditState.from_ridge(
            A, b, cost_sum=cost_mean * cost_n, cost_n=cost_n,
            cost_max=np.nan_to_num(np.nanmax(np.where(np.isnan(cost), -np.inf, cost), axis=0),
                                   neginf=0.0, nan=0.0),
        )
        self._store = EmbeddedBanditStore()
        self._store.initialize(state)

    # ---- online state ---------------------------------------------------------------------
    @property
    def store(self) -> BanditStore:
        if not self.is_fitted:
            raise PolicyError("linucb: not fitted (call fit or load an artifact)")
        return self._store

    def attach_store(self, store: BanditStore) -> LinUCBPolicy:
        """Share parameters through ``store``: an empty store is seeded with this policy's
        state; a store already holding this artifact's bandit (same prior) takes over."""
        state = self.store.state()
        store.initialize(state)
        self._store = store
        return self

    def bandit_state(self) -> BanditState:
        """A copy of the current parameters."""
        return self.store.state()

    def update(self, x: np.ndarray, model: str | int, reward: float, cost: float) -> None:
        """Fold one observed outcome of ``model`` on query ``x`` (learn_one)."""
        store = self.store  # raises if not fitted
        arm = self.model_index(model)
        reward, cost = float(reward), float(cost)
        if not (np.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise PolicyError(f"linucb: reward must be in [0, 1], got {reward}")
        if not np.isfinite(cost) or cost < 0:
            raise PolicyError(f"linucb: cost must be a finite number >= 0, got {cost}")
        x = np.asarray(x, dtype=np.float32).reshape(-1)  # as predict sees embeddings
        if x.shape[0] != self.dim_ or not np.isfinite(x).all():
            raise PolicyError(
                f"linucb: update needs one finite embedding of dimension {self.dim_}, got shape "
                f"{x.shape}"
            )
        store.update(arm, self.features(x)[0], reward, cost)

    # ---- prediction -----------------------------------------------------------------------
    def predict_parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean quality (n, m), width sqrt(z^T A^-1 z) (n, m) and mean cost (m,).

        The exploration bonus is ``alpha * width``.
        """
        if not self.is_fitted:
            raise PolicyError("linucb: not fitted (call fit or load an artifact)")
        Z = self.features(X)
        with self.store.read() as st:
            mean = Z @ st.theta().T
            quad = (np.matmul(st.A_inv, Z.T) * Z.T[None]).sum(axis=1)  # (m, n) z^T A^-1 z
            width = np.sqrt(np.maximum(quad.T, 0.0))
            cost = st.mean_cost()
        return mean, width, cost

    def ucb(self, X: np.ndarray) -> np.ndarray:
        """Unclipped upper confidence bounds (n, m): mean + alpha * width.

        :meth:`predict` clips quality to [0, 1]; optimistic arms then tie at 1 and ties go
        to the cheaper model, which starves exploration of dearer arms. Decisions that
        should explore (the online replay, the budget knapsack) rank by this instead.
        """
        mean, width, _ = self.predict_parts(X)
        return mean + float(self.alpha) * width

    def _predict(self, X, tasks, truth) -> Estimate:
        mean, width, cost = self.predict_parts(X)
        quality = np.clip(mean + float(self.alpha) * width, 0.0, 1.0)
        return Estimate(quality, np.broadcast_to(cost, quality.shape).copy())

    def reserve_cost(self) -> np.ndarray:
        """Largest cost seen per arm (train and online): a cautious budget reservation."""
        with self.store.read() as st:
            return st.cost_max.copy()

    # ---- artifacts ------------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        state = self.store.state()
        arrays = {f"bandit_{k}": v for k, v in state.to_arrays().items()}
        arrays["mean"] = self.mean_
        if self.proj_ is not None:
            arrays["proj"] = self.proj_
        return arrays, {"version": state.version, "fingerprint": state.fingerprint}

    def _set_state(self, arrays, meta) -> None:
        try:
            self.mean_ = arrays["mean"]
            self.proj_ = arrays.get("proj")
            state = BanditState.from_arrays(
                {k.removeprefix("bandit_"): v for k, v in arrays.items() if k.startswith("bandit_")}
            )
        except (KeyError, RuntimeError) as exc:
            raise ArtifactError(f"linucb: artifact arrays are incomplete ({exc})") from exc
        self._store = EmbeddedBanditStore()
        self._store.initialize(state)
