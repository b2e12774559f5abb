"""Glue from a request to an ordered list of backends: encoder -> policy -> choice.

* :func:`parse_model` reads the request's ``model``: ``router-auto`` (the default policy
  and trade-off), ``router-<policy>[-<lam>]`` (RouteLLM's convention, a per-request
  ``lam``), ``router-<policy>-b<USD per 1k queries>`` (a per-request budget: e.g.
  ``router-cascade-b1.77``; the policy's ``budget``, in USD per query), or a backend's own
  name (pass-through);
* :class:`Router` embeds the prompt (in-memory LRU in front of the encoder), asks the
  policy for its estimates and orders the allowed backends: the policy's choice first (the
  shared :func:`policies.base.choose` rule), then the rest by the same trade-off, then the
  configured fallback order; these are the fallback candidates.
* online policies with a bandit estimate (LinUCB's ``estimates``) are ordered by their
  posterior means (what the candidates report as ``quality``, with the optimism ``bonus``
  apart); the first candidate is the optimistic choice instead only when the policy's
  :class:`router.exploration.ExplorationGate` lets the decision explore
  (``routing.exploration_share``), and the plan says so (``explored``).

The policy's models are mapped to backends by ``routing.model_map`` (identity by default);
models with no backend are never chosen.

:class:`HashingBackend` is a model-free encoder backend (feature hashing of word unigrams
and bigrams), registered as ``backend="hashing"`` of :class:`router.encoding.encoder.Encoder`; it
is meant for tests, benchmarks and routing where semantic embeddings are not needed.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies._choose_one import choose_one
from policies.base import Estimate, Policy, PolicyError, check_lam
from router.exploration import DEFAULT_SHARE, ExplorationGate, choices

ROUTED_PREFIX = "router-"
AUTO = "router-auto"
_WORD = re.compile(r"\w+")


class HashingBackend:
    """Signed feature hashing of words and word pairs into ``dim`` buckets, L2-normalised."""

    cache_tag = "hashing"

    def __init__(self, model_path: str = "", *, device: str | None = None,
                 max_seq_length: int | None = None, dim: int = 64) -> None:
        if not isinstance(dim, int) or dim < 2:
            raise ValueError(f"hashing encoder: dim must be an integer >= 2, got {dim!r}")
        self.dim = dim
        self.device = "cpu"

    def _one(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float32)
        words = _WORD.findall(text.lower())
        feats = words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]
        for f in feats:
            h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
            vec[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0:
            vec[0] = 1.0
            return vec
        return vec / norm

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._one(t) for t in texts]) if texts else np.zeros((0, self.dim),
                                                                             np.float32)


def _register_hashing() -> None:
    try:
        from router.encoding.encoder import BACKENDS, register_backend
    except ImportError:  # encoder module absent: nothing to register into
        return
    if "hashing" not in BACKENDS:
        register_backend("hashing", HashingBackend)


_register_hashing()


def hashing_encoder_config(dim: int = 64) -> dict[str, Any]:
    """The encoder config (artifact meta ``encoder``) of the hashing encoder."""
    return {"model_name": "all-MiniLM-L6-v2", "text_view": "full", "backend": "hashing",
            "backend_options": {"dim": dim}}


def load_encoder(cfg: dict[str, Any] | None, backend: str = "artifact",
                 expected_dim: int | None = None, **overrides: Any):
    """An encoder for an artifact's ``meta["encoder"]`` (the default MiniLM if absent).

    ``backend`` is a :mod:`router.encoding.select` choice: ``"artifact"`` (the recorded
    runtime, loaded lazily) or ``"auto"``/a runtime name (loaded now and checked against
    the artifact's dimension and ``expected_dim``).
    """
    from router.encoding.encoder import Encoder
    from router.encoding.select import ONNX_BACKENDS, serving_encoder

    _register_hashing()
    threads = overrides.pop("threads", None)
    if backend == "artifact":
        if cfg and threads is not None and cfg.get("backend") in ONNX_BACKENDS:
            cfg = {**cfg, "backend_options": {**(cfg.get("backend_options") or {}),
                                              "threads": int(threads)}}
        return Encoder.from_config(dict(cfg), **overrides) if cfg else Encoder(**overrides)
    device = overrides.pop("device", None)
    return serving_encoder(cfg, backend, device=device, expected_dim=expected_dim,
                           threads=threads, **overrides)


# ---- model names --------------------------------------------------------------------


@dataclass
class Target:
    """What a request's ``model`` asks for."""

    kind: str  # "route" or "passthrough"
    backend: str | None = None
    policy: str | None = None
    lam: float | None = None
    budget: float | None = None  # USD per query


#: ``router-<policy>-b<X>``: a budget of X USD per 1k queries
BUDGET_SUFFIX = "b"


def parse_model(model: str, policies: dict[str, Any], backends: set[str] | list[str],
                ) -> Target | None:
    """Interpret ``model``; ``None`` when it names nothing this gateway serves."""
    if model in backends:
        return Target("passthrough", backend=model)
    if not model.startswith(ROUTED_PREFIX):
        return None
    rest = model[len(ROUTED_PREFIX):]
    if rest in policies:
        return Target("route", policy=rest)
    name, _, lam_text = rest.rpartition("-")
    if name in policies:
        per_1k = lam_text.startswith(BUDGET_SUFFIX)
        try:
            value = float(lam_text[len(BUDGET_SUFFIX):] if per_1k else lam_text)
        except ValueError:
            return None
        if not math.isfinite(value) or value < 0:
            return None
        if per_1k:
            return Target("route", policy=name, budget=value / 1000.0)
        return Target("route", policy=name, lam=value)
    return None


# ---- routing ------------------------------------------------------------------------


@dataclass
class Candidate:
    backend: str
    policy_model: str | None = None
    quality: float | None = None
    cost: float | None = None
    score: float | None = None
    #: online policies: the optimism bonus, apart from ``quality`` (the posterior mean)
    bonus: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"model": self.backend, "score": _r(self.score), "quality": _r(self.quality),
               "cost": _r(self.cost, 10)}
        if self.bonus is not None:
            out["bonus"] = _r(self.bonus)
        return out


