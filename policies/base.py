"""The one interface every routing policy implements.

A policy is fitted on prompt embeddings ``X`` (n, d), a quality matrix (n, m) in [0, 1]
with NaN for missing cells, and a cost matrix (n, m) in USD per call. For a batch of
query embeddings it *estimates* per-model quality and cost (:meth:`Policy.predict`);
turning estimates into a choice is shared code (:func:`choose`), so every policy trades
quality against cost the same way:

* ``lam`` (>= 0, the price of cost): pick ``argmax quality - lam * cost``;
* ``budget`` (USD per query): pick the best estimated quality among models whose
  estimated cost fits the budget, or the cheapest model when none fits.

Ties go to the cheaper model. Online policies also implement :meth:`Policy.update`
(river's ``learn_one`` after ``predict_one``). Artifacts are a directory holding
``config.json`` (policy name, artifact version, parameters, models, metadata) and
``arrays.npz`` (numpy arrays only, loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

if TYPE_CHECKING:
    from router.dataset import RoutingDataset

ARTIFACT_FORMAT = 1


class PolicyError(ValueError):
    """Bad input to a policy (shapes, NaN, unknown model, negative lam, ...)."""


class ArtifactError(PolicyError):
    """An artifact directory that is missing, malformed or of another version."""


@dataclass(frozen=True)
class TrainData:
    """Everything a policy may learn from, validated by :meth:`Policy.fit`.

    ``texts`` are the raw prompts ``X`` was embedded from (an encoder applies its own text
    view to them) and ``responses`` the recorded answers, (n, m) with None where absent; either is None when
    the caller has none. Policies that need one declare it in ``Policy.requires``.
    """

    X: np.ndarray  # (n, d) float32 embeddings
    quality: np.ndarray  # (n, m) in [0, 1], NaN = missing
    cost: np.ndarray  # (n, m) USD per call
    models: list[str]
    tasks: list[str] | None = None
    texts: list[str] | None = None
    responses: list[list[str | None]] | None = None


@dataclass
class Estimate:
    """Per-query, per-model estimated quality and cost, both (n, m)."""

    quality: np.ndarray
    cost: np.ndarray


@dataclass
class RouteDecision:
    """One query's choice, with what the policy believed about every model."""

    model: str
    index: int
    quality: float
    cost: float
    runner_up: str | None
    scores: dict[str, float]


def check_lam(lam: float) -> float:
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise PolicyError(f"lam must be a finite number >= 0, got {lam!r}")
    return lam


def check_budget(budget: float | None) -> float | None:
    if budget is None:
        return None
    budget = float(budget)
    if not math.isfinite(budget) or budget < 0:
        raise PolicyError(f"budget must be a finite number >= 0, got {budget!r}")
    return budget


