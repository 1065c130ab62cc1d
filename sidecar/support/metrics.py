"""Prometheus metrics in a per-app registry (several apps in one test process stay apart).

Label children for the hot path are resolved once and kept, so a decision costs a counter
increment, not a label lookup. The decision latency histogram is a :class:`LatencyHistogram` of
:class:`Latencies`: a list of bucket counts and a sum that a decision bumps (a comparison, or one
``bisect`` in C, and two additions), turned into the exposition only when the registry is read.
An allowed cache hit (the hot path) makes that one record and nothing else: its bucket counts in
the ``hits`` of its policy (:attr:`Metrics.hit_counters`), which are folded into
``sidecar_cache_total{result="hit"}``, ``sidecar_decisions_total{outcome="allow",reason="ok",
policy=...}`` and ``sidecar_decision_seconds{outcome="allow",cache="hit"}`` whenever the registry
is read, so a scrape sees exact figures while a request takes no lock. One process serves from one
thread (the event loop, which also answers the scrape), so none of it needs a lock. The ``policy``
label holds only configured policy names (``none`` when no policy admitted the request).

One :class:`Metrics` lives as long as the process: a reload builds new decision parts on the same
registry (:meth:`Metrics.shared` hands a part the collector its predecessor registered). No
``*_created`` series are exported (:func:`prometheus_client.disable_created_metrics`).
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

import sidecar

disable_created_metrics()  # type: ignore[no-untyped-call]  # no sidecar_*_created series: they double every counter for nothing

IDP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A cache hit is decided in microseconds, a miss waits for the IdP: from 100 µs to 2.5 s.
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
M = TypeVar("M", bound=MetricWrapperBase)


class HitCounter(Protocol):
    """A policy as the metrics see it: its configured name, its allowed hits (as latencies) and
    how many of them the counters already hold."""

    name: str
    hits: Latencies
    folded: int


class Latencies:
    """One label set of a lock-free histogram: bucket counts (the last one +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0

    def observe(self, seconds: float, bounds: Sequence[float] = DECISION_BUCKETS) -> None:
        self.counts[bisect_left(bounds, seconds)] += 1  # bucket i: seconds <= bounds[i]
        self.total += seconds


class LatencyHistogram:
    """A histogram collector fed through :class:`Latencies` (no lock, nothing done per observation
    beyond the bucket and the sum); the exposition is built when the registry is read."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 bounds: Sequence[float] = DECISION_BUCKETS) -> None:
        self._name, self._doc, self._labels, self.bounds = name, documentation, tuple(labels), tuple(bounds)
        self._children: dict[tuple[str, ...], Latencies] = {}
        # Label values -> more latencies counted under them (the policies' allowed hits).
        self.sources: dict[tuple[str, ...], Callable[[], Iterable[Latencies]]] = {}

    def child(self, *values: str) -> Latencies:
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = Latencies(len(self.bounds))
        return found

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labels)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for values in sorted({*self._children, *self.sources}):
            every = [self.child(*values), *(self.sources[values]() if values in self.sources else ())]
            cumulative, buckets = 0, []
            for bound, *counts in zip((*map(str, self.bounds), "+Inf"), *(each.counts for each in every), strict=True):
                cumulative += sum(counts)
                buckets.append((bound, cumulative))
            family.add_metric(list(values), buckets, sum(each.total for each in every))
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hit_counters: list[HitCounter] = []  # one per policy (see flush)
        r.register(_Fold(self))  # registered first: collected (and so folded) before the counters
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        Gauge("sidecar_build_info", "Always 1: the sidecar's version and the Python that runs it",
              ["version", "python"], registry=r).labels(sidecar.__version__, platform.python_version()).set(1)
        self.decisions = Counter(
            "sidecar_decisions", "Decisions by outcome, reason (docs/answers.md) and policy (none: no policy admitted "
            "the check)", ["outcome", "reason", "policy"], registry=r
        )
        self.decision_latency = LatencyHistogram(
            "sidecar_decision_seconds", "Time from a check's arrival to its answer, by outcome and cache result",
            ["outcome", "cache"])
        r.register(self.decision_latency)
        self.decision_latency.sources[("allow", "hit")] = lambda: (c.hits for c in self.hit_counters)
        self.idp_requests = Counter(
            "sidecar_idp_requests", "Calls to the IdP by kind and result", ["kind", "result"], registry=r
        )
        self.idp_latency = Histogram(
            "sidecar_idp_request_seconds", "IdP call latency by issuer and endpoint (introspection, jwks, discovery)",
            ["issuer", "endpoint"], buckets=IDP_BUCKETS, registry=r
        )
        self.cache = Counter("sidecar_cache", "Token cache lookups by result", ["result"], registry=r)
        self.cache_entries = Gauge("sidecar_cache_entries", "Tokens in the cache", registry=r)
        self.cache_capacity = Gauge("sidecar_cache_capacity", "Tokens the cache may hold (cache.max_entries)",
                                    registry=r)
        self.inflight = Gauge("sidecar_checks_in_flight", "Checks waiting for the IdP (a cache hit never waits)",
                              registry=r)
        self.ready = Gauge("sidecar_ready", "1 when the sidecar is ready", registry=r)
        self.tls_reload_errors = Counter(
            "sidecar_tls_reload_errors", "Failed reloads of certificate files", registry=r
        )
        self.client_cert_expiry = Gauge(
            "sidecar_idp_client_certificate_expiry_timestamp_seconds",
            "When the client certificate the sidecar presents to the IdP expires (Unix time; the earliest of "
            "several issuers')", registry=r)
        self.reloads = Counter("sidecar_config_reloads", "Configuration reloads (SIGHUP) by result: ok, failed, "
                               "refused (a key that needs a restart changed)", ["result"], registry=r)
        self.reload_ok = Gauge("sidecar_config_last_reload_successful",
                               "1 when the last reload succeeded (or none was asked), 0 when it failed", registry=r)
        self.reload_ok.set(1)
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")
        self.cache_coalesced = self.cache.labels("coalesced")
        self._decision_children: dict[tuple[str, str, str], Counter] = {}
        self._shared: dict[str, MetricWrapperBase] = {}

    def shared(self, kind: type[M], name: str, documentation: str, labels: Iterable[str] = (), **kwargs: Any) -> M:
        """The collector ``name``, registered once per process: a part rebuilt by a reload gets the
        one its predecessor registered (a registry refuses a name twice)."""
        found = self._shared.get(name)
        if found is None:
            found = self._shared[name] = kind(name, documentation, list(labels), registry=self.registry, **kwargs)
        if not isinstance(found, kind):  # pragma: no cover - two parts declaring one name differently
            raise TypeError(f"{name} is already a {type(found).__name__}")
        return found

    def decision(self, outcome: str, reason: str, policy: str = "default", count: int = 1) -> None:
        child = self._decision_children.get((outcome, reason, policy))
        if child is None:
            child = self._decision_children[(outcome, reason, policy)] = self.decisions.labels(outcome, reason, policy)
        child.inc(count)

    def retire(self, counters: Iterable[HitCounter]) -> None:
        """A replaced configuration's policies: their last hits folded (and their latencies kept
        in the histogram), then no longer read."""
        self.flush()
        gone = {id(counter) for counter in counters}
        kept = self.decision_latency.child("allow", "hit")
        for counter in self.hit_counters:
            if id(counter) in gone:
                kept.counts[:] = [a + b for a, b in zip(kept.counts, counter.hits.counts, strict=True)]
                kept.total += counter.hits.total
        self.hit_counters[:] = [c for c in self.hit_counters if id(c) not in gone]

    def flush(self) -> None:
        """Fold the hot-path counts into their counters (called on every registry read)."""
        for counter in self.hit_counters:
            total = sum(counter.hits.counts)
            count, counter.folded = total - counter.folded, total
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
