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

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies._fallback import blend
from policies._priors import fill_cost
from policies.base import ArtifactError, Estimate, Policy, PolicyError, TrainData
from router.state.bandit_store import (
    BanditState,
    BanditStore,
    BanditStoreError,
    EmbeddedBanditStore,
    Forgetting,
)

PROJECTIONS = ("pca", "random")


@dataclass
class BanditEstimate:
    """One batch of LinUCB estimates, each (n, m) unless noted.

    ``mean`` is the posterior mean quality in [0, 1] (backed off toward the train mean of
    each model by ``fallback``), what exploitation ranks and what is reported as quality;
    ``bonus`` is the optimism bonus ``alpha * sqrt(z^T A^-1 z)`` (>= 0), reported apart and
    used only by decisions allowed to explore (:mod:`router.exploration`); ``familiarity``
    (n,) is the query's familiarity score and ``fallback`` (n,) the back-off weight in [0, 1]
    (0: the bandit's own mean, 1: the best single model's train means).
    """

    mean: np.ndarray
    bonus: np.ndarray
    cost: np.ndarray
    familiarity: np.ndarray
    fallback: np.ndarray

    @property
    def optimistic(self) -> np.ndarray:
        """Unclipped upper confidence bounds ``mean + bonus`` (for exploring decisions)."""
        return self.mean + self.bonus


