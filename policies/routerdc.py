"""RouterDC: a query router trained by dual contrastive learning (Chen et al., NeurIPS 2024).

Model
-----
A trainable query encoder (a residual projection head on top of the *frozen* sentence
embedding) maps a prompt to the unit sphere, where every LLM has one learnable embedding.
The router's score for (query, LLM) is their cosine similarity. Two losses train it:

* sample-LLM contrastive loss: for each query, the ``top_k`` best-scoring LLMs are pulled
  toward the query and the ``last_k`` worst pushed away (InfoNCE over similarity /
  ``temperature``), which stays informative when several LLMs are equally good;
* sample-sample contrastive loss (weight ``sample_weight``): training queries are
  clustered (k-means, ``n_clusters``) and same-cluster queries pulled together, which the
  paper found stabilises training.

Estimates for ``choose``
------------------------
Similarities are not probabilities, so each LLM gets a small logistic calibrator fitted on
*out-of-fold* similarities (``calib_folds``-fold cross-fitting over the training set):
``quality = sigmoid(a + b * similarity + c * logit(group prior))``. The group prior is the
mean quality of that LLM on the query's inferred task (the task labels seen in training,
or k-means clusters when there are none), inferred from the query's nearest training
neighbours, never from a test label. The calibrator thus learns how far to shrink the
per-query signal toward the task mean. Cost is the mean observed cost of the query's
``neighbours`` nearest training prompts, per LLM.

Ensemble
--------
``ensemble="folds"`` (default) routes with the mean similarity of the cross-fitting
networks, the very networks whose out-of-fold similarities the calibrators were fitted on
(no extra training run); ``"final"`` trains one more network on all rows and uses it alone;
``"all"`` averages both. On the RouterBench subset the three were within noise.

Encoder fine-tuning (``finetune=True``, the published method; off by default)
-----------------------------------------------------------------------------
The paper fine-tunes the text encoder itself together with the LLM embeddings. With
``finetune=True`` the policy does so (:mod:`policies._finetune`): the sentence-transformers
model ``encoder`` (MiniLM by default, any model by name or path) reads the prompt texts
(``fit(..., texts=...)``, which ``fit_dataset`` and the CLI pass) through ``text_view``, cut
at ``max_seq_length`` tokens; its top ``train_layers`` layers and the LLM embeddings train
with both losses for ``finetune_epochs`` (clusters: k-means on the frozen embeddings ``X``
given to ``fit``, as the paper). The score of (query, LLM) is then the cosine of the
fine-tuned query embedding with the LLM's embedding: no head. The encoder trains on a
``1 - holdout`` share of the training rows (stratified by task); the calibrators and the
anchor's shrinkage are fitted on the held-out rest, which the encoder never saw.

A fine-tuned policy embeds with its own encoder: :meth:`RouterDCPolicy.own_encoder` gives
its config, the artifact stores the model under ``encoder/`` and records it as the
artifact's encoder, so ``router serve`` / ``route`` / ``eval`` embed queries with it
(:mod:`router.encoding.select`: ONNX int8 where validated at save time, else ONNX fp32).
``predict`` therefore expects embeddings *from the fine-tuned encoder*. ``finetune=False``
(the default) keeps the frozen-encoder router (a head on the frozen sentence embedding,
trained in seconds): measured, the fine-tuned encoder gains no within-task signal on
either shared dataset and ties the frozen router (eval/README.md, "RouterDC with a
fine-tuned encoder").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies._anchor import (
    TaskPrior,
    anchor_meta,
    check_shrink,
    pick_anchor,
    set_anchor_state,
)
from policies._contrastive import (
    Neighbourhood,
    ResidualHead,
    check_positive,
    embed,
    fit_soft_logistic,
    group_codes,
    kmeans_labels,
    load_module_arrays,
    logit,
    module_arrays,
    sample_llm_loss,
    seeded,
    sigmoid,
    stratified_folds,
    supcon_loss,
)
from policies._priors import encode_tasks
from policies._routerdc_encoder import FinetunedEncoder
from policies.base import ArtifactError, Estimate, Policy, PolicyError, TrainData

ENSEMBLES = ("folds", "final", "all")
INT8_CHECK_TEXTS = 128  # training prompts the saved encoder's int8 export is measured on


class _Net:
    """One trained RouterDC network: the query head and the LLM embeddings."""

    def __init__(self, head: ResidualHead | None, llm: np.ndarray) -> None:
        self.head = head
        self.llm = llm  # (m, e) unit rows

    def similarities(self, X: np.ndarray) -> np.ndarray:
        Z = X if self.head is None else embed(self.head, X)  # no head: a fine-tuned encoder
        return (Z @ self.llm.T).astype(np.float64)


class RouterDCPolicy(FinetunedEncoder, Policy):
    """Dual-contrastive router with calibrated per-LLM quality estimates (see module doc).

    Parameters
    ----------
    embed_dim, hidden, dropout: the query head (output size, MLP width, dropout).
    temperature: similarity temperature of the sample-LLM loss.
    top_k, last_k: positives / negatives per query (capped at half the pool).
    sample_weight: weight of the sample-sample loss (0 turns it off).
    cluster_temperature, n_clusters: its temperature and the k-means clusters it uses; the
        clusters are also the groups of the prior when ``fit`` gets no task labels.
    epochs, batch_size, lr, weight_decay: AdamW training of each network.
    neighbours: k of the k-NN group vote and of the cost estimate.
    calib_folds, calib_l2: cross-fitting folds and ridge strength of the calibrators.
    ensemble: ``"folds"`` | ``"final"`` | ``"all"`` (see module doc).
    seed: seeds k-means, folds, initialisation and batches (deterministic on CPU).
    threads: torch threads while fitting (default 1: these small networks train fastest on
        one thread, more threads mostly wait on each other, badly so on a busy machine;
        None leaves torch's setting alone).
    finetune: fine-tune the encoder on the prompt texts (module doc); False = frozen encoder
        with a head (``embed_dim``, ``hidden``, ``dropout``, ``epochs``, ``batch_size``,
        ``lr``, ``weight_decay``, ``calib_folds``, ``ensemble`` apply to that mode only).
    encoder, text_view, max_seq_length: the sentence-transformers model to fine-tune, the
        prompt view it reads (:mod:`router.textview`) and its token limit.
    train_layers: top transformer layers that train (0: the whole model).
    finetune_epochs, finetune_batch_size, finetune_lr, llm_lr: the fine-tuning run (AdamW,
        linear warm-up and decay; ``llm_lr`` for the new LLM embeddings).
    holdout: share of the training rows kept out of fine-tuning for the calibrators.
    device: where fine-tuning runs (None: CUDA when present, else CPU).
    encoder_threads: torch threads while fine-tuning on CPU (None: the caller's setting,
        e.g. ``router train --threads``).
    shrink, cost_shrink: how far the calibrated quality / the neighbours' cost move from the
        inferred task's train means (0 = task means, 1 = raw; :mod:`policies._anchor`), or
        ``"auto"``: picked on the out-of-fold estimates (utility with the one-SE rule for
        quality, squared error for cost).
    """

    name = "routerdc"
    #: 2: task anchor (anchor_* arrays, shrink / cost_shrink); 3: fine-tuned encoder mode
    artifact_version = 3

    def __init__(
        self,
        embed_dim: int = 128,
        hidden: int = 256,
        dropout: float = 0.1,
        temperature: float = 0.1,
        top_k: int = 3,
        last_k: int = 3,
        sample_weight: float = 1.0,
        cluster_temperature: float = 0.2,
        n_clusters: int = 8,
        epochs: int = 40,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        neighbours: int = 10,
        calib_folds: int = 3,
        calib_l2: float = 1.0,
        seed: int = 0,
        ensemble: str = "folds",
        threads: int | None = 1,
        shrink: float | str = "auto",
        cost_shrink: float | str = "auto",
        finetune: bool = False,
        encoder: str = "all-MiniLM-L6-v2",
        text_view: str = "question",
        max_seq_length: int = 128,
        train_layers: int = 2,
        finetune_epochs: int = 3,
        finetune_batch_size: int = 32,
        finetune_lr: float = 5e-5,
        llm_lr: float = 1e-2,
        holdout: float = 0.25,
        device: str | None = None,
        encoder_threads: int | None = None,
    ) -> None:
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.dropout = dropout
        self.temperature = temperature
        self.top_k = top_k
        self.last_k = last_k
        self.sample_weight = sample_weight
        self.cluster_temperature = cluster_temperature
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.neighbours = neighbours
        self.calib_folds = calib_folds
        self.calib_l2 = calib_l2
        self.seed = seed
        self.ensemble = ensemble
        self.threads = threads
        self.finetune = finetune
        self.encoder = encoder
        self.text_view = text_view
        self.max_seq_length = max_seq_length
        self.train_layers = train_layers
        self.finetune_epochs = finetune_epochs
        self.finetune_batch_size = finetune_batch_size
        self.finetune_lr = finetune_lr
        self.llm_lr = llm_lr
        self.holdout = holdout
        self.device = device
        self.encoder_threads = encoder_threads
        self.shrink = shrink
        self.cost_shrink = cost_shrink

    # ---- parameters ---------------------------------------------------------------------
    def _checked(self) -> dict[str, Any]:
        n = self.name
        p = {
            "embed_dim": check_positive("embed_dim", n, self.embed_dim, integer=True),
            "hidden": check_positive("hidden", n, self.hidden, integer=True),
            "temperature": check_positive("temperature", n, self.temperature),
            "top_k": check_positive("top_k", n, self.top_k, integer=True),
            "last_k": check_positive("last_k", n, self.last_k, integer=True),
            "cluster_temperature": check_positive("cluster_temperature", n,
                                                  self.cluster_temperature),
            "n_clusters": check_positive("n_clusters", n, self.n_clusters, integer=True),
            "epochs": check_positive("epochs", n, self.epochs, integer=True),
            "batch_size": check_positive("batch_size", n, self.batch_size, integer=True),
            "lr": check_positive("lr", n, self.lr),
            "neighbours": check_positive("neighbours", n, self.neighbours, integer=True),
            "calib_l2": check_positive("calib_l2", n, self.calib_l2, allow_zero=True),
            "sample_weight": check_positive("sample_weight", n, self.sample_weight,
                                            allow_zero=True),
            "weight_decay": check_positive("weight_decay", n, self.weight_decay,
                                           allow_zero=True),
            "calib_folds": check_positive("calib_folds", n, self.calib_folds, integer=True),
        }
        dropout = float(self.dropout)
        if not 0 <= dropout < 1:
            raise PolicyError(f"{n}: dropout must be in [0, 1), got {self.dropout!r}")
        p["dropout"] = dropout
        if p["calib_folds"] < 2:
            raise PolicyError(f"{n}: calib_folds must be >= 2, got {self.calib_folds!r}")
        if self.threads is not None:
            p["threads"] = check_positive("threads", n, self.threads, integer=True)
        else:
            p["threads"] = None
        if self.ensemble not in ENSEMBLES:
            raise PolicyError(f"{n}: ensemble must be one of {list(ENSEMBLES)}, got "
                              f"{self.ensemble!r}")
        p["ensemble"] = self.ensemble
        p["seed"] = int(self.seed)
        check_shrink(n, "shrink", self.shrink)
        check_shrink(n, "cost_shrink", self.cost_shrink)
        if not isinstance(self.finetune, bool):
            raise PolicyError(f"{n}: finetune must be true or false, got {self.finetune!r}")
        p["finetune"] = self.finetune
        if self.finetune:
            p.update(self._checked_finetune())
        return p

    # ---- training -----------------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        X, quality, cost, tasks = data.X, data.quality, data.cost, data.tasks
        p = self._checked()
        self._drop_finetuned()
        if p["finetune"]:
            self._fit_finetuned(data, p)
            return
        n, m = quality.shape
        groups, n_groups = group_codes(X, tasks, p["n_clusters"], p["seed"])
        clusters, _ = kmeans_labels(X, p["n_clusters"], p["seed"])
        folds = stratified_folds(groups, min(p["calib_folds"], n), p["seed"])
        nets: list[_Net] = []
        names, codes = encode_tasks(tasks, n)
        if len(folds) >= 2:
            sims, priors = np.zeros(quality.shape), np.zeros(quality.shape)
            anchor_q, anchor_c, local_c = (np.zeros(quality.shape) for _ in range(3))
            for f, held in enumerate(folds):
                rest = np.setdiff1d(np.arange(n), held)
                net = self._train_net(X[rest], quality[rest], clusters[rest], p,
                                      p["seed"] + 1 + f)
                nb = Neighbourhood(X[rest], groups[rest], n_groups, quality[rest], cost[rest],
                                   k=p["neighbours"])
                sims[held] = net.similarities(X[held])
                post, local_c[held] = nb.query(X[held])
                priors[held] = post @ nb.group_quality
                anchor_q[held], anchor_c[held] = TaskPrior.fit(
                    X[rest], codes[rest], names, quality[rest], cost[rest],
                    backoff=False).query(X[held])
                nets.append(net)
            self.calib_ = self._calibrate(sims, priors, quality, p["calib_l2"])
            raw = self._calibrated(sims, priors)
            self._pick_shrink(anchor_q, raw, anchor_c, local_c, quality, cost)
        else:  # a single training row: no held-out data, trust the prior
            self.calib_ = np.tile(np.array([0.0, 0.0, 1.0]), (m, 1))
            self._pick_shrink(None, None, None, None, quality, cost)
        if p["ensemble"] != "folds" or not nets:
            final = self._train_net(X, quality, clusters, p, p["seed"])
            nets = [final] if p["ensemble"] == "final" or not nets else [*nets, final]
        self.nets_ = nets
        self.nb_ = Neighbourhood(X, groups, n_groups, quality, cost, k=p["neighbours"])
        self.n_groups_ = n_groups
        self.anchor_ = TaskPrior.fit(X, codes, names, quality, cost)

    def _fit_finetuned(self, data: TrainData, p: dict[str, Any]) -> None:
        """RouterDC as published: fine-tune the encoder (module doc, "Encoder fine-tuning")."""
        from policies._finetune import FinetuneSettings, finetune
        from router.textview import parse_view

        if data.texts is None:
            raise PolicyError(
                "routerdc: finetune=True fine-tunes the encoder on the prompt texts, but fit got "
                "none; pass texts=... (fit_dataset and the CLI do), or set finetune=False for "
                "the frozen-encoder router")
        X, quality, cost, tasks = data.X, data.quality, data.cost, data.tasks
        n, m = quality.shape
        groups, n_groups = group_codes(X, tasks, p["n_clusters"], p["seed"])
        clusters, _ = kmeans_labels(X, p["n_clusters"], p["seed"])  # frozen embeddings
        names, codes = encode_tasks(tasks, n)
        parts = max(2, int(round(1.0 / p["holdout"])))
        folds = stratified_folds(groups, min(parts, n), p["seed"]) if n >= 4 else []
        held = folds[0] if len(folds) >= 2 else np.zeros(0, dtype=np.int64)
        rest = np.setdiff1d(np.arange(n), held)
        view = parse_view(self.text_view)
        settings = FinetuneSettings(
            model=self.encoder, text_view=view.spec, max_seq_length=p["max_seq_length"],
            train_layers=p["train_layers"], epochs=p["finetune_epochs"],
            batch_size=p["finetune_batch_size"], lr=p["finetune_lr"], llm_lr=p["llm_lr"],
            temperature=p["temperature"], top_k=p["top_k"], last_k=p["last_k"],
            sample_weight=p["sample_weight"], cluster_temperature=p["cluster_temperature"],
            device=self.device, threads=self.encoder_threads, seed=p["seed"])
        result = finetune([view(t) for t in data.texts], quality, clusters, settings, rows=rest)
        Z, llm = result.Z, result.llm
        if len(held):
            sims = Z[held] @ llm.T / p["temperature"]  # the logit scale it trained at
            nb = Neighbourhood(Z[rest], groups[rest], n_groups, quality[rest], cost[rest],
                               k=p["neighbours"])
            post, local_c = nb.query(Z[held])
            priors = post @ nb.group_quality
            anchor_q, anchor_c = TaskPrior.fit(Z[rest], codes[rest], names, quality[rest],
                                               cost[rest], backoff=False).query(Z[held])
            self.calib_ = self._calibrate(sims, priors, quality[held], p["calib_l2"])
            self._pick_shrink(anchor_q, self._calibrated(sims, priors), anchor_c, local_c,
                              quality[held], cost[held])
        else:  # too few rows to hold any out: trust the prior
            self.calib_ = np.tile(np.array([0.0, 0.0, 1.0]), (m, 1))
            self._pick_shrink(None, None, None, None, quality, cost)
        self.dim_ = int(Z.shape[1])
        self.nets_ = [_Net(None, llm.astype(np.float32))]
        self.nb_ = Neighbourhood(Z, groups, n_groups, quality, cost, k=p["neighbours"])
        self.n_groups_ = n_groups
        self.anchor_ = TaskPrior.fit(Z, codes, names, quality, cost)
        self._set_encoder_dir_from(result)
        self.finetune_info_ = {**result.info, "holdout_rows": int(len(held))}
        pick_rows = np.random.default_rng(p["seed"]).permutation(n)[:INT8_CHECK_TEXTS]
        self._check_texts = [data.texts[i] for i in sorted(pick_rows)]

    def _pick_shrink(self, prior_q, raw_q, prior_c, raw_c, quality, cost) -> None:
        """Anchor shrinkage (quality, cost) from the out-of-fold estimates, or as given."""
        self.shrink_, self.cost_shrink_, self.shrink_utility_ = pick_anchor(
            self.shrink, self.cost_shrink, prior_q, raw_q, prior_c, raw_c, quality, cost)

    def _train_net(self, X, quality, clusters, p, seed) -> _Net:
        m = quality.shape[1]
        top_k = min(p["top_k"], max(1, m // 2))
        last_k = min(p["last_k"], max(1, m - top_k))
        with seeded(seed, p["threads"]):
            head = ResidualHead(X.shape[1], p["embed_dim"], p["hidden"], p["dropout"])
            llm = nn.Parameter(F.normalize(torch.randn(m, p["embed_dim"]), dim=-1))
            # foreach: bit-identical updates to the per-tensor loop, fewer op dispatches
            opt = torch.optim.AdamW([*head.parameters(), llm], lr=p["lr"],
                                    weight_decay=p["weight_decay"], foreach=True)
            xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
            observed = torch.from_numpy(~np.isnan(quality))
            qt = torch.from_numpy(np.nan_to_num(quality, nan=0.0).astype(np.float32))
            labels = torch.from_numpy(clusters)
            n = len(X)
            bs = min(p["batch_size"], n)
            head.train()
            for _ in range(p["epochs"]):
                perm = torch.randperm(n)
                for start in range(0, n, bs):
                    b = perm[start : start + bs]
                    z = head(xt[b])
                    logits = z @ F.normalize(llm, dim=-1).T / p["temperature"]
                    noise = torch.rand(len(b), m) * 1e-3
                    loss = sample_llm_loss(logits, qt[b], observed[b], top_k, last_k, noise)
                    if p["sample_weight"] > 0:
                        loss = loss + p["sample_weight"] * supcon_loss(
                            z, labels[b], p["cluster_temperature"])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            head.eval()
            llm_np = F.normalize(llm.detach(), dim=-1).numpy().astype(np.float32)
        return _Net(head, llm_np)

    @staticmethod
    def _calibrate(sims, priors, quality, l2) -> np.ndarray:
        """Per-LLM soft logistic map from (similarity, logit group prior) to quality: (m, 3).

        (A map per (task, LLM) was tried too: it routed worse on both shared datasets.)
        """
        m = quality.shape[1]
        coef = np.zeros((m, 3))
        for j in range(m):
            obs = ~np.isnan(quality[:, j])
            feats = np.column_stack([np.ones(obs.sum()), sims[obs, j], logit(priors[obs, j])])
            coef[j] = fit_soft_logistic(feats, quality[obs, j], l2=l2)
        return coef

    # ---- prediction ---------------------------------------------------------------------
    def similarities(self, X: np.ndarray) -> np.ndarray:
        """Query-LLM cosine similarities (n, m), averaged over the ensemble's networks."""
        if not self.is_fitted:
            raise PolicyError(f"{self.name}: not fitted (call fit or load an artifact)")
        X = np.atleast_2d(np.asarray(X, dtype=np.float32))
        if X.shape[1] != self.dim_ or not np.isfinite(X).all():
            raise PolicyError(f"{self.name}: expected finite embeddings of shape (n, {self.dim_})")
        return np.mean([net.similarities(X) for net in self.nets_], axis=0)

    def _calibration_input(self, X: np.ndarray) -> np.ndarray:
        """Similarities as the calibrators read them: cosines for the frozen mode, cosines /
        temperature (the scale of the training logits) for the fine-tuned encoder, whose
        cosines span a narrow range the calibrators' ridge would otherwise flatten."""
        sims = self.similarities(X)
        return sims / float(self.temperature) if self.finetune else sims

    def _calibrated(self, sims: np.ndarray, priors: np.ndarray) -> np.ndarray:
        c = self.calib_
        return sigmoid(c[None, :, 0] + c[None, :, 1] * sims + c[None, :, 2] * logit(priors))

    def _predict(self, X, tasks, truth) -> Estimate:
        sims = self._calibration_input(X)
        post, cost = self.nb_.query(X)
        q = self._calibrated(sims, post @ self.nb_.group_quality)
        q, cost = self.anchor_.anchor(X, q, cost, self.shrink_, self.cost_shrink_)
        return Estimate(quality=q, cost=cost)

    # ---- artifacts ----------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        for i, net in enumerate(self.nets_):
            if net.head is not None:
                arrays.update(module_arrays(net.head, f"net{i}.head."))
            arrays[f"net{i}.llm"] = net.llm
        arrays["calibration"] = self.calib_
        arrays.update(self.nb_.arrays("nb_"))
        arrays.update(self.anchor_.arrays())
        meta: dict[str, Any] = {"n_groups": self.n_groups_, "n_nets": len(self.nets_),
                                **anchor_meta(self)}
        if getattr(self, "finetune_info_", None) is not None:
            meta["finetune"] = self.finetune_info_
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        p = self._checked()
        m = len(self.models_)
        try:
            self.n_groups_ = int(meta["n_groups"])
            nets = []
            for i in range(int(meta["n_nets"])):
                head = None
                if not p["finetune"]:
                    head = ResidualHead(self.dim_, p["embed_dim"], p["hidden"], p["dropout"])
                    load_module_arrays(head, arrays, f"net{i}.head.")
                    head.eval()
                llm = np.asarray(arrays[f"net{i}.llm"], dtype=np.float32)
                width = self.dim_ if p["finetune"] else p["embed_dim"]
                if llm.shape != (m, width):
                    raise ArtifactError(f"routerdc artifact: LLM embeddings of shape {llm.shape} "
                                        f"do not match its {m} models")
                nets.append(_Net(head, llm))
            self.nb_ = Neighbourhood.from_arrays(arrays, "nb_", self.n_groups_, p["neighbours"],
                                                 1.0)
            self.calib_ = np.asarray(arrays["calibration"], dtype=np.float64)
            set_anchor_state(self, arrays, meta)
        except KeyError as exc:
            raise ArtifactError(f"routerdc artifact lacks {exc}") from None
        if self.calib_.shape != (m, 3) or not nets:
            raise ArtifactError(f"routerdc artifact: calibration does not match its {m} models")
        self.nets_ = nets
        if p["finetune"]:
            self.finetune_info_ = dict(meta.get("finetune") or {})