def _r(v: float | None, nd: int = 6) -> float | None:
    return None if v is None else round(float(v), nd)


@dataclass
class RoutePlan:
    """Ordered backends to try (first = the policy's choice) and what the policy believed."""

    policy: str | None
    lam: float | None
    budget: float | None
    candidates: list[Candidate]
    embedding: np.ndarray | None = None
    #: every policy model's estimate (also those not allowed), for the outcome log
    scores: list[Candidate] = field(default_factory=list)
    #: online policies: whether the first candidate is an exploring choice (None: not online)
    explored: bool | None = None
    #: online policies: familiarity quantile of the prompt and the fallback weight used
    familiarity: float | None = None
    fallback: float | None = None

    def record(self) -> dict[str, Any]:
        """Exploration fields of the outcome record (empty for policies that do not explore)."""
        if self.explored is None:
            return {}
        out: dict[str, Any] = {"explored": self.explored}
        if self.familiarity is not None and math.isfinite(self.familiarity):
            out["familiarity"] = _r(self.familiarity)
        if self.fallback is not None:
            out["fallback"] = _r(self.fallback)
        return out

    @property
    def chosen(self) -> str | None:
        return self.candidates[0].backend if self.candidates else None

    def candidate(self, backend: str) -> Candidate | None:
        for c in self.candidates:
            if c.backend == backend:
                return c
        return None


