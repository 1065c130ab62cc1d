"""Prometheus metrics in a per-app registry (several apps in one test process stay apart).

Label children for the hot path are resolved once and kept, so a cache hit costs a counter
increment, not a label lookup. An allowed cache hit (the hot path) costs less still: one plain
``int`` increment (the ``hit_allows`` of its policy, in :attr:`Metrics.hit_counters`), folded into
``sidecar_cache_total{result="hit"}`` and
``sidecar_decisions_total{outcome="allow",reason="ok",policy=...}`` whenever the registry is read,
so a scrape sees exact figures while a request takes no lock. The ``policy`` label holds only
configured policy names (``none`` when no policy admitted the request).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

IDP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HitCounter(Protocol):
    """A policy as the metrics see it: its configured name and its allowed hits not yet folded."""

    name: str
    hit_allows: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hit_counters: list[HitCounter] = []  # one per policy (see flush)
        r.register(_Fold(self))  # registered first: collected (and so folded) before the counters
        self.decisions = Counter(
            "sidecar_decisions", "Decisions by outcome, reason and policy", ["outcome", "reason", "policy"],
            registry=r
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
        self._decision_children: dict[tuple[str, str, str], Counter] = {}

    def decision(self, outcome: str, reason: str, policy: str = "default", count: int = 1) -> None:
        child = self._decision_children.get((outcome, reason, policy))
        if child is None:
            child = self._decision_children[(outcome, reason, policy)] = self.decisions.labels(outcome, reason, policy)
        child.inc(count)

    def flush(self) -> None:
        """Fold the hot-path counts into their counters (called on every registry read)."""
        for counter in self.hit_counters:
            count, counter.hit_allows = counter.hit_allows, 0
            if count:
                self.cache_hit.inc(count)
                self.decision("allow", "ok", counter.name, count)


class _Fold:
    """A collector without metrics: reading the registry first folds the hot-path counts."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        self._metrics.flush()
        return iter(())
