"""k-nearest-neighbour router with shrinkage toward the neighbourhood's task prior.

Following "When Simple kNN Beats Complex Learned Routers": find the k train prompts
nearest to the query (FAISS, :class:`router.index.VectorIndex`, inner product on
L2-normalised embeddings) and estimate each model's quality and cost as the weighted mean
over the neighbours whose cell is *observed*. Plain neighbour means are noisy (k small,
correctness is 0/1), so each estimate is shrunk toward a prior::

    q = (sum_i w_i q_i + alpha * prior) / (sum_i w_i + alpha)

where the prior is the train mean of the query's *inferred* task: a hard vote of its
nearest neighbours' task labels (:func:`policies._anchor.task_vote`; never the query's own
label, so it works in serving). ``k``, ``alpha`` and the softmax ``temperature`` default to
``"auto"``: tuned by seeded k-fold cross-validation on the train set, by routing utility
over the whole lam range with the one-standard-error rule toward the prior (of the
settings within one paired SE of the best, the one weighting the prior most), so that
without per-prompt signal the policy routes like ``task-static``.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np

from policies._anchor import TASK_VOTE_K, one_se, row_utility, task_vote
from policies._anchor import lam_grid as anchor_lam_grid
from policies._backoff import Backoff, fit_backoff
from policies._distance import FAMILIARITY_K, unit
from policies._priors import (
    TaskTable,
    encode_tasks,
    fill_cost,
    kfold,
    masked_col_mean,
    parse_auto,
)
from policies.base import ArtifactError, Estimate, Policy, PolicyError, TrainData

K_GRID = (5, 10, 20, 40, 80, 160, 320)
ALPHA_GRID = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0, 1000.0, 1e4)
TEMPERATURE_GRID = (0.02, 0.05, 0.1, 0.2)
WEIGHTINGS = ("uniform", "distance")
PRIORS = ("task", "global")
INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
TUNE_METRICS = ("brier", "utility")
LAM_POINTS = 6  # log-spaced lam values of the utility tuning grid (plus 0)
PREDICT_CHUNK = 1024  # queries per estimate block (bounds memory)


class KNNPolicy(Policy):
    """kNN estimates of per-model quality and cost, shrunk toward an inferred-task prior.

    Parameters
    ----------
    k: neighbours, or ``"auto"`` (cross-validated over :data:`K_GRID`).
    alpha: prior strength in neighbour-weight units (weights sum to k), or ``"auto"``.
    weighting: ``"uniform"`` or ``"distance"`` (``k * softmax(similarity / temperature)``).
    temperature: softmax temperature for ``"distance"``, or ``"auto"``.
    prior: ``"task"`` (the neighbourhood's inferred task means) or ``"global"``.
    cv_folds, seed: the seeded cross-validation used by the ``"auto"`` parameters.
    tune_metric: ``"utility"`` (default: realised quality minus lam * cost of the chosen
        models over a scale-free lam grid) or ``"brier"`` (squared error of quality over
        observed cells). Brier rewards predicting a prompt's *difficulty* (all models'
        scores move together) even when it does not change *which* model is best; in
        nested cross-validation on the train splits, utility tuning routed better on
        RouterDC (0.526 vs 0.516 mean score at lam=0) and RouterBench.
    index_kind: the serving index, passed to :class:`router.index.VectorIndex`
        (default ``"auto"``: exact below 50,000 prompts, then HNSW; cross-validation
        always searches exactly). The built index is saved in the artifact and loaded,
        after a checksum check, at start.
    """

    name = "knn"

    def __init__(
        self,
        k: int | str = "auto",
        alpha: float | str = "auto",
        weighting: str = "distance",
        temperature: float | str = "auto",
        prior: str = "task",
        cv_folds: int = 5,
        tune_metric: str = "utility",
        index_kind: str = "auto",
        seed: int = 0,
    ) -> None:
        self.k = k
        self.alpha = alpha
        self.weighting = weighting
        self.temperature = temperature
        self.prior = prior
        self.cv_folds = cv_folds
        self.tune_metric = tune_metric
        self.index_kind = index_kind
        self.seed = seed

    # ---- parameters -----------------------------------------------------------------
    def _check_params(self) -> tuple[Any, Any, Any]:
        k = parse_auto(self.k, "knn: k", int)
        alpha = parse_auto(self.alpha, "knn: alpha", float)
        temp = parse_auto(self.temperature, "knn: temperature", float)
        if k != "auto" and k < 1:
            raise PolicyError(f"knn: k must be >= 1, got {self.k!r}")
        if alpha != "auto" and not (np.isfinite(alpha) and alpha >= 0):
            raise PolicyError(f"knn: alpha must be >= 0, got {self.alpha!r}")
        if temp != "auto" and not (np.isfinite(temp) and temp > 0):
            raise PolicyError(f"knn: temperature must be > 0, got {self.temperature!r}")
        parse_auto(self.seed, "knn: seed", int)
        for value, allowed, what in (
            (self.weighting, WEIGHTINGS, "weighting"),
            (self.prior, PRIORS, "prior"),
            (self.tune_metric, TUNE_METRICS, "tune_metric"),
            (self.index_kind, INDEX_KINDS, "index_kind"),
        ):
            if value not in allowed:
                raise PolicyError(f"knn: {what} must be one of {list(allowed)}, got {value!r}")
        folds = parse_auto(self.cv_folds, "knn: cv_folds", int)
        if folds == "auto" or folds < 2:
            raise PolicyError(f"knn: cv_folds must be >= 2, got {self.cv_folds!r}")
        return k, alpha, temp

    # ---- fitting ----------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        X, quality, cost, tasks = data.X, data.quality, data.cost, data.tasks
        k, alpha, temp = self._check_params()
        n = X.shape[0]
        names, codes = encode_tasks(tasks if self.prior == "task" else None, n)
        self.X_ = np.ascontiguousarray(X, dtype=np.float32)
        self.quality_ = quality
        self.cost_ = cost
        self.codes_ = codes
        self.table_ = TaskTable.fit(quality, fill_cost(cost), codes, names)
        self.cv_ = {}
        # the cost prior strength is always cross-validated (when there are >= 2 rows)
        self.alpha_cost_ = float(alpha) if alpha != "auto" else ALPHA_GRID[-1]
        if n >= 2:
            k, alpha, temp = self._tune(k, alpha, temp, quality, cost, codes, names)
        self.k_ = int(min(k if k != "auto" else K_GRID[0], n))
        self.alpha_ = float(alpha if alpha != "auto" else ALPHA_GRID[-1])
        self.temperature_ = float(temp) if temp != "auto" else TEMPERATURE_GRID[1]
        self._index = _build_index(self.X_, self.index_kind)
        # far from the training data, back off toward the global means (policies._backoff)
        self.backoff_ = fit_backoff(unit(X), codes, names, quality, cost, TASK_VOTE_K,
                                    int(self.seed))

    def _tune(self, k, alpha, temp, quality, cost, codes, names):
        """Seeded k-fold CV over the grids of the ``"auto"`` parameters.

        Neighbour statistics are computed once per fold and (k, temperature); every
        ``alpha`` then costs one division. The cost prior strength is tuned alongside,
        by squared error relative to each model's mean cost.
        """
        n = self.X_.shape[0]
        k_grid = [k] if k != "auto" else [g for g in K_GRID if g < n] or [max(1, n - 1)]
        a_grid = [alpha] if alpha != "auto" else list(ALPHA_GRID)
        if self.weighting == "uniform":
            t_grid = [1.0]
        else:
            t_grid = [temp] if temp != "auto" else list(TEMPERATURE_GRID)
        kt = list(itertools.product(k_grid, t_grid))
        losses = np.zeros((len(kt), len(a_grid)))
        row_util = np.zeros((n, len(kt), len(a_grid)))  # per-row held-out utility
        cost_losses = np.zeros((len(kt), len(ALPHA_GRID)))
        eval_c = fill_cost(cost)
        lams = anchor_lam_grid(eval_c, LAM_POINTS)
        scale = np.maximum(masked_col_mean(eval_c, 0.0), 1e-12)
        for val in kfold(n, int(self.cv_folds), int(self.seed)):
            train = np.setdiff1d(np.arange(n), val)
            table = TaskTable.fit(quality[train], eval_c[train], codes[train], names)
            kk = min(max(k_grid), len(train))
            sims_all, ids_all = _search(self.X_[train], self.X_[val], kk)
            for start in range(0, len(val), PREDICT_CHUNK):
                part = slice(start, start + PREDICT_CHUNK)
                rows = val[part]
                for i, (ki, ti) in enumerate(kt):
                    kc = min(ki, kk)
                    st = self._stats(sims_all[part, :kc], ids_all[part, :kc], ti,
                                     quality[train], cost[train], codes[train], table)
                    c_fixed = _combine(st.num_c, st.den_c, ALPHA_GRID[-1], st.prior_c)
                    # unobserved cells count as the task mean (not 0) when tuning
                    q_true = np.where(np.isnan(quality[rows]), st.prior_q, quality[rows])
                    for j, a in enumerate(a_grid):
                        q_hat = _combine(st.num_q, st.den_q, a, st.prior_q)
                        if self.tune_metric == "brier":
                            losses[i, j] += np.nansum((q_hat - quality[rows]) ** 2)
                        else:
                            row_util[rows, i, j] = row_utility(q_hat, c_fixed, q_true,
                                                               eval_c[rows], lams)
                    for j, a in enumerate(ALPHA_GRID):
                        c_hat = _combine(st.num_c, st.den_c, a, st.prior_c)
                        cost_losses[i, j] += np.nansum(((c_hat - cost[rows]) / scale) ** 2)
        if self.tune_metric == "utility":
            losses = -row_util.sum(axis=0)
        i, j = np.unravel_index(int(np.argmin(losses)), losses.shape)
        if self.tune_metric == "utility":
            # one-SE rule toward the prior: of the (k, temperature, alpha) within one paired
            # SE of the best, the one giving the prior the most weight, alpha / (k + alpha)
            prior_weight = np.array([[a / (kk + a) if kk + a > 0 else 1.0 for a in a_grid]
                                     for kk, _ in kt])
            order = np.argsort(-prior_weight.ravel(), kind="stable")
            flat = order[one_se(row_util.reshape(n, -1)[:, order])]
            i, j = np.unravel_index(int(flat), prior_weight.shape)
        self.alpha_cost_ = float(ALPHA_GRID[int(np.argmin(cost_losses[i]))])
        self.cv_ = {
            "metric": self.tune_metric,
            "folds": int(self.cv_folds),
            "k_temperature": [[int(a), float(b)] for a, b in kt],
            "alpha": [float(a) for a in a_grid],
            "loss": (losses / n).tolist(),
            "cost_alpha": list(ALPHA_GRID),
            "cost_loss": (cost_losses[i] / n).tolist(),
        }
        k_best, t_best = kt[i]
        return k_best, a_grid[j], t_best

    # ---- estimation -------------------------------------------------------------------
    def _weights(self, sims: np.ndarray, ids: np.ndarray, temp: float) -> np.ndarray:
        valid = ids >= 0
        if self.weighting == "uniform":
            w = valid.astype(np.float64)
        else:
            s = np.where(valid, sims.astype(np.float64), -np.inf)
            w = np.exp((s - s.max(axis=1, keepdims=True)) / temp)
            w = np.where(valid, w, 0.0)
            w *= valid.sum(axis=1, keepdims=True) / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
        return w

    def _stats(self, sims, ids, temp, quality, cost, codes, table: TaskTable) -> _Stats:
        """Weighted neighbour sums over observed cells, and the inferred-task priors."""
        w = self._weights(sims, ids, temp)  # (n, k)
        safe = np.where(ids >= 0, ids, 0)
        # inferred task: a hard vote of the nearest neighbours' task labels (a soft share
        # over all k neighbours mixes tasks' means and misroutes clear-cut prompts)
        shares = task_vote(np.where(ids >= 0, codes[safe], -1), len(table.names))
        num_q, den_q = _weighted_sums(quality[safe], w)
        num_c, den_c = _weighted_sums(cost[safe], w)
        return _Stats(num_q, den_q, shares @ table.quality, num_c, den_c, shares @ table.cost)

    def _predict(self, X, tasks, truth) -> Estimate:
        if X.shape[0] == 1:  # the gateway's case: policies._knn_one, same figures
            one = getattr(self, "_one", None)
            if one is None or not one.fresh(self):
                from policies._knn_one import OneQuery

                one = self._one = OneQuery(self)
            est = one.estimate(self, X)
            if est is not None:
                return Estimate(*est)
        n = self._n_train()
        k = min(self.k_, n)
        backoff = getattr(self, "backoff_", None)
        qs, cs = [], []
        for start in range(0, X.shape[0], PREDICT_CHUNK):
            part = X[start : start + PREDICT_CHUNK]
            sims, ids = self._search(part, max(k, min(FAMILIARITY_K, n)))
            st = self._stats(sims[:, :k], ids[:, :k], self.temperature_, self.quality_,
                             self.cost_, self.codes_, self.table_)
            q = _combine(st.num_q, st.den_q, self.alpha_, st.prior_q)
            c = _combine(st.num_c, st.den_c, self.alpha_cost_, st.prior_c)
            if backoff is not None and backoff.active:
                q, c = backoff.apply(q, c, backoff.weight(self._familiarity(part, sims, ids)))
            qs.append(q)
            cs.append(c)
        return Estimate(np.concatenate(qs), np.concatenate(cs))

    def _familiarity(self, Xq: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Mean cosine similarity to the FAMILIARITY_K nearest train prompts (as
        :class:`policies._distance.Familiarity`, from this search's inner products)."""
        if getattr(self, "_norms", None) is None or len(self._norms) != self._n_train():
            self._norms = np.maximum(np.linalg.norm(self.X_, axis=1), 1e-12)
        kf = min(FAMILIARITY_K, sims.shape[1])
        qn = np.maximum(np.linalg.norm(np.asarray(Xq, np.float64), axis=1), 1e-12)
        safe = np.maximum(ids[:, :kf], 0)
        cos = sims[:, :kf] / (qn[:, None] * self._norms[safe])
        return cos.mean(axis=1)

    def _search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self._index.search(np.ascontiguousarray(X, dtype=np.float32), k)
        return np.asarray(sims), np.asarray(ids)

    def neighbours(self, X: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and train-row ids of the ``k`` (default ``k_``) nearest prompts."""
        if not self.is_fitted:
            raise PolicyError("knn: not fitted")
        return self._search(np.atleast_2d(X), min(k or self.k_, self._n_train()))

    def _n_train(self) -> int:
        """Training rows, without building a view of the index's vectors (hot path)."""
        if self._vindex is not None:
            return len(self._vindex)
        return self.X_.shape[0]

    # ---- index storage ----------------------------------------------------------------
    # One copy of the train embeddings: the FAISS index's. ``X_`` is a read-only view of
    # the index's vectors (flat/HNSW on CPU); assigning ``X_`` (fitting) holds the array
    # only until an index is built from it, and assigning ``_index`` drops it.
    _vindex = None
    _X_fit = None
    _X_copy = None

    @property
    def X_(self) -> np.ndarray:
        if self._vindex is None and self._X_fit is None:
            raise PolicyError("knn: not fitted")
        if self._vindex is None:
            return self._X_fit
        if self._vindex.vectors_are_view:
            return self._vindex.stored_vectors()
        # IVF or GPU indexes hold no plain array: keep one reconstructed copy
        if self._X_copy is None or len(self._X_copy) != len(self._vindex):
            self._X_copy = self._vindex.stored_vectors()
        return self._X_copy

    @X_.setter
    def X_(self, value: np.ndarray) -> None:
        self._X_fit = np.ascontiguousarray(value, dtype=np.float32)
        self._vindex = self._X_copy = None

    @property
    def _index(self):
        if self._vindex is None:
            self._index = _build_index(self.X_, self.index_kind)
        return self._vindex

    @_index.setter
    def _index(self, index) -> None:
        self._vindex = index
        self._X_fit = self._X_copy = None

    # ---- artifacts --------------------------------------------------------------------
    # arrays.npz holds the estimates' arrays; the built FAISS index is ``index.faiss``
    # (faiss.write_index, + a JSON sidecar) and the raw embeddings ``vectors.npy`` (read
    # memory-mapped, only to rebuild an index that fails its check).
    INDEX_FILE = "index.faiss"
    VECTORS_FILE = "vectors.npy"

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        index = self._index
        arrays = {
            "quality": self.quality_,
            "cost": self.cost_,
            "codes": self.codes_,
            **self.table_.arrays(),
            **(self.backoff_.arrays() if self.backoff_ is not None else {}),
        }
        meta = {
            "backoff": None if self.backoff_ is None else self.backoff_.meta(),
            "tasks": self.table_.names,
            "k": self.k_,
            "alpha": self.alpha_,
            "alpha_cost": self.alpha_cost_,
            "temperature": self.temperature_,
            "cv": self.cv_,
            "index": {"file": self.INDEX_FILE, "vectors": self.VECTORS_FILE, "n": len(index),
                      "dim": index.dim, "kind": index.built_kind,
                      "checksum": index.checksum()},
        }
        return arrays, meta

    def _save_files(self, path) -> None:
        from policies.base import _atomic_write

        self._index.save(path / self.INDEX_FILE)
        _atomic_write(path / self.VECTORS_FILE,
                      lambda f: np.save(f, self.X_, allow_pickle=False))

    def _load_files(self, path) -> None:
        self._artifact_dir = path

    def _set_state(self, arrays, meta) -> None:
        try:
            self.quality_ = arrays["quality"]
            self.cost_ = arrays["cost"]
            self.codes_ = arrays["codes"].astype(np.int64)
            self.table_ = TaskTable.from_arrays(arrays, list(meta["tasks"]))
            self.k_ = int(meta["k"])
            self.alpha_ = float(meta["alpha"])
            self.alpha_cost_ = float(meta["alpha_cost"])
            self.temperature_ = float(meta["temperature"])
        except KeyError as exc:
            raise ArtifactError(f"knn: artifact lacks {exc}") from None
        self.cv_ = dict(meta.get("cv", {}))
        # artifacts saved before the backoff existed have none
        info = dict(meta.get("backoff") or {})
        self.backoff_ = (Backoff.from_arrays(arrays, "backoff_", str(info.pop("fitted", "")),
                                             info) if "backoff_ab" in arrays else None)
        if "X" in arrays:  # artifacts written before the index was persisted
            self.X_ = arrays["X"]
            self._index = _build_index(self.X_, self.index_kind)
        elif "index" in meta:
            self._index = _load_index(getattr(self, "_artifact_dir", None), meta["index"],
                                      self.index_kind)
        else:
            raise ArtifactError("knn: artifact has neither embeddings nor an index")
        if len(self._index) != self.quality_.shape[0]:
            raise ArtifactError(f"knn: the index holds {len(self._index)} prompts but the "
                                f"artifact has outcomes for {self.quality_.shape[0]}")


class _Stats(NamedTuple):
    num_q: np.ndarray
    den_q: np.ndarray
    prior_q: np.ndarray
    num_c: np.ndarray
    den_c: np.ndarray
    prior_c: np.ndarray


def _weighted_sums(values: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum_i w_i v_i and sum_i w_i over the observed (non-NaN) neighbour cells, (n, m)."""
    observed = ~np.isnan(values)  # (n, k, m)
    ww = w[:, :, None] * observed
    return np.einsum("nkm,nkm->nm", ww, np.where(observed, values, 0.0)), ww.sum(axis=1)


def _combine(num: np.ndarray, den: np.ndarray, alpha: float, prior: np.ndarray) -> np.ndarray:
    """(sum_i w_i v_i + alpha * prior) / (sum_i w_i + alpha); the prior where both are 0."""
    total = den + alpha
    return np.where(total > 0, (num + alpha * prior) / np.where(total > 0, total, 1.0), prior)


def _build_index(X: np.ndarray, kind: str, threads: int | None = None):
    from router.index import VectorIndex, VectorIndexError

    try:
        index = VectorIndex(X.shape[1], kind=kind, threads=threads)
        index.add(X)
    except VectorIndexError as exc:
        raise PolicyError(f"knn: cannot build the {kind!r} index: {exc}") from None
    return index


def _load_index(path, info: dict[str, Any], kind: str):
    """The artifact's saved index, checked against its recorded count, dim and checksum.

    A missing, unreadable or mismatching index file is rebuilt from ``vectors.npy`` with a
    warning; without usable vectors either, the artifact is broken (ArtifactError).
    """
    import logging
    from pathlib import Path

    from router.index import VectorIndex, VectorIndexError, vectors_checksum

    log = logging.getLogger(__name__)
    if path is None:
        raise ArtifactError("knn: the index lives in the artifact directory; load with "
                            "Policy.load(path)")
    path = Path(path)
    try:
        n, dim, checksum = int(info["n"]), int(info["dim"]), str(info["checksum"])
        index_file, vectors_file = path / info["file"], path / info["vectors"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"knn: bad index record in {path / 'config.json'}: {exc}") from None
    problem = None
    try:
        index = VectorIndex.load(index_file)
        if len(index) != n or index.dim != dim:
            problem = (f"holds {len(index)} vectors of dimension {index.dim}, "
                       f"expected {n} of dimension {dim}")
        elif index.checksum() != checksum:
            problem = "its vectors do not match the recorded checksum"
    except VectorIndexError as exc:
        problem = str(exc)
    if problem is None:
        return index
    log.warning("knn: %s: %s; rebuilding the index from %s", index_file, problem,
                vectors_file.name)
    try:
        X = np.load(vectors_file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"knn: {index_file}: {problem}, and {vectors_file} is "
                            f"unreadable ({exc}); retrain with `router train`") from None
    if X.shape != (n, dim) or vectors_checksum(X) != checksum:
        raise ArtifactError(f"knn: {index_file}: {problem}, and {vectors_file} does not match "
                            "the recorded checksum either; retrain with `router train`")
    return _build_index(X, kind)


def _search(train_X, query_X, k) -> tuple[np.ndarray, np.ndarray]:
    """Exact single-threaded search (cross-validation folds)."""
    sims, ids = _build_index(train_X, "flat", threads=1).search(
        np.ascontiguousarray(query_X, dtype=np.float32), k
    )
    return np.asarray(sims), np.asarray(ids)
