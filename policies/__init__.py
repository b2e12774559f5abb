"""Routing policies: one module per policy, one shared interface (:mod:`policies.base`).

The registry maps a policy name to ``module:Class`` so that importing this package stays
cheap (torch-backed policies load only when asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

from policies.base import (
    ArtifactError,
    Estimate,
    Policy,
    PolicyError,
    RouteDecision,
    TrainData,
    choose,
)

REGISTRY: dict[str, str] = {
    "random": "policies.random_policy:RandomPolicy",
    "cheapest": "policies.cheapest:CheapestPolicy",
    "single": "policies.single:SingleModelPolicy",
    "best-single": "policies.single:BestSinglePolicy",
    "task-static": "policies.task_static:TaskStaticPolicy",
    "oracle": "policies.oracle:OraclePolicy",
    "knn": "policies.knn:KNNPolicy",
    "mlp": "policies.mlp:MLPPolicy",
    "routerdc": "policies.routerdc:RouterDCPolicy",
    "cscr": "policies.cscr:CSCRPolicy",
    "linucb": "policies.linucb:LinUCBPolicy",
    "cascade": "policies.cascade:CascadePolicy",
    "cascade-routed": "policies.cascade_routed:RoutedCascadePolicy",
}


def policy_names() -> list[str]:
    return list(REGISTRY)


def get_policy_class(name: str) -> type[Policy]:
    if name not in REGISTRY:
        raise PolicyError(f"unknown policy {name!r}; available: {', '.join(REGISTRY)}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_policy(name: str, **params: Any) -> Policy:
    klass = get_policy_class(name)
    unknown = set(params) - set(klass._param_names())
    if unknown:
        raise PolicyError(
            f"{name}: unknown parameter(s) {sorted(unknown)}; known: {klass._param_names()}"
        )
    return klass(**params)


def load_policy(path: str) -> Policy:
    return Policy.load(path)


__all__ = [
    "ArtifactError",
    "Estimate",
    "Policy",
    "PolicyError",
    "RouteDecision",
    "TrainData",
    "REGISTRY",
    "choose",
    "get_policy_class",
    "load_policy",
    "make_policy",
    "policy_names",
]
