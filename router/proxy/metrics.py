"""Prometheus metrics of the gateway (one registry per app, so several apps can coexist)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 120)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1)


#: labelled children remembered by Metrics.child (label sets are few: backends, keys, kinds)
MAX_CHILDREN = 4096


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry = CollectorRegistry()
        self.requests = Counter("costroute_requests", "Chat completion requests",
                                ["kind", "status"], registry=r)
        self.latency = Histogram("costroute_request_latency_seconds",
                                 "Time from request to response (to the last byte for streams)",
                                 ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_latency = Histogram("costroute_upstream_latency_seconds",
                                          "Backend call time", ["model"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("costroute_overhead_seconds",
                                  "Gateway time outside backend calls (non-streaming)",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.routing = Histogram("costroute_routing_seconds", "Encoder + policy time",
                                 buckets=OVERHEAD_BUCKETS, registry=r)
        self.decisions = Counter("costroute_routing_decisions", "Backend chosen by routing",
                                 ["policy", "model"], registry=r)
        self.spend = Counter("costroute_spend_usd", "Cost of answered calls in USD", ["model"],
                             registry=r)
        self.key_spend = Counter("costroute_key_spend_usd",
                                 "Cost of answered requests in USD by API key name", ["key"],
                                 registry=r)
        self.tokens = Counter("costroute_tokens", "Tokens of answered calls",
                              ["model", "type"], registry=r)
        self.errors = Counter("costroute_errors", "Failed calls and refused requests",
                              ["model", "kind"], registry=r)
        self.fallbacks = Counter("costroute_fallbacks", "A failed backend replaced by another",
                                 ["from_model", "to_model"], registry=r)
        self.exploration = Counter("costroute_exploration_decisions",
                                   "Online policies' routing decisions, exploring or not",
                                   ["policy", "explored"], registry=r)
        self.exploration_share = Gauge("costroute_exploration_share",
                                       "Configured share of decisions that may explore",
                                       ["policy"], registry=r)
        self.feedback = Counter("costroute_feedback", "Feedback received",
                                ["source", "updated"], registry=r)
        self.outcome_queue = Gauge("costroute_outcome_queue", "Outcome events not yet written",
                                   registry=r)
        self.outcome_buffered = Gauge("costroute_outcome_buffered",
                                      "Outcome events buffered on disk while the store is down",
                                      registry=r)
        self.cooldown = Gauge("costroute_backend_cooldown", "1 while a backend is on cooldown",
                              ["model"], registry=r)

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: the per-request path looks each child up
        in one dict instead of prometheus_client's checks and lock."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*values)
            if len(self._children) < MAX_CHILDREN:
                self._children[key] = found
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
