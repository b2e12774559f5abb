"""Gateway configuration: LiteLLM's ``model_list`` convention plus ``routing``, ``state``, ``keys``.

Example (see examples/config.yaml)::

    model_list:
      - model_name: gpt-4o-mini
        litellm_params:
          model: openai/gpt-4o-mini
          api_base: https://api.openai.com/v1
          api_key: os.environ/OPENAI_API_KEY
          timeout: 30
          input_cost_per_token: 1.5e-7      # optional price override
          output_cost_per_token: 6.0e-7
    routing: {artifact: artifacts/knn, lam: 0.0, fallback: [gpt-4o-mini], cooldown_seconds: 30}
    state: {dir: .costroute, redis_url: null}
    keys: {required: false, keys: [{name: alice, key: os.environ/ALICE_KEY, budget_usd: 5}]}

Values written ``os.environ/NAME`` are read from the environment at load time. LiteLLM's
``general_settings`` / ``router_settings`` / ``litellm_settings`` are mapped onto these
sections by :mod:`router.proxy.litellm_compat`. A bad config raises :class:`ConfigError` whose message names every offending key and its problem.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.exploration import DEFAULT_SHARE as DEFAULT_EXPLORATION_SHARE
from router.proxy.litellm_compat import CompatError, apply_litellm_sections

ENV_PREFIX = "os.environ/"
#: environment variable that overrides ``state.redis_url`` (used by the deploy manifests)
REDIS_URL_ENV = "COSTROUTE_REDIS_URL"


class ConfigError(ValueError):
    """An invalid gateway configuration (message names the key and the problem)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Strict):
    """Our price notation: USD per million tokens."""

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class LiteLLMParams(BaseModel):
    """``litellm_params`` of one backend; unknown keys are passed to ``litellm.acompletion``."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)

    @field_validator("api_base")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/") if v else v

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else "openai"

    @property
    def upstream_model(self) -> str:
        """The model name the provider knows (``openai/gpt-4o`` -> ``gpt-4o``)."""
        return self.model.split("/", 1)[1] if "/" in self.model else self.model

    def extra_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelEntry(_Strict):
    """One backend of ``model_list``."""

    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    price: Price | None = None
    #: call this backend through the pooled HTTP client (fast path) instead of litellm
    #: (``None``: follow ``routing.fast_path`` when the backend is OpenAI-compatible)
    fast_path: bool | None = None
    model_info: dict[str, Any] | None = None

    @field_validator("model_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v.startswith("router-"):
            raise ValueError("names starting with 'router-' are reserved for routed models")
        return v


class RoutingConfig(_Strict):
    """How ``router-auto`` chooses, and what happens when a backend fails."""

    #: trained policy artifact directory (``router train --out``); ``--artifact`` overrides
    artifact: str | None = None
    #: expected policy name of the artifact; without an artifact only ``cheapest`` (by price)
    policy: str | None = None
    #: extra artifacts served as ``router-<name>[-<lam>]``
    artifacts: dict[str, str] = Field(default_factory=dict)
    lam: float = Field(default=0.0, ge=0)
    budget: float | None = Field(default=None, ge=0)
    #: optional global spend pacing (router.budget.BudgetSpec fields: amount, horizon, clock,
    #: n_bins, renew): the online-knapsack policy picks among the candidates
    global_budget: dict[str, Any] | None = None
    fallback: list[str] = Field(default_factory=list)
    max_fallback_tries: int = Field(default=2, ge=0, le=20)
    cooldown_seconds: float = Field(default=30.0, ge=0)
    #: failures in a row a backend may have before it cools down (LiteLLM's allowed_fails)
    allowed_fails: int = Field(default=0, ge=0)
    timeouts: dict[str, float] = Field(default_factory=dict)
    default_timeout: float = Field(default=600.0, gt=0)
    #: policy model name -> backend model_name, where they differ
    model_map: dict[str, str] = Field(default_factory=dict)
    fast_path: bool = True
    #: fast-path client: aiohttp (default, fastest measured) or httpx (round-robin shards)
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"
    http_shards: int = Field(default=16, ge=1, le=256)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: output tokens reserved for a call whose request gives no max_tokens
    reserve_output_tokens: int = Field(default=512, ge=1)
    embedding_cache_size: int = Field(default=4096, ge=0)
    #: encoder runtime for the artifacts (router.encoding.select): auto = ONNX int8/fp32 on
    #: CPU (torch if ONNX is unavailable), CUDA when present; or artifact/torch/onnx/onnx-int8
    encoder_backend: Literal["auto", "artifact", "torch", "onnx", "onnx-int8"] = "auto"
    #: encoder device (cpu, cuda, cuda:1); default: CUDA when present
    encoder_device: str | None = None
    #: intra-op threads of the ONNX encoder (default min(2, cores): lowest route latency;
    #: 1 gives ~12% more micro-batched throughput on 2 cores, benchmarks/bench_route.py)
    encoder_threads: int | None = Field(default=None, ge=1, le=64)
    #: micro-batching of encoder passes across concurrent requests (router.encoding.batcher)
    batch_max: int = Field(default=32, ge=1, le=1024)
    batch_wait_ms: float = Field(default=0.0, ge=0, lt=1000)
    #: weight of a cascade's automatic agreement rewards (router.auto_rewards) in the
    #: updates of every served online policy (linucb): 0 = off, 1 = one /v1/feedback reward
    auto_reward_weight: float = Field(default=1.0, ge=0, le=1)
    #: share of an online policy's decisions that may explore (use the optimism bonus) instead
    #: of exploiting the posterior mean; 0 = never. Default router.exploration.DEFAULT_SHARE,
    #: chosen on a train-split replay (router eval --explore); ``exploration_shares`` sets it
    #: per policy name
    exploration_share: float = Field(default=DEFAULT_EXPLORATION_SHARE, ge=0, le=1)
    exploration_shares: dict[str, float] = Field(default_factory=dict)
    #: token counts used to turn per-token prices into a per-call cost estimate
    estimate_prompt_tokens: int = Field(default=500, ge=0)
    estimate_output_tokens: int = Field(default=200, ge=0)

    @field_validator("exploration_shares")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        for name, share in v.items():
            if not (isinstance(share, int | float) and 0 <= share <= 1):
                raise ValueError(f"share of {name!r} must be a number in [0, 1], got {share!r}")
        return v

    @field_validator("timeouts")
    @classmethod
    def _timeouts(cls, v: dict[str, float]) -> dict[str, float]:
        for name, t in v.items():
            if not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
                raise ValueError(f"timeout of {name!r} must be a number > 0, got {t!r}")
        return v


class StateConfig(_Strict):
    """Where outcomes, spend and bandit state live: an embedded dir, or Redis."""

    dir: str = ".costroute"
    redis_url: str | None = None
    outcome_stream: str = "costroute:outcomes"
    flush_interval_seconds: float = Field(default=1.0, gt=0)
    feedback_cache_size: int = Field(default=50_000, ge=0)
    #: with redis_url: how long a request's feedback context stays claimable on any replica
    feedback_ttl_seconds: float = Field(default=3600.0, gt=0)
    #: answer a (non-streaming) request only once its outcome record is stored and its cost
    #: charged to the key, so a replica crash loses no record and no spend of an answered
    #: request (group commit; costs one store write and one key-store round trip)
    sync_outcomes: bool = False
    #: keep each request's routing text (its last user message) in its outcome record, so
    #: `router data from-logs` builds a training set without a prompt file
    log_prompts: bool = False
    #: with redis_url: connections per Redis client (each store has one); a request that
    #: finds them all busy waits for one (bounded: Redis' maxclients is never exhausted)
    redis_max_connections: int = Field(default=32, ge=1, le=10_000)
    #: with redis_url: feedback for an id no store knows yet, received during or shortly
    #: after a Redis outage (its context may still sit in another replica's memory), is
    #: accepted (202), journaled and retried for this long before it is dropped
    feedback_defer_seconds: float = Field(default=120.0, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be a redis:// URL, got {v!r}")
        return v or None


class KeyEntry(_Strict):
    """One API key: given in clear (``os.environ/NAME`` recommended) or as its sha256."""

    name: str = Field(min_length=1)
    key: str | None = Field(default=None, repr=False)
    key_sha256: str | None = None
    budget_usd: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_key(self) -> KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of 'key' or 'key_sha256'")
        if self.key_sha256 is not None:
            h = self.key_sha256.lower()
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ValueError("key_sha256 must be 64 hex characters")
            self.key_sha256 = h
        return self

    @property
    def hash(self) -> str:
        return self.key_sha256 or hashlib.sha256(str(self.key).encode()).hexdigest()


class KeysConfig(_Strict):
    #: refuse requests without a known key (default: required as soon as keys are listed)
    required: bool | None = None
    keys: list[KeyEntry] = Field(default_factory=list)
    #: when a key has a budget and the request gives no max_tokens, send this cap upstream so
    #: the reservation bounds the real cost
    enforce_max_tokens: bool = True

    @property
    def is_required(self) -> bool:
        return bool(self.keys) if self.required is None else self.required

    @model_validator(mode="after")
    def _unique(self) -> KeysConfig:
        names = [k.name for k in self.keys]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate key names {sorted(dup)}")
        hashes = [k.hash for k in self.keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two entries hold the same key")
        if self.required and not self.keys:
            raise ValueError("required is true but no keys are listed")
        return self


class ReplayConfig(_Strict):
    """Replay backends (``model: replay/<dataset model>``) answer from a routing dataset."""

    dataset: str | None = None
    latency_ms: float = Field(default=0.0, ge=0)
    auto_feedback: bool = True
    #: the replay's own grade is sent this long after the answer, unless the client's
    #: ``POST /v1/feedback`` for that request came first (which then counts instead)
    auto_feedback_delay_seconds: float = Field(default=0.0, ge=0, le=3600)
    #: below this cosine similarity an unknown prompt gets a canned answer
    min_similarity: float = Field(default=0.3, ge=-1, le=1)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class GatewayConfig(_Strict):
    model_list: list[ModelEntry] = Field(min_length=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)

    @model_validator(mode="after")
    def _cross_check(self) -> GatewayConfig:
        names = [m.model_name for m in self.model_list]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model_list: duplicate model_name {dup}")
        known = set(names)
        r = self.routing
        for field, values in (
            ("routing.fallback", r.fallback),
            ("routing.timeouts", list(r.timeouts)),
            ("routing.model_map", list(r.model_map.values())),
        ):
            bad = [v for v in values if v not in known]
            if bad:
                raise ValueError(f"{field}: unknown backend(s) {bad}; model_list has {names}")
        for name in r.artifacts:
            if not name or "router-" in name:
                raise ValueError(f"routing.artifacts: bad policy name {name!r}")
        if any(m.litellm_params.provider == "replay" for m in self.model_list) and not (
            self.replay.dataset
        ):
            raise ValueError("replay backends need replay.dataset (a routing dataset path)")
        return self

    # ---- convenience ---------------------------------------------------------------
    def backend(self, name: str) -> ModelEntry:
        for m in self.model_list:
            if m.model_name == name:
                return m
        raise KeyError(name)

    def timeout_for(self, entry: ModelEntry) -> float:
        r = self.routing
        if entry.model_name in r.timeouts:
            return float(r.timeouts[entry.model_name])
        if entry.litellm_params.timeout is not None:
            return float(entry.litellm_params.timeout)
        return r.default_timeout


# ---- loading ------------------------------------------------------------------------


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    lines = []
    for err in exc.errors():
        loc = _format_loc(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
            msg += f" (got {got!r})"
        lines.append(f"{loc}: {msg}")
    return f"{source}: invalid configuration:\n  " + "\n  ".join(lines)


def resolve_env(value: Any, where: str = "") -> Any:
    """Replace ``os.environ/NAME`` strings (recursively) by the variable's value."""
    if isinstance(value, dict):
        return {k: resolve_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name!r} is not set")
        return os.environ[name]
    return value


def parse_config(data: Any, source: str = "config", base_dir: Path | None = None) -> GatewayConfig:
    """Validate a config mapping (already parsed from YAML/JSON)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    data = resolve_env(data)
    try:
        data, _ = apply_litellm_sections(data)
    except CompatError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    env_url = os.environ.get(REDIS_URL_ENV)
    if env_url:
        try:
            cfg.state.redis_url = StateConfig(redis_url=env_url).redis_url
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"${REDIS_URL_ENV}")) from None
    if base_dir is not None:
        _resolve_paths(cfg, base_dir)
    return cfg


def _resolve_paths(cfg: GatewayConfig, base: Path) -> None:
    def fix(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p).expanduser()
        return str(path if path.is_absolute() else (base / path))

    cfg.routing.artifact = fix(cfg.routing.artifact)
    cfg.routing.artifacts = {k: str(fix(v)) for k, v in cfg.routing.artifacts.items()}
    cfg.replay.dataset = fix(cfg.replay.dataset)


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a YAML (or JSON) config file.

    Relative artifact/dataset paths are taken relative to the current directory (like the
    CLI's other paths); the state dir too.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_config(data, source=str(path))