class LinUCBPolicy(Policy):
    """Per-arm ridge regression on embedding features with a UCB exploration bonus.

    Parameters: ``alpha`` (exploration, >= 0), ``prior_weight`` (weight of the offline
    train fit, >= 0; 0 = cold start), ``reg`` (ridge penalty, > 0), ``proj_dim`` (None =
    full embedding dimension), ``projection`` ("pca" or "random"), ``seed``, ``fallback``
    (blend the exploiting estimate toward each model's train mean far from the training
    prompts, strength fitted on train: :mod:`policies._fallback`; False = never).
    Forgetting, folded in by the store on every update (:class:`Forgetting`): ``discount``
    (per-update decay of the pulled arm's statistics, 1 = none), ``drift_threshold`` /
    ``drift_slack`` (CUSUM change detection on an arm's quality error, 0 = off),
    ``drift_shrink`` (what a detected change multiplies the arm's statistics by),
    ``cost_threshold`` / ``cost_slack`` (the same on log cost). ``cold_weight``: a model
    without train outcomes starts as the prior's ridge on the rows' average quality, its
    statistics scaled by this weight (an average model's mean, wider bounds).
    ``confidence`` (kappa >= 0): the exploiting mean departs from the frozen prior's mean
    only by what the posterior has established, ``prior + soft(mean - prior, kappa *
    width)`` (the part of the online change beyond kappa posterior widths; 0 = the plain
    posterior mean), so that with nothing changing the bandit keeps its prior's choices;
    an arm whose change detector fired follows its posterior. ``cold_alpha`` (None =
    ``alpha``): the optimism of an arm without train outcomes (a backend added for online
    learning), so that it gets tried where it could be better. ``knn_features``: append
    each model's kNN quality estimate to the features (:mod:`policies._knn_features`), so
    the prior starts from the kNN's estimates rather than a linear model of the embedding.
    """

    name = "linucb"
    online = True
    cold_arms = True  # a model without train outcomes starts from cold_weight (below)

    def __init__(
        self,
        alpha: float = 0.1,
        prior_weight: float = 1.0,
        reg: float = 1.0,
        proj_dim: int | None = None,
        projection: str = "pca",
        seed: int = 0,
        fallback: bool = True,
        discount: float = 1.0,
        drift_threshold: float = 0.0,
        drift_slack: float = 0.1,
        drift_shrink: float = 0.05,
        cost_threshold: float = 0.0,
        cost_slack: float = 0.5,
        cold_weight: float = 0.05,
        confidence: float = 0.0,
        cold_alpha: float | None = None,
        knn_features: bool = False,
    ) -> None:
        self.knn_features = knn_features
        self.confidence = confidence
        self.cold_alpha = cold_alpha
        self.fallback = fallback
        self.discount = discount
        self.drift_threshold = drift_threshold
        self.drift_slack = drift_slack
        self.drift_shrink = drift_shrink
        self.cost_threshold = cost_threshold
        self.cost_slack = cost_slack
        self.cold_weight = cold_weight
        self.alpha = alpha
        self.prior_weight = prior_weight
        self.reg = reg
        self.proj_dim = proj_dim
        self.projection = projection
        self.seed = seed

    # ---- parameters and features --------------------------------------------------------
    def _check_params(self) -> None:
        for key, low, strict in (("alpha", 0, False), ("prior_weight", 0, False), ("reg", 0, True),
                                 ("confidence", 0, False)):
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
        if not isinstance(self.knn_features, bool | np.bool_):
            raise PolicyError(f"linucb: knn_features must be true or false, got "
                              f"{self.knn_features!r}")
        self.forgetting()  # raises on bad forgetting parameters
        ca = self.cold_alpha
        if ca is not None and (isinstance(ca, bool) or not isinstance(ca, int | float)
                               or not 0 <= ca < np.inf):
            raise PolicyError(f"linucb: cold_alpha must be a finite number >= 0 or None, "
                              f"got {ca!r}")
        cw = self.cold_weight
        if isinstance(cw, bool) or not isinstance(cw, int | float) or not 0 <= cw < np.inf:
            raise PolicyError(f"linucb: cold_weight must be a finite number >= 0, got {cw!r}")

    def forgetting(self) -> Forgetting:
        """The store-side forgetting of this configuration (:class:`Forgetting`)."""
        try:
            return Forgetting(
                discount=self.discount, threshold=self.drift_threshold, slack=self.drift_slack,
                shrink=self.drift_shrink, cost_threshold=self.cost_threshold,
                cost_slack=self.cost_slack)
        except BanditStoreError as exc:
            raise PolicyError(f"linucb: {exc}") from None

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
        """Bandit features (n, k+1) for embeddings X (n, d): the projected embedding, the
        kNN estimates when ``knn_features`` (k then counts them too), and a bias."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        knn = getattr(self, "knn_", None)
        return self._assemble(X, knn.transform(X) if knn is not None else None)

    def _assemble(self, X: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        Z = np.atleast_2d(np.asarray(X, dtype=np.float64)) - self.mean_
        if self.proj_ is not None:
            Z = Z @ self.proj_
        parts = [Z] if extra is None else [Z, np.asarray(extra, dtype=np.float64)]
        return np.hstack([*parts, np.ones((Z.shape[0], 1))])

    # ---- fitting --------------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        X, quality, cost = data.X, data.quality, data.cost
        self._check_params()
        self._fit_projection(X)
        self.knn_, self.knn_oof_ = None, None
        if self.knn_features:
            from policies._knn_features import KNNFeatures

            self.knn_, self.knn_oof_ = KNNFeatures.fit(
                X, quality, cost, self.models_, data.tasks, int(self.seed))
        Z = self._assemble(X, self.knn_oof_)  # train rows: out-of-fold kNN estimates
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
        cold = ~observed.any(axis=0)
        if cold.any() and observed.any() and pw > 0 and float(self.cold_weight) > 0:
            # a model without train outcomes (added to the artifact for online learning)
            # starts as a weak "average model": the prior's ridge on each train row's mean
            # over the observed models, with its statistics scaled by cold_weight, so its
            # mean is an average model's (not shrunk toward 0 by the ridge penalty) and
            # its widths are 1/sqrt(cold_weight) times a trained arm's
            rows = observed.any(axis=1)
            avg = np.nanmean(np.where(observed[rows], quality[rows], np.nan), axis=1)
            w = float(self.cold_weight)
            for a in np.flatnonzero(cold):
                A[a] = w * (pw * (Z[rows].T @ Z[rows]) + reg * np.eye(k))
                b[a] = w * pw * (Z[rows].T @ avg)
        filled = fill_cost(cost)
        cost_mean = filled.mean(axis=0)
        cost_n = np.full(m, max(pw * n, 1.0))
        state = BanditState.from_ridge(
            A, b, cost_sum=cost_mean * cost_n, cost_n=cost_n,
            cost_max=np.nan_to_num(np.nanmax(np.where(np.isnan(cost), -np.inf, cost), axis=0),
                                   neginf=0.0, nan=0.0),
            forgetting=self.forgetting(),
        )
        self._store = EmbeddedBanditStore()
        self._store.initialize(state)
        self.prior_theta_ = state.theta().copy()  # the frozen prior the gate measures from
        self._fit_fallback(data)

    def _fit_fallback(self, data: TrainData) -> None:
        """The far-from-training fallback (:mod:`policies._fallback`), fitted on train."""
        from policies._distance import Familiarity
        from policies._fallback import Fallback, fit_fallback

        observed = ~np.isnan(data.quality)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a cold arm's empty column
            self.global_quality_ = np.nan_to_num(np.nanmean(
                np.where(observed, data.quality, np.nan), axis=0), nan=0.0)
        self.global_n_ = observed.sum(axis=0).astype(np.float64)
        if not self.fallback or float(self.prior_weight) == 0 or len(data.X) < 4:
            self.familiarity_, self.fallback_ = None, Fallback()  # cold start: no prior to keep
            return
        params = {**self.get_params(), "fallback": False, "knn_features": False}
        knn = getattr(self, "knn_", None)

        def raw(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            extra = extra_q = None
            if knn is not None:  # the held-out rows' kNN estimates come from rows tr only
                extra, extra_q = self.knn_oof_[tr], knn.refit_transform(data, tr, te)
                shift = extra.mean(axis=0)
                extra, extra_q = extra - shift, extra_q - shift
            return LinUCBPolicy(**params).ridge_means(data.X[tr], data.quality[tr], data.X[te],
                                                      extra, extra_q)

        self.familiarity_ = Familiarity.fit(data.X)
        self.fallback_ = fit_fallback(data.X, data.quality, data.cost, data.tasks, raw,
                                      seed=int(self.seed))

    def ridge_means(self, X: np.ndarray, quality: np.ndarray, Xq: np.ndarray,
                    extra: np.ndarray | None = None,
                    extra_q: np.ndarray | None = None) -> np.ndarray:
        """Prior-only mean quality (n_q, m) at ``Xq`` of this configuration fitted on (X,
        quality): the same ridge as :meth:`fit`, solved without the bandit state (arms
        observed on the same rows share one factorisation). ``extra``/``extra_q``: feature
        columns appended to X's and Xq's (the kNN estimates)."""
        self._fit_projection(X)
        Z, Zq = self._assemble(X, extra), self._assemble(Xq, extra_q)
        pw, reg = float(self.prior_weight), float(self.reg)
        observed = ~np.isnan(quality)
        q = np.where(observed, quality, 0.0)
        out = np.empty((len(Zq), quality.shape[1]))
        masks, arm_group = np.unique(observed.T, axis=0, return_inverse=True)
        for g, mask in enumerate(masks):
            arms = np.flatnonzero(arm_group.reshape(-1) == g)
            Zo = Z[mask]
            A = pw * (Zo.T @ Zo) + reg * np.eye(Z.shape[1])
            theta = np.linalg.solve(A, pw * (Zo.T @ q[mask][:, arms]))
            out[:, arms] = Zq @ theta
        return out

    def backoff_weight(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(familiarity quantile, fallback weight), each (n,), of query embeddings X."""
        n = np.atleast_2d(X).shape[0]
        fam = getattr(self, "familiarity_", None)
        if fam is None:
            return np.full(n, np.nan), np.zeros(n)
        u = fam.quantile(fam.score(X))
        return u, self.fallback_.weight(u)

    def fallback_target(self) -> np.ndarray:
        """Each model's mean quality over the training rows and the online outcomes: what
        the estimate falls back to (the best single model at any lam ranks first on it)."""
        with self.store.read() as st:
            n = self.global_n_ + st.counts
            return np.where(n > 0, (self.global_n_ * self.global_quality_ + st.reward)
                            / np.maximum(n, 1), self.global_quality_)

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
        return self._parts(self.features(X))

    def _parts(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict_parts` from bandit features Z (n, k+1)."""
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

    def estimates(self, X: np.ndarray) -> BanditEstimate:
        """What serving decides on: posterior means in [0, 1] (backed off toward the train
        means far from the training prompts), the optimism bonus apart, and costs."""
        if not self.is_fitted:
            raise PolicyError("linucb: not fitted (call fit or load an artifact)")
        Z = self.features(X)  # once: with knn_features it runs a kNN search
        mean, width, cost = self._parts(Z)
        fam, weight = self.backoff_weight(X)
        mean = np.clip(self.gated_mean(Z, mean, width), 0.0, 1.0)
        if weight.any():
            mean = blend(mean, self.fallback_target(), weight)
        return BanditEstimate(mean, self._alphas() * width,
                              np.broadcast_to(cost, mean.shape).copy(), fam, weight)

    def _alphas(self) -> np.ndarray | float:
        """The bonus multiplier per arm: ``cold_alpha`` for arms without train outcomes."""
        alpha, cold = float(self.alpha), getattr(self, "cold_alpha", None)
        n = getattr(self, "global_n_", None)
        if cold is None or n is None or not (n == 0).any():
            return alpha
        return np.where(n == 0, float(cold), alpha)

    def gated_mean(self, Z: np.ndarray, mean: np.ndarray, width: np.ndarray) -> np.ndarray:
        """The posterior ``mean`` (n, m) at bandit features ``Z`` (:meth:`features`) moved
        back toward the frozen prior's mean by
        ``confidence * width``: only the confident part of the online change is kept.
        An arm whose change detector has fired (the store's ``resets``) is not gated: the
        prior no longer describes it."""
        kappa = float(self.confidence)
        prior = getattr(self, "prior_theta_", None)
        if kappa <= 0 or prior is None or prior.shape[0] != mean.shape[1]:
            return mean
        with self.store.read() as st:
            changed = np.asarray(st.resets if st.resets is not None else 0) > 0
        base = Z @ prior.T
        diff = mean - base
        gated = base + np.sign(diff) * np.maximum(np.abs(diff) - kappa * width, 0.0)
        return np.where(changed, mean, gated)

    def _predict(self, X, tasks, truth) -> Estimate:
        est = self.estimates(X)  # exploitation: the posterior mean, never the bonus
        return Estimate(est.mean, est.cost)

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
        arrays["global_quality"], arrays["global_n"] = self.global_quality_, self.global_n_
        if getattr(self, "prior_theta_", None) is not None:
            arrays["prior_theta"] = self.prior_theta_
        if self.familiarity_ is not None:
            arrays.update(self.familiarity_.arrays())
        return arrays, {"version": state.version, "fingerprint": state.fingerprint,
                        "fallback": self.fallback_.meta()}

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
        self.prior_theta_ = arrays.get("prior_theta")  # older artifacts: no gate
        self._set_fallback_state(arrays, meta, state.n_arms)

    def _save_files(self, path) -> None:
        if getattr(self, "knn_", None) is not None:
            self.knn_.save(path)

    def _load_files(self, path) -> None:
        self.knn_ = None
        if self.knn_features:
            from policies._knn_features import KNNFeatures

            self.knn_ = KNNFeatures.load(path, self.models_)

    def _set_fallback_state(self, arrays, meta, m: int) -> None:
        """The fallback's parts; artifacts written before it had none (never falls back)."""
        from policies._distance import Familiarity
        from policies._fallback import Fallback

        self.global_quality_ = np.asarray(arrays.get("global_quality", np.zeros(m)), np.float64)
        self.global_n_ = np.asarray(arrays.get("global_n", np.zeros(m)), np.float64)
        try:
            self.fallback_ = Fallback.from_meta(meta["fallback"]) if "fallback" in meta \
                else Fallback()
            self.familiarity_ = (Familiarity.from_arrays(arrays)
                                 if "familiarity_k" in arrays else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"linucb: the artifact's fallback is malformed ({exc})") from exc
        if self.global_quality_.shape != (m,) or self.global_n_.shape != (m,):
            raise ArtifactError(f"linucb: global_quality/global_n must have {m} entries")
