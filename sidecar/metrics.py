"""Prometheus metrics in a per-app registry (several apps in one test process stay apart).

Label children for the hot path are resolved once and kept, so a cache hit costs a counter
increment, not a label lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

IDP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "sidecar_decisions", "Decisions by outcome and reason", ["outcome", "reason"], registry=r
        )
        self.idp_requests = Counter(
            "sidecar_idp_requests", "Calls to the IdP by kind and result", ["kind", "result"], registry=r
        )
        self.idp_latency = Histogram(
            "sidecar_idp_request_seconds", "IdP call latency", ["kind"], buckets=IDP_BUCKETS, registry=r
        )
        self.cache = Counter("sidecar_cache", "Token cache lookups by result", ["result"], registry=r)
        self.cache_entries = Gauge("sidecar_cache_entries", "Tokens in the cache", registry=r)
        self.inflight = Gauge("sidecar_checks_in_flight", "Checks being decided", registry=r)
        self.ready = Gauge("sidecar_ready", "1 when the sidecar is ready", registry=r)
        self.tls_reload_errors = Counter(
            "sidecar_tls_reload_errors", "Failed reloads of certificate files", registry=r
        )
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")
        self.cache_coalesced = self.cache.labels("coalesced")
        self._decision_children: dict[tuple[str, str], Counter] = {}

    def decision(self, outcome: str, reason: str) -> None:
        child = self._decision_children.get((outcome, reason))
        if child is None:
            child = self._decision_children[(outcome, reason)] = self.decisions.labels(outcome, reason)
        child.inc()
