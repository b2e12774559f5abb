"""CSCR: cost-spectrum contrastive routing (after Shirkavand et al., "Cost-Aware Contrastive
Routing for LLMs", 2025).

Prompts and models live in one embedding space:

* a **query tower** (residual head on the frozen sentence embedding) embeds prompts;
* a **model tower** embeds a model from a *descriptor* of its behaviour: its mean
  correctness on each prompt cluster of a fixed probe set (clusters from k-means on the
  training prompts, nested in tasks when task labels are given), plus its standardised
  log cost per call. The descriptor needs only the model's outcomes on probe prompts, so a
  new model is added by embedding its descriptor with the *frozen* model tower
  (:meth:`CSCRPolicy.add_model`), without retraining.

The paper's descriptors are logit footprints or perplexity fingerprints, which need the
LLMs themselves; here they are correctness profiles, computable from routing data alone.
The probe set is a fixed, cluster-stratified sample of at most ``n_probes`` training rows
(:attr:`CSCRPolicy.probe_indices_`, embeddings in ``probe_X_``): run a new model on those
prompts and pass its outcomes to ``add_model``. The trained pool's own descriptors use all
of their training rows.

Training (cost-spectrum contrastive loss): models are sorted by cost into ``n_bands``
bands; for each prompt and each band (and the whole pool), an InfoNCE loss over
similarity / ``temperature`` has the band's *accurate* models (quality >=
``accuracy_threshold``) as soft positives, weighted by ``exp(-beta * log cost)``, so the
geometry favours the cheapest accurate model of every band. ``beta`` ramps from 0 to
``cost_penalty`` over the first half of training. Besides the real pool, every epoch adds
``n_virtual`` *virtual* models, each copying a random real model per cluster (with its
cost scaled by a random factor), so the model tower sees many descriptors and learns to
place a model that is good on a cluster near that cluster's prompts.

Routing: one FAISS inner-product lookup (:class:`router.index.VectorIndex`) of the query
embedding against all model embeddings gives the similarities. A single logistic
calibrator shared by all models (so it also serves added ones), fitted on out-of-fold
similarities, maps ``(similarity, logit(descriptor prior), log cost)`` to quality, where
the descriptor prior is the model's probe correctness on the query's inferred cluster
(from the query's nearest training prompts). Cost is the model's per-cluster mean cost at
the inferred cluster, scaled by how expensive the neighbourhood's prompts are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from policies._anchor import (
    TaskPrior,
    anchor_meta,
    check_shrink,
    pick_anchor,
    set_anchor_state,
)
from policies._contrastive import (
    MLPTower,
    Neighbourhood,
    ResidualHead,
    check_positive,
    embed,
    fit_soft_logistic,
    group_codes,
    load_module_arrays,
    logit,
    masked_mean,
    module_arrays,
    seeded,
    sigmoid,
    soft_target_ce,
    stratified_folds,
)
from policies._priors import encode_tasks
from policies.base import ArtifactError, Estimate, Policy, PolicyError, TrainData

COST_FLOOR = 1e-9  # USD; log cost of a free model


def _log_cost(cost: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(cost, dtype=np.float64), 0.0) + COST_FLOOR)


class _Core:
    """Trained towers plus everything needed to score the model pool."""

    def __init__(self, qtower: ResidualHead, mtower: MLPTower, nb: Neighbourhood,
                 profile_q: np.ndarray, profile_c: np.ndarray, lc_mean: float, lc_std: float,
                 index_kind: str) -> None:
        self.qtower, self.mtower, self.nb = qtower, mtower, nb
        self.profile_q = profile_q  # (m, K) per-cluster mean quality
        self.profile_c = profile_c  # (m, K) per-cluster mean cost
        self.lc_mean, self.lc_std = lc_mean, lc_std
        self.index_kind = index_kind
        self.model_emb = self.embed_models(profile_q, profile_c)
        self._index = None

    def descriptors(self, profile_q: np.ndarray, profile_c: np.ndarray) -> np.ndarray:
        mean_cost = profile_c @ self.nb.group_freq
        lc = (_log_cost(mean_cost) - self.lc_mean) / self.lc_std
        return np.column_stack([profile_q - 0.5, lc]).astype(np.float32)

    def embed_models(self, profile_q: np.ndarray, profile_c: np.ndarray) -> np.ndarray:
        return embed(self.mtower, self.descriptors(profile_q, profile_c))

    def add(self, profile_q: np.ndarray, profile_c: np.ndarray) -> None:
        emb = self.embed_models(profile_q[None], profile_c[None])
        self.profile_q = np.vstack([self.profile_q, profile_q[None]])
        self.profile_c = np.vstack([self.profile_c, profile_c[None]])
        self.model_emb = np.vstack([self.model_emb, emb])
        if self._index is not None:
            self._index.add(emb)

    def index(self):
        if self._index is None:
            from router.index import VectorIndex

            self._index = VectorIndex(self.model_emb.shape[1], kind=self.index_kind)
            self._index.add(np.ascontiguousarray(self.model_emb, dtype=np.float32))
        return self._index

    def scaled_log_cost(self) -> np.ndarray:
        return (_log_cost(self.profile_c @ self.nb.group_freq) - self.lc_mean) / self.lc_std

    def features(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarity, descriptor prior, cost), each (n, m), via one k-NN model lookup."""
        z = embed(self.qtower, X)
        m = self.model_emb.shape[0]
        scores, ids = self.index().search(np.ascontiguousarray(z, dtype=np.float32), m)
        scores, ids = np.asarray(scores, np.float64), np.asarray(ids)
        sims = np.full((len(X), m), -1.0)
        rows = np.repeat(np.arange(len(X)), ids.shape[1])
        ok = ids.ravel() >= 0
        sims[rows[ok], ids.ravel()[ok]] = scores.ravel()[ok]
        post, local_cost = self.nb.query(X)
        prior = post @ self.profile_q.T
        # per-cluster model cost, times how pricey this neighbourhood is for the training pool
        base = post @ self.nb.group_cost  # (n, m_train)
        factor = masked_mean(local_cost / np.maximum(base, COST_FLOOR), axis=1, fallback=1.0)
        factor = np.where(np.isfinite(factor) & (factor > 0), factor, 1.0)
        cost = (post @ self.profile_c.T) * factor[:, None]
        return sims, prior, cost


