"""Loading the served policies (and their encoders) named by the config at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policies.base import Policy, PolicyError
from router.proxy.config import ConfigError, GatewayConfig
from router.proxy.routing import load_encoder


def load_policies(cfg: GatewayConfig, artifact: str | None = None
                  ) -> tuple[dict[str, tuple[Policy, Any]], str | None]:
    """``{served name: (policy, encoder)}`` and the default's name, from the config."""
    from policies import load_policy

    r = cfg.routing
    main = artifact or r.artifact
    out: dict[str, tuple[Policy, Any]] = {}
    encoders: dict[str, Any] = {}

    def encoder_for(policy: Policy) -> Any:
        enc_cfg = policy.meta_.get("encoder")
        key = json.dumps(enc_cfg, sort_keys=True, default=str)
        if key not in encoders:
            try:
                encoders[key] = load_encoder(enc_cfg, r.encoder_backend, policy.dim_,
                                             device=r.encoder_device, use_cache=False,
                                             threads=r.encoder_threads)
            except ValueError as exc:  # EncoderError: no runtime loads, or a mismatch
                raise ConfigError(f"routing: encoder ({r.encoder_backend}): {exc}") from None
        return encoders[key]

    def load(path: str, where: str) -> Policy:
        if not Path(path).is_dir():
            raise ConfigError(f"{where}: artifact directory {path!r} does not exist")
        try:
            return load_policy(path)
        except PolicyError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    default = None
    if main:
        policy = load(main, "--artifact" if artifact else "routing.artifact")
        if r.policy and r.policy != policy.name:
            raise ConfigError(f"routing.policy: {r.policy!r}, but the artifact {main} holds a "
                              f"{policy.name!r} policy")
        if policy.evaluation_only:
            raise ConfigError(f"routing.artifact: {policy.name!r} is evaluation-only")
        out[policy.name] = (policy, encoder_for(policy))
        default = policy.name
    for name, path in r.artifacts.items():
        policy = load(path, f"routing.artifacts.{name}")
        if policy.evaluation_only:
            raise ConfigError(f"routing.artifacts.{name}: {policy.name!r} is evaluation-only")
        out[name] = (policy, encoder_for(policy))
    if not main and r.policy not in (None, "cheapest"):
        raise ConfigError(f"routing.policy: {r.policy!r} needs a trained artifact; set "
                          "routing.artifact or pass --artifact (without one, only the "
                          "price-based 'cheapest' routing is available)")
    return out, default