class ServedPolicy:
    """A loaded policy, its encoder, and how its model names map to backends."""

    def __init__(self, name: str, policy: Policy, encoder: Any,
                 model_map: dict[str, str], backends: set[str],
                 exploration_share: float = DEFAULT_SHARE) -> None:
        self.name = name
        self.policy = policy
        self.encoder = encoder
        self.backend_of = {m: model_map.get(m, m) for m in policy.models_}
        self.backend_of = {m: b for m, b in self.backend_of.items() if b in backends}
        if not self.backend_of:
            raise PolicyError(
                f"policy {name!r}: none of its models {policy.models_} is a backend of "
                f"model_list {sorted(backends)} (map them with routing.model_map)"
            )
        self.online = bool(getattr(policy, "online", False))
        #: bounded exploration of policies that give a posterior mean and a bonus apart
        self.gate = (ExplorationGate(exploration_share)
                     if self.online and hasattr(policy, "estimates") else None)
        self.lock = threading.RLock()
        #: the encoder costs microseconds (hashing, static tables): run it on the event loop,
        #: where a micro-batcher / worker-thread hand-off would cost more than the encode
        self.inline = getattr(encoder, "backend_name", "") in INLINE_BACKENDS
        #: predictions read shared state over the network (run them in a worker thread)
        self.remote_state = False
        self.batch_max = 32
        self.batch_wait_ms = 0.0
        self._batcher = None

    def batcher(self):
        """The micro-batcher that shares encoder passes between concurrent requests."""
        if self._batcher is None:
            from router.encoding.batcher import MicroBatcher

            self._batcher = MicroBatcher(self.encoder.encode, self.batch_max, self.batch_wait_ms)
        return self._batcher

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()
            self._batcher = None

    @property
    def encoder_id(self) -> str:
        return str(getattr(self.encoder, "model_id", id(self.encoder))) + str(
            getattr(self.encoder, "backend_name", ""))

    def check(self) -> None:
        """Load the encoder (one real encode) and check its dimension against the policy's."""
        dim = int(np.asarray(self.encoder.encode_one("warm up")).shape[-1])
        if dim != self.policy.dim_:
            raise PolicyError(
                f"policy {self.name!r} was trained on {self.policy.dim_}-d embeddings but its "
                f"encoder gives {dim}-d ones"
            )

    def unmapped(self) -> list[str]:
        return [m for m in self.policy.models_ if m not in self.backend_of]

    def predict(self, x: np.ndarray):
        with self.lock:
            return self.policy.predict(x[None, :])

    def estimates(self, x: np.ndarray):
        """The online policy's bandit estimate (posterior mean, bonus, ...) of one query."""
        with self.lock:
            return self.policy.estimates(x[None, :])

    def update(self, x: np.ndarray, policy_model: str, reward: float, cost: float) -> None:
        with self.lock:
            self.policy.update(x, policy_model, reward, cost)


#: encoder backends cheap enough to run on the event loop (no batcher, no thread)
INLINE_BACKENDS = frozenset({"hashing", "static"})