class CSCRPolicy(Policy):
    """Cost-spectrum contrastive router with a FAISS model index (see the module doc).

    Parameters
    ----------
    embed_dim, hidden, dropout: the shared space's size; the query tower's width, dropout.
    model_hidden: width of the model tower.
    temperature: similarity temperature of the contrastive loss.
    n_bands, cost_penalty: cost bands and the final ``beta`` of the cheap-positive weights.
    accuracy_threshold: quality at or above which a model counts as accurate for a prompt.
    n_virtual, cost_jitter: virtual models per epoch and their log-cost scale range (e-based).
    n_clusters: probe clusters (descriptor columns); with task labels, split across tasks.
    epochs, batch_size, lr, weight_decay: AdamW training.
    neighbours: k of the k-NN cluster vote and of the local cost factor.
    n_probes: at most this many probe prompts for profiling added models.
    calib_folds, calib_l2: cross-fitting folds and ridge strength of the shared calibrator.
    index_kind: :class:`router.index.VectorIndex` kind of the model index.
    seed, threads: as for RouterDC (deterministic on CPU; torch threads while fitting,
        default 1, the fastest for these small networks).
    shrink, cost_shrink: anchoring of the trained pool's estimates on the inferred task's
        train means, as for RouterDC (:mod:`policies._anchor`).
    """

    name = "cscr"
    artifact_version = 2  # 2: task anchor (anchor_* arrays, shrink / cost_shrink)

    def __init__(
        self,
        embed_dim: int = 64,
        hidden: int = 256,
        model_hidden: int = 64,
        dropout: float = 0.1,
        temperature: float = 0.1,
        n_bands: int = 3,
        cost_penalty: float = 1.0,
        accuracy_threshold: float = 0.5,
        n_virtual: int = 32,
        cost_jitter: float = 1.0,
        n_clusters: int = 8,
        epochs: int = 40,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        neighbours: int = 10,
        n_probes: int = 256,
        calib_folds: int = 3,
        calib_l2: float = 1.0,
        index_kind: str = "flat",
        seed: int = 0,
        threads: int | None = 1,
        shrink: float | str = "auto",
        cost_shrink: float | str = "auto",
    ) -> None:
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.model_hidden = model_hidden
        self.dropout = dropout
        self.temperature = temperature
        self.n_bands = n_bands
        self.cost_penalty = cost_penalty
        self.accuracy_threshold = accuracy_threshold
        self.n_virtual = n_virtual
        self.cost_jitter = cost_jitter
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.neighbours = neighbours
        self.n_probes = n_probes
        self.calib_folds = calib_folds
        self.calib_l2 = calib_l2
        self.index_kind = index_kind
        self.seed = seed
        self.threads = threads
        self.shrink = shrink
        self.cost_shrink = cost_shrink

    # ---- parameters ---------------------------------------------------------------------
    def _checked(self) -> dict[str, Any]:
        n = self.name
        p: dict[str, Any] = {}
        for key in ("embed_dim", "hidden", "model_hidden", "n_bands", "n_clusters", "epochs",
                    "batch_size", "neighbours", "n_probes", "calib_folds"):
            p[key] = check_positive(key, n, getattr(self, key), integer=True)
        for key in ("temperature", "lr"):
            p[key] = check_positive(key, n, getattr(self, key))
        for key in ("cost_penalty", "cost_jitter", "weight_decay", "calib_l2"):
            p[key] = check_positive(key, n, getattr(self, key), allow_zero=True)
        p["n_virtual"] = check_positive("n_virtual", n, self.n_virtual, integer=True,
                                        allow_zero=True)
        for key in ("dropout", "accuracy_threshold"):
            value = float(getattr(self, key))
            if not 0 <= value < 1:
                raise PolicyError(f"{n}: {key} must be in [0, 1), got {getattr(self, key)!r}")
            p[key] = value
        if p["calib_folds"] < 2:
            raise PolicyError(f"{n}: calib_folds must be >= 2, got {self.calib_folds!r}")
        p["threads"] = (None if self.threads is None
                        else check_positive("threads", n, self.threads, integer=True))
        p["seed"] = int(self.seed)
        p["index_kind"] = str(self.index_kind)
        check_shrink(n, "shrink", self.shrink)
        check_shrink(n, "cost_shrink", self.cost_shrink)
        return p

    # ---- training -----------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        X, quality, cost, tasks = data.X, data.quality, data.cost, data.tasks
        p = self._checked()
        n = X.shape[0]
        cost = np.where(np.isnan(cost), masked_mean(cost, 0, 0.0)[None, :], cost)
        groups, n_groups = group_codes(X, tasks, p["n_clusters"], p["seed"], nested=True)
        folds = stratified_folds(groups, min(p["calib_folds"], n), p["seed"])
        names, codes = encode_tasks(tasks, n)
        if len(folds) >= 2:
            # out-of-fold (similarity, prior, log cost) per cell, and the anchor's estimates
            oof = {key: np.zeros(quality.shape) for key in ("sim", "prior", "lc", "cost",
                                                            "anchor_q", "anchor_c")}
            for f, held in enumerate(folds):
                rest = np.setdiff1d(np.arange(n), held)
                core = self._train_core(X, quality, cost, groups, n_groups, rest, p,
                                        p["seed"] + 1 + f)
                oof["sim"][held], oof["prior"][held], oof["cost"][held] = core.features(X[held])
                oof["lc"][held] = core.scaled_log_cost()[None, :]
                oof["anchor_q"][held], oof["anchor_c"][held] = TaskPrior.fit(
                    X[rest], codes[rest], names, quality[rest], cost[rest],
                    backoff=False).query(X[held])
            obs = ~np.isnan(quality)
            feats = np.column_stack([np.ones(obs.sum()), oof["sim"][obs],
                                     logit(oof["prior"][obs]), oof["lc"][obs]])
            self.calib_ = fit_soft_logistic(feats, quality[obs], l2=p["calib_l2"])
            raw = self._calibrated(oof["sim"], oof["prior"], oof["lc"])
            self.shrink_, self.cost_shrink_, self.shrink_utility_ = pick_anchor(
                self.shrink, self.cost_shrink, oof["anchor_q"], raw, oof["anchor_c"],
                oof["cost"], quality, cost)
        else:
            self.calib_ = np.array([0.0, 0.0, 1.0, 0.0])
            self.shrink_, self.cost_shrink_, self.shrink_utility_ = pick_anchor(
                self.shrink, self.cost_shrink, None, None, None, None, quality, cost)
        self.anchor_ = TaskPrior.fit(X, codes, names, quality, cost)
        self.core_ = self._train_core(X, quality, cost, groups, n_groups, np.arange(n), p,
                                      p["seed"])
        self.n_groups_ = n_groups
        self.n_trained_models_ = quality.shape[1]
        # a fixed probe set (stratified by cluster) on which new models are profiled
        n_parts = int(np.ceil(n / min(p["n_probes"], n)))
        self.probe_indices_ = stratified_folds(groups, n_parts, p["seed"])[0][: p["n_probes"]]
        self.probe_X_ = np.ascontiguousarray(X[self.probe_indices_], dtype=np.float32)

    def _train_core(self, X, quality, cost, groups, n_groups, rows, p, seed) -> _Core:
        Xr, Qr, Cr, Gr = X[rows], quality[rows], cost[rows], groups[rows]
        nb = Neighbourhood(Xr, Gr, n_groups, Qr, Cr, k=p["neighbours"])
        m, K = quality.shape[1], n_groups
        prof_q, prof_c = nb.group_quality.T.copy(), nb.group_cost.T.copy()  # (m, K)
        lc_real = _log_cost(prof_c @ nb.group_freq)
        lc_mean, lc_std = float(lc_real.mean()), float(max(lc_real.std(), 0.05))
        rng = np.random.default_rng(seed)
        with seeded(seed, p["threads"]):
            qtower = ResidualHead(X.shape[1], p["embed_dim"], p["hidden"], p["dropout"])
            mtower = MLPTower(K + 1, p["embed_dim"], p["model_hidden"])
            core = _Core(qtower, mtower, nb, prof_q, prof_c, lc_mean, lc_std, p["index_kind"])
            # foreach: bit-identical updates to the per-tensor loop, fewer op dispatches
            opt = torch.optim.AdamW([*qtower.parameters(), *mtower.parameters()], lr=p["lr"],
                                    weight_decay=p["weight_decay"], foreach=True)
            xt = torch.from_numpy(np.ascontiguousarray(Xr, dtype=np.float32))
            bs = min(p["batch_size"], len(rows))
            V = p["n_virtual"]
            for epoch in range(p["epochs"]):
                beta = p["cost_penalty"] * min(1.0, epoch / max(1.0, 0.5 * p["epochs"]))
                # virtual models: per cluster, copy a random real model; scale its cost
                src = rng.integers(0, m, size=(V, K))
                scale = np.exp(rng.uniform(-p["cost_jitter"], p["cost_jitter"], size=V))
                vq = Qr[np.arange(len(rows))[:, None], src[:, Gr].T]  # (n_rows, V)
                vprof_q = prof_q[src, np.arange(K)[None, :]]
                vprof_c = prof_c[src, np.arange(K)[None, :]] * scale[:, None]
                all_q = np.hstack([Qr, vq])
                desc = core.descriptors(np.vstack([prof_q, vprof_q]),
                                        np.vstack([prof_c, vprof_c]))
                lc = desc[:, -1].astype(np.float64)
                # cost bands over the current pool (plus the whole pool as one more band)
                order = np.argsort(lc, kind="stable")
                band = np.empty(m + V, dtype=np.int64)
                band[order] = np.arange(m + V) * min(p["n_bands"], m + V) // (m + V)
                members = [band == b for b in range(int(band.max()) + 1)]
                members.append(np.ones(m + V, dtype=bool))
                acc = np.nan_to_num(all_q, nan=0.0)
                acc = np.where(acc >= p["accuracy_threshold"], acc, 0.0)
                pref = np.exp(-beta * (lc - lc.min()))
                target_all = torch.from_numpy((acc * pref[None, :]).astype(np.float32))
                observed = torch.from_numpy(~np.isnan(all_q))
                member_t = [torch.from_numpy(mb) for mb in members]
                dt = torch.from_numpy(desc)
                qtower.train()
                mtower.train()
                perm = torch.randperm(len(rows))
                for start in range(0, len(rows), bs):
                    b = perm[start : start + bs]
                    z = qtower(xt[b])
                    g = mtower(dt)
                    logits = z @ g.T / p["temperature"]
                    loss = logits.sum() * 0.0
                    for mb in member_t:
                        member = observed[b] & mb[None, :]
                        loss = loss + soft_target_ce(logits, target_all[b] * member, member)
                    loss = loss / len(member_t)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            qtower.eval()
            mtower.eval()
        core.model_emb = core.embed_models(prof_q, prof_c)
        return core

    # ---- adding a model without retraining -----------------------------------------------
    def add_model(
        self,
        name: str,
        cost: float | Sequence[float] | np.ndarray,
        *,
        quality: Sequence[float] | np.ndarray | None = None,
        X: np.ndarray | None = None,
        descriptor: Sequence[float] | np.ndarray | None = None,
    ) -> int:
        """Add a model to the pool by embedding its descriptor with the frozen model tower.

        Give the model's behaviour one of three ways:

        * ``descriptor``: its mean quality per probe cluster, shape ``(n_groups_,)``;
        * ``quality`` alone: its outcomes (in [0, 1], NaN = missing) on the stored probe
          prompts, in the order of :attr:`probe_indices_` (rows of the training set);
        * ``quality`` with ``X``: its outcomes on any prompts with embeddings ``X``.

        ``cost`` is USD per call: one number, or one per probe cluster. Clusters without
        any outcome get the model's overall mean. Returns the new model's index.
        """
        if not self.is_fitted:
            raise PolicyError("cscr: not fitted (call fit or load an artifact)")
        name = str(name)
        if not name or name in self.models_:
            raise PolicyError(f"cscr: model name {name!r} is empty or already in the pool")
        K = self.n_groups_
        prof_q = self._descriptor(descriptor, quality, X, K)
        cost_arr = np.asarray(cost, dtype=np.float64).reshape(-1)
        if cost_arr.size == 1:
            cost_arr = np.full(K, float(cost_arr[0]))
        if cost_arr.shape != (K,) or not np.isfinite(cost_arr).all() or (cost_arr < 0).any():
            raise PolicyError(f"cscr: cost must be one number >= 0 or {K} of them (one per "
                              f"probe cluster), got {cost!r}")
        self.core_.add(prof_q, cost_arr)
        self.models_.append(name)
        return len(self.models_) - 1

    def _descriptor(self, descriptor, quality, X, K) -> np.ndarray:
        if (descriptor is None) == (quality is None):
            raise PolicyError("cscr: add_model needs exactly one of descriptor= or quality=")
        if descriptor is not None:
            d = np.asarray(descriptor, dtype=np.float64).reshape(-1)
            if d.shape != (K,) or not np.isfinite(d).all() or (d < 0).any() or (d > 1).any():
                raise PolicyError(f"cscr: descriptor must hold {K} qualities in [0, 1] (one "
                                  f"per probe cluster), got shape {d.shape}")
            return d
        q = np.asarray(quality, dtype=np.float64).reshape(-1)
        if X is None:
            if q.shape != (len(self.probe_indices_),):
                raise PolicyError(f"cscr: quality must hold one outcome per probe prompt "
                                  f"({len(self.probe_indices_)}), got {q.shape[0]}")
            X = self.probe_X_
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim_:
            raise PolicyError(f"cscr: X must have shape (n, {self.dim_}), got {X.shape}")
        if not np.isfinite(X).all():
            raise PolicyError("cscr: X contains NaN or infinite values")
        if len(X) != len(q):
            raise PolicyError(f"cscr: {len(q)} outcomes for {len(X)} prompts")
        if np.isinf(q).any() or (q[~np.isnan(q)] < 0).any() or (q[~np.isnan(q)] > 1).any():
            raise PolicyError("cscr: outcomes must lie in [0, 1] (NaN = missing)")
        if np.isnan(q).all():
            raise PolicyError("cscr: no observed outcome for the new model")
        post, _ = self.core_.nb.query(X)
        obs = ~np.isnan(q)
        w = post[obs]  # soft cluster membership of each observed prompt
        counts = w.sum(axis=0)
        overall = float(q[obs].mean())
        with np.errstate(invalid="ignore", divide="ignore"):
            per = (w * q[obs, None]).sum(axis=0) / counts
        # shrink thinly observed clusters toward the model's overall mean
        per = np.where(counts > 0, (per * counts + overall) / (counts + 1.0), overall)
        return np.clip(per, 0.0, 1.0)

    # ---- prediction ---------------------------------------------------------------------
    def _calibrated(self, sims: np.ndarray, prior: np.ndarray, lc: np.ndarray) -> np.ndarray:
        c = self.calib_
        return sigmoid(c[0] + c[1] * sims + c[2] * logit(prior) + c[3] * lc)

    def _predict(self, X, tasks, truth) -> Estimate:
        sims, prior, cost = self.core_.features(X)
        q = self._calibrated(sims, prior, self.core_.scaled_log_cost()[None, :])
        # anchor the trained pool on the inferred task's means; added models have none
        q, cost = self.anchor_.anchor(X, q, cost, self.shrink_, self.cost_shrink_)
        return Estimate(quality=q, cost=cost)

    def group_labels(self, X: np.ndarray) -> np.ndarray:
        """Probe cluster (descriptor column) each prompt embedding is inferred to belong to."""
        if not self.is_fitted:
            raise PolicyError("cscr: not fitted (call fit or load an artifact)")
        X = np.atleast_2d(np.asarray(X, dtype=np.float32))
        if X.shape[1] != self.dim_ or not np.isfinite(X).all():
            raise PolicyError(f"cscr: expected finite embeddings of shape (n, {self.dim_})")
        return self.core_.nb.query(X)[0].argmax(axis=1)

    def model_embeddings(self) -> np.ndarray:
        """(m, embed_dim) unit vectors of the pool, in the order of ``models_``."""
        return self.core_.model_emb.copy()

    # ---- artifacts ----------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        c = self.core_
        arrays = {**module_arrays(c.qtower, "qtower."), **module_arrays(c.mtower, "mtower."),
                  **c.nb.arrays("nb_"), "profile_quality": c.profile_q,
                  "profile_cost": c.profile_c, "calibration": self.calib_,
                  "probe_indices": self.probe_indices_, "probe_X": self.probe_X_,
                  **self.anchor_.arrays()}
        meta = {"n_groups": self.n_groups_, "lc_mean": c.lc_mean, "lc_std": c.lc_std,
                "n_trained_models": self.n_trained_models_, **anchor_meta(self)}
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        p = self._checked()
        try:
            K = int(meta["n_groups"])
            qtower = ResidualHead(self.dim_, p["embed_dim"], p["hidden"], p["dropout"])
            mtower = MLPTower(K + 1, p["embed_dim"], p["model_hidden"])
            load_module_arrays(qtower, arrays, "qtower.")
            load_module_arrays(mtower, arrays, "mtower.")
            qtower.eval()
            mtower.eval()
            nb = Neighbourhood.from_arrays(arrays, "nb_", K, p["neighbours"], 1.0)
            prof_q = np.asarray(arrays["profile_quality"], dtype=np.float64)
            prof_c = np.asarray(arrays["profile_cost"], dtype=np.float64)
            self.calib_ = np.asarray(arrays["calibration"], dtype=np.float64)
            self.probe_indices_ = np.asarray(arrays["probe_indices"], dtype=np.int64)
            self.probe_X_ = np.asarray(arrays["probe_X"], dtype=np.float32)
            core = _Core(qtower, mtower, nb, prof_q, prof_c, float(meta["lc_mean"]),
                         float(meta["lc_std"]), p["index_kind"])
            self.n_trained_models_ = int(meta["n_trained_models"])
            set_anchor_state(self, arrays, meta)
        except KeyError as exc:
            raise ArtifactError(f"cscr artifact lacks {exc}") from None
        if prof_q.shape != (len(self.models_), K) or self.calib_.shape != (4,):
            raise ArtifactError("cscr artifact: model profiles do not match its "
                                f"{len(self.models_)} models")
        self.n_groups_ = K
        self.core_ = core
