"""LiteLLM proxy configs, read as ours: ``general_settings``, ``router_settings``,
``litellm_settings``.

A LiteLLM user brings a config whose ``model_list`` we read unchanged. The other three
sections are mapped where a field has a meaning here and named in a warning where it does
not, so nothing is silently dropped:

==============================  =======================================================
LiteLLM field                   costroute
==============================  =======================================================
``general_settings.master_key`` an API key named ``master`` with no budget limit; keys
                                become required (a config that names a key never runs
                                open: ``keys.required: false`` beside it is an error)
``router_settings.num_retries`` ``routing.max_fallback_tries``
``router_settings.timeout``     ``routing.default_timeout`` (seconds)
``router_settings.fallbacks``   ``routing.fallback``: LiteLLM's per-model-group lists
                                ``[{group: [backends]}]`` flattened in order (our fallback
                                list applies after any routed choice fails)
``router_settings.allowed_fails`` ``routing.allowed_fails``
``router_settings.cooldown_time`` ``routing.cooldown_seconds``
==============================  =======================================================

A field set in our own ``routing`` section wins over its LiteLLM counterpart (with a
warning). Everything else in these sections is ignored with a warning naming it.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("router.proxy.config")

MASTER_KEY_NAME = "master"

#: router_settings field -> (routing field, converter)
_ROUTER_FIELDS: dict[str, str] = {
    "num_retries": "max_fallback_tries",
    "timeout": "default_timeout",
    "fallbacks": "fallback",
    "allowed_fails": "allowed_fails",
    "cooldown_time": "cooldown_seconds",
}


class CompatError(ValueError):
    """A LiteLLM section that cannot be honoured (message names the field)."""


def _flatten_fallbacks(value: Any) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if not isinstance(value, list):
        raise CompatError("router_settings.fallbacks: expected a list of "
                          "{model_group: [backends]} mappings")
    out: list[str] = []
    for i, group in enumerate(value):
        if not isinstance(group, dict):
            raise CompatError(f"router_settings.fallbacks[{i}]: expected a mapping "
                              f"{{model_group: [backends]}}, got {type(group).__name__}")
        for name, targets in group.items():
            if isinstance(targets, str):
                targets = [targets]
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise CompatError(f"router_settings.fallbacks[{i}].{name}: expected a list "
                                  "of backend names")
            out.extend(t for t in targets if t not in out)
    return out


def apply_litellm_sections(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map the LiteLLM sections of a config mapping onto ours.

    Returns the rewritten mapping (the input is not modified) and the warnings, each naming
    a field that was ignored or overridden; they are also logged.
    """
    data = dict(data)
    warnings: list[str] = []
    general = data.pop("general_settings", None)
    router_settings = data.pop("router_settings", None)
    litellm_settings = data.pop("litellm_settings", None)
    for name, section in (("general_settings", general), ("router_settings", router_settings),
                          ("litellm_settings", litellm_settings)):
        if section is not None and not isinstance(section, dict):
            raise CompatError(f"{name}: must be a mapping, got {type(section).__name__}")

    if general:
        general = dict(general)
        master = general.pop("master_key", None)
        if master is not None:
            if not isinstance(master, str) or not master:
                raise CompatError("general_settings.master_key: must be a non-empty string")
            keys = dict(data.get("keys") or {})
            if keys.get("required") is False:
                raise CompatError("general_settings.master_key is set but keys.required is "
                                  "false: the gateway would run open; remove one of them")
            entries = list(keys.get("keys") or [])
            if not any(isinstance(e, dict) and e.get("name") == MASTER_KEY_NAME
                       for e in entries):
                entries.append({"name": MASTER_KEY_NAME, "key": master})
            keys["keys"] = entries
            data["keys"] = keys
        warnings += [f"general_settings.{k}: not used by costroute, ignored"
                     for k in sorted(general)]

    if router_settings:
        routing = dict(data.get("routing") or {})
        for field, value in router_settings.items():
            ours = _ROUTER_FIELDS.get(field)
            if ours is None:
                warnings.append(f"router_settings.{field}: not used by costroute, ignored")
                continue
            if ours in routing:
                warnings.append(f"router_settings.{field}: routing.{ours} is set too; "
                                f"routing.{ours} wins")
                continue
            routing[ours] = _flatten_fallbacks(value) if field == "fallbacks" else value
        data["routing"] = routing

    if litellm_settings:
        warnings += [f"litellm_settings.{k}: not used by costroute, ignored"
                     for k in sorted(litellm_settings)]
    for w in warnings:
        log.warning("config: %s", w)
    return data, warnings