class Router:
    """Turns (policy, prompt, trade-off, allowed backends) into a :class:`RoutePlan`."""

    def __init__(self, policies: dict[str, ServedPolicy], default: str | None,
                 lam: float = 0.0, budget: float | None = None,
                 fallback: list[str] | None = None, cache_size: int = 4096) -> None:
        self.policies = policies
        self.default = default
        self.lam = check_lam(lam)
        self.budget = budget
        self.fallback = list(fallback or [])
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    # names a client may use: router-auto plus router-<policy>
    @property
    def names(self) -> dict[str, ServedPolicy]:
        out = dict(self.policies)
        if self.default is not None:
            out["auto"] = self.policies[self.default]
        return out

    def resolve(self, target: Target) -> tuple[ServedPolicy, float, float | None]:
        """The served policy and trade-off of a routed target."""
        served = self.names[target.policy]  # parse_model guarantees the name
        if target.budget is not None:
            return served, self.lam, target.budget
        if target.lam is not None:
            return served, target.lam, None
        if target.policy == "auto" or target.policy == self.default:
            return served, self.lam, self.budget
        return served, self.lam, None

    @staticmethod
    def _key(served: ServedPolicy, text: str) -> tuple[str, bytes]:
        return (served.encoder_id, hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                                   digest_size=16).digest())

    def cached(self, served: ServedPolicy, text: str) -> np.ndarray | None:
        """The remembered embedding of ``text``, if any."""
        return self._lookup(self._key(served, text)) if self.cache_size else None

    def remember(self, served: ServedPolicy, text: str, x: np.ndarray) -> None:
        if self.cache_size:
            self._store(self._key(served, text), x)

    def _lookup(self, key: tuple[str, bytes]) -> np.ndarray | None:
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def _store(self, key: tuple[str, bytes], x: np.ndarray) -> None:
        with self._cache_lock:
            self._cache[key] = x
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def embed(self, served: ServedPolicy, text: str) -> np.ndarray:
        """Synchronous embedding through the LRU (the encoder runs in this thread)."""
        if not self.cache_size:
            return np.asarray(served.encoder.encode_one(text), dtype=np.float32)
        key = self._key(served, text)  # hashed once for the look-up and the store
        x = self._lookup(key)
        if x is None:
            x = np.asarray(served.encoder.encode_one(text), dtype=np.float32)
            self._store(key, x)
        return x

    async def aembed(self, served: ServedPolicy, text: str) -> np.ndarray:
        """Embedding for the event loop: LRU, else the policy's micro-batcher."""
        key = self._key(served, text) if self.cache_size else None
        x = None if key is None else self._lookup(key)
        if x is None:
            x = np.asarray(await served.batcher().encode(text), dtype=np.float32)
            if key is not None:
                self._store(key, x)
        return x

    def plan(self, served: ServedPolicy, x: np.ndarray, lam: float, budget: float | None,
             allowed: set[str]) -> RoutePlan:
        """Order the allowed backends by the policy's trade-off, then the fallback list."""
        policy = served.policy
        models = policy.models_
        bandit = served.estimates(x) if served.gate is not None else None
        # online: exploit on the posterior mean; the bonus is reported apart
        est = served.predict(x) if bandit is None else Estimate(bandit.mean, bandit.cost)
        # one query: plain floats from here on (the same arithmetic as numpy's)
        q, c = est.quality[0].tolist(), est.cost[0].tolist()
        bonus = None if bandit is None else bandit.bonus[0].tolist()
        score = [qi - lam * ci for qi, ci in zip(q, c, strict=True)]
        backend_of = served.backend_of
        scores = [Candidate(backend_of.get(m, m), m, q[i], c[i], score[i],
                            None if bonus is None else bonus[i])
                  for i, m in enumerate(models)]
        mask = [backend_of.get(m) in allowed for m in models]
        ordered: list[Candidate] = []
        explored = None
        if any(mask):
            # the shared choice rule (what decision_from_estimate picks, without its
            # runner-up and score dict, which nothing here reads)
            first = choose_one(q, c, lam=lam, budget=budget, allowed=mask)
            if bandit is not None:
                ch = choices(np.array(q), np.array(bonus), np.array(c), lam, budget,
                             np.array(mask))
                explored = served.gate.decide(ch.differs)
                if explored:
                    first = ch.optimistic
            rest = [i for i, ok in enumerate(mask) if ok and i != first]
            if budget is None:
                rest.sort(key=lambda i: (-score[i], c[i]))
            else:
                rest.sort(key=lambda i: (c[i] > budget, -q[i] if c[i] <= budget else c[i]))
            seen: set[str] = set()
            for i in [first, *rest]:
                cand = scores[i]
                if cand.backend not in seen:
                    seen.add(cand.backend)
                    ordered.append(cand)
        present = {cand.backend for cand in ordered}
        for name in self.fallback:
            if name in allowed and name not in present:
                ordered.append(Candidate(name))
                present.add(name)
        plan = RoutePlan(served.name, lam, budget, ordered, x, scores)
        if bandit is not None:
            plan.explored = bool(explored)
            plan.familiarity = float(bandit.familiarity[0])
            plan.fallback = float(bandit.fallback[0])
        return plan


def price_policy(backends: dict[str, Any], est_prompt_tokens: int, est_output_tokens: int,
                 fallback: list[str] | None = None) -> tuple[Policy, Any]:
    """The no-artifact default: ``cheapest`` by configured price, with the hashing encoder.

    Every backend gets the same quality estimate, so the cheapest allowed backend is chosen
    and the others follow by price.
    """
    from policies import make_policy
    from router.encoding.encoder import Encoder

    _register_hashing()
    names = list(backends)
    cost = np.array([[backends[n].cost(est_prompt_tokens, est_output_tokens) for n in names]])
    policy = make_policy("cheapest")
    policy.fit(np.zeros((1, 8), np.float32) + 1.0, np.ones((1, len(names))), cost, names)
    enc = Encoder.from_config(hashing_encoder_config(8), use_cache=False)
    return policy, enc