def choose(
    quality: np.ndarray,
    cost: np.ndarray,
    lam: float = 0.0,
    budget: float | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Index of the chosen model per row of (n, m) estimates.

    ``allowed`` is an optional boolean (m,) or (n, m) mask of candidate models (for
    example backends on cooldown are excluded); rows with no allowed model raise.
    """
    lam = check_lam(lam)
    budget = check_budget(budget)
    quality = np.atleast_2d(np.asarray(quality, dtype=np.float64))
    cost = np.atleast_2d(np.asarray(cost, dtype=np.float64))
    if quality.shape != cost.shape:
        raise PolicyError(f"quality {quality.shape} and cost {cost.shape} differ in shape")
    ok = np.ones(quality.shape, dtype=bool)
    if allowed is not None:
        ok &= np.broadcast_to(np.asarray(allowed, dtype=bool), quality.shape)
        if not ok.any(axis=1).all():
            raise PolicyError("no candidate model is allowed for some query")
    score = quality - lam * cost
    if budget is not None:
        fits = ok & (cost <= budget)
        # rows where nothing fits fall back to the cheapest allowed model
        none_fit = ~fits.any(axis=1)
        ok = np.where(none_fit[:, None], ok, fits)
        cheap_score = -np.where(ok, cost, np.inf)
        score = np.where(none_fit[:, None], cheap_score, score)
    return best_cheapest(np.where(ok, score, -np.inf), cost)


def best_cheapest(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Index of the highest ``score`` along the last axis, ties (within relative 1e-12)
    going to the lowest ``cost``; ``cost`` broadcasts against ``score``."""
    best = score.max(axis=-1, keepdims=True)
    tied = score >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    return np.where(tied, cost, np.inf).argmin(axis=-1)


class Policy:
    """Base class: subclasses set ``name`` and implement ``_fit`` and ``_predict``.

    Subclasses that keep learned arrays implement ``_get_state`` / ``_set_state``
    (numpy arrays plus JSON-able metadata), which :meth:`save` and :meth:`load` use.
    """

    name: ClassVar[str] = "base"
    artifact_version: ClassVar[int] = 1
    online: ClassVar[bool] = False
    #: policies that need the true test outcomes (the oracle) are evaluation-only
    evaluation_only: ClassVar[bool] = False
    #: optional parts of :class:`TrainData` this policy cannot fit without
    #: (``"texts"``, ``"responses"``, ``"tasks"``)
    requires: ClassVar[frozenset[str]] = frozenset()
    #: policies that can start a model with no observed train quality (an online arm
    #: added for learning; linucb) accept all-NaN quality columns, as long as one is observed
    cold_arms: ClassVar[bool] = False

    models_: list[str]
    dim_: int
    meta_: dict[str, Any]

    # ---- scikit-learn style parameters -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        names = set(self._param_names())
        for key, value in params.items():
            if key not in names:
                raise PolicyError(f"{self.name}: unknown parameter {key!r}; known: {sorted(names)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---- fitting and prediction ---------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "models_")

    def fit(
        self,
        X: np.ndarray,
        quality: np.ndarray,
        cost: np.ndarray,
        models: Sequence[str],
        tasks: Sequence[str] | None = None,
        *,
        texts: Sequence[str] | None = None,
        responses: Sequence[Sequence[str | None]] | None = None,
    ) -> Self:
        """Learn from embeddings X (n, d), quality (n, m, NaN = missing) and cost (n, m).

        ``texts`` (the raw prompts X was embedded from) and ``responses`` (recorded answers,
        (n, m)) are optional unless the policy's ``requires`` names them.
        """
        X = _check_matrix(X, "embeddings")
        n = X.shape[0]
        if n == 0:
            raise PolicyError(f"{self.name}: cannot fit on an empty dataset")
        models = [str(m) for m in models]
        if not models:
            raise PolicyError(f"{self.name}: no models to route between")
        quality = np.asarray(quality, dtype=np.float64)
        cost = np.asarray(cost, dtype=np.float64)
        for arr, what in ((quality, "quality"), (cost, "cost")):
            if arr.shape != (n, len(models)):
                raise PolicyError(
                    f"{self.name}: {what} has shape {arr.shape}, expected {(n, len(models))}"
                )
            if np.isinf(arr).any():
                raise PolicyError(f"{self.name}: {what} contains infinite values")
        unobserved = np.isnan(quality).all(axis=0)
        if unobserved.any() and (not self.cold_arms or unobserved.all()):
            empty = [m for m, e in zip(models, unobserved, strict=True) if e]
            raise PolicyError(f"{self.name}: no observed quality for models {empty}")
        if tasks is not None and len(tasks) != n:
            raise PolicyError(f"{self.name}: {len(tasks)} task labels for {n} prompts")
        if texts is not None and len(texts) != n:
            raise PolicyError(f"{self.name}: {len(texts)} texts for {n} prompts")
        if responses is not None and (
                len(responses) != n or any(len(row) != len(models) for row in responses)):
            raise PolicyError(f"{self.name}: responses must be (n, m) = {(n, len(models))}")
        given = {"tasks": tasks, "texts": texts, "responses": responses}
        missing = sorted(k for k in self.requires if given.get(k) is None)
        if missing:
            raise PolicyError(f"{self.name}: fitting needs {', '.join(missing)} "
                              f"(pass {', '.join(m + '=' for m in missing)} to fit)")
        self.models_ = models
        self.dim_ = X.shape[1]
        self.meta_ = getattr(self, "meta_", {})
        self._fit(TrainData(
            X=X, quality=quality, cost=cost, models=models,
            tasks=None if tasks is None else [str(t) for t in tasks],
            texts=None if texts is None else [str(t) for t in texts],
            responses=None if responses is None else [list(r) for r in responses],
        ))
        return self

    def fit_dataset(self, data: RoutingDataset, X: np.ndarray) -> Self:
        """Fit on a :class:`~router.dataset.RoutingDataset` and its embeddings ``X``.

        Missing quality stays NaN (dropped), missing cost becomes the model's mean; the
        dataset's prompts and recorded responses go along as ``texts`` and ``responses``.
        """
        _, cost = data.eval_matrices()
        return self.fit(X, data.quality, cost, data.models, tasks=data.tasks,
                        texts=data.prompts, responses=data.responses)

    def predict(
        self,
        X: np.ndarray,
        tasks: Sequence[str] | None = None,
        truth: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Estimate:
        """Estimated quality and cost (n, m) for query embeddings X (n, d).

        ``tasks`` are optional task labels (used by task-aware baselines); ``truth`` is
        the (quality, cost) of the queries, given only to evaluation-only policies.
        """
        if not self.is_fitted:
            raise PolicyError(f"{self.name}: not fitted (call fit or load an artifact)")
        X = _check_matrix(X, "query embeddings")
        if X.shape[1] != self.dim_:
            raise PolicyError(
                f"{self.name}: embeddings have dimension {X.shape[1]}, the policy was "
                f"trained on dimension {self.dim_} (was another encoder used?)"
            )
        if tasks is not None and len(tasks) != X.shape[0]:
            raise PolicyError(f"{self.name}: {len(tasks)} task labels for {X.shape[0]} queries")
        if self.evaluation_only and truth is None:
            raise PolicyError(f"{self.name} is evaluation-only: it needs the true outcomes")
        est = self._predict(X, None if tasks is None else [str(t) for t in tasks], truth)
        return Estimate(
            quality=np.asarray(est.quality, dtype=np.float64),
            cost=np.asarray(est.cost, dtype=np.float64),
        )

    def route(
        self,
        X: np.ndarray,
        lam: float = 0.0,
        budget: float | None = None,
        tasks: Sequence[str] | None = None,
        truth: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Chosen model index per query."""
        est = self.predict(X, tasks=tasks, truth=truth)
        return choose(est.quality, est.cost, lam=lam, budget=budget)

    def route_one(
        self, x: np.ndarray, lam: float = 0.0, budget: float | None = None
    ) -> RouteDecision:
        """Choose for a single query embedding, with the runner-up and all scores."""
        est = self.predict(np.atleast_2d(x))
        return decision_from_estimate(est, self.models_, lam=lam, budget=budget)

    # ---- online learning ----------------------------------------------------------------
    def update(self, x: np.ndarray, model: str | int, reward: float, cost: float) -> None:
        """Learn from one observed outcome (bandit feedback). Online policies only."""
        raise PolicyError(f"{self.name} does not learn online")

    def model_index(self, model: str | int) -> int:
        if isinstance(model, int | np.integer):
            if not 0 <= int(model) < len(self.models_):
                raise PolicyError(f"model index {model} out of range")
            return int(model)
        try:
            return self.models_.index(str(model))
        except ValueError:
            raise PolicyError(f"unknown model {model!r}; known: {self.models_}") from None

    # ---- subclass hooks -----------------------------------------------------------------
    def _fit(self, data: TrainData) -> None:
        raise NotImplementedError

    def _predict(
        self,
        X: np.ndarray,
        tasks: list[str] | None,
        truth: tuple[np.ndarray, np.ndarray] | None,
    ) -> Estimate:
        raise NotImplementedError

    def _get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Learned arrays and JSON-able metadata to save."""
        return {}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore what :meth:`_get_state` returned."""

    def own_encoder(self) -> dict[str, Any] | None:
        """The config (as ``Encoder.config()``) of the encoder this policy embeds with when it
        brought its own (e.g. fine-tuned it while fitting): ``predict`` then expects that
        encoder's embeddings and callers must embed queries with it. None: the caller's."""
        return None

    def _save_files(self, path: Path) -> None:
        """Write files of the artifact other than arrays.npz (before it and config.json)."""

    def _load_files(self, path: Path) -> None:
        """Read what :meth:`_save_files` wrote (called before :meth:`_set_state`)."""

    # ---- artifacts ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Path:
        """Write the artifact directory atomically (config.json + arrays.npz)."""
        if not self.is_fitted:
            raise PolicyError(f"{self.name}: cannot save an unfitted policy")
        from router import __version__

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays, state_meta = self._get_state()
        config = {
            "format": ARTIFACT_FORMAT,
            "policy": self.name,
            "artifact_version": self.artifact_version,
            "costroute_version": __version__,
            "params": _jsonable(self.get_params()),
            "models": self.models_,
            "dim": self.dim_,
            "state": _jsonable(state_meta),
            "meta": _jsonable({**getattr(self, "meta_", {}), **(meta or {})}),
        }
        self._save_files(path)
        _atomic_write(path / "arrays.npz", lambda f: np.savez(f, **arrays))
        _atomic_write(
            path / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode())
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Load any policy's artifact (dispatching on its ``policy`` field)."""
        from policies import get_policy_class

        path = Path(path)
        config = read_artifact_config(path)
        klass = get_policy_class(config["policy"])
        if cls is not Policy and not issubclass(klass, cls):
            raise ArtifactError(f"{path}: holds a {config['policy']} policy, not {cls.name}")
        if config.get("artifact_version") != klass.artifact_version:
            raise ArtifactError(
                f"{path}: artifact version {config.get('artifact_version')} of policy "
                f"{config['policy']!r} does not match this costroute's version "
                f"{klass.artifact_version}; retrain with `router train`"
            )
        try:
            policy = klass(**config["params"])
        except TypeError as exc:
            raise ArtifactError(f"{path}: parameters do not fit {klass.__name__}: {exc}") from exc
        try:
            with np.load(path / "arrays.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path / 'arrays.npz'}: unreadable ({exc})") from exc
        policy.models_ = list(config["models"])
        policy.dim_ = int(config["dim"])
        policy.meta_ = dict(config.get("meta", {}))
        policy._load_files(path)
        policy._set_state(arrays, dict(config.get("state", {})))
        return policy


def read_artifact_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ArtifactError(f"{path}: not a policy artifact (no config.json)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{cfg_path}: invalid JSON ({exc})") from exc
    for key in ("format", "policy", "artifact_version", "params", "models", "dim"):
        if key not in config:
            raise ArtifactError(f"{cfg_path}: missing key {key!r}")
    if config["format"] != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{cfg_path}: artifact format {config['format']} is not {ARTIFACT_FORMAT}"
        )
    return config


def decision_from_estimate(
    est: Estimate, models: Sequence[str], lam: float = 0.0, budget: float | None = None,
    allowed: np.ndarray | None = None,
) -> RouteDecision:
    """Single-query decision with runner-up, from a (1, m) estimate."""
    from policies._choose_one import choose_one, runner_up

    q = np.asarray(est.quality, dtype=np.float64)[0]
    c = np.asarray(est.cost, dtype=np.float64)[0]
    idx = choose_one(q, c, lam=lam, budget=budget, allowed=allowed)
    score = q - check_lam(lam) * c
    runner = runner_up(score, idx, allowed)
    return RouteDecision(
        model=models[idx],
        index=idx,
        quality=float(q[idx]),
        cost=float(c[idx]),
        runner_up=None if runner is None else models[runner],
        scores={m: float(s) for m, s in zip(models, score, strict=True)},
    )


def _check_matrix(X: np.ndarray, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise PolicyError(f"{what} must be a 2-D array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise PolicyError(f"{what} contain NaN or infinite values")
    return X


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
