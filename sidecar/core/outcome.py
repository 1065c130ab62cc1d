"""What a decision ends in, and every metric and log line of it.

:meth:`~sidecar.core.decision.Decider.decide_now` ends in an allow (the token's cache
:class:`~sidecar.core.entry.Entry` itself: its upstream headers were built when it was filled, so
allowing a cached token allocates nothing), a :class:`Deny`, or a :class:`Pending` step that
needs an await: a :class:`Miss` (ask the IdP) or a :class:`ReplayClaim` (ask the fleet whether
another replica accepted the DPoP proof).

:class:`Outcomes` records each outcome exactly once: the ``sidecar_decisions_total`` and
``sidecar_cache_total`` counters, the ``sidecar_decision_seconds`` histogram, the decision log
line (allows batched by :class:`~sidecar.core.decision_log.DecisionLog`; denials per
``log.decisions``; stale allows and ``policy_unknown`` always), the check's span when tracing is on
and the check sampled (:mod:`sidecar.support.tracing`) — and turns every failure, a bug included,
into a Deny (fail closed): :meth:`Outcomes.refuse` is the one place an unexpected exception
becomes ``internal_error``.
"""

from __future__ import annotations

import contextlib
import logging
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from time import time
from typing import TYPE_CHECKING

from sidecar.config import Config
from sidecar.core.cache import Lookup
from sidecar.core.decision_log import DecisionLog
from sidecar.core.entry import Entry
from sidecar.core.errors import Denial, InternalError, InvalidRequest
from sidecar.core.extract import TrustedProxies
from sidecar.core.policy import Policy
from sidecar.core.request import CheckRequest
from sidecar.support.metrics import DECISION_BUCKETS, Metrics
from sidecar.support.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("sidecar.decision")
NO_CACHE = "none"  # the cache label of a decision that ended before the cache was asked
FIRST_BUCKET = DECISION_BUCKETS[0]

NO_POLICY = "none"  # the policy label of a request no policy admits (only configured names otherwise)


class Deny:
    __slots__ = ("denial", "dpop_scheme", "token_hash")

    def __init__(self, denial: Denial, hashed: str | None = None, dpop_scheme: bool = False) -> None:
        self.denial = denial
        self.token_hash = hashed
        self.dpop_scheme = dpop_scheme  # the request used the DPoP scheme: that challenge carries the error (§7.1)


class Pending:
    """:meth:`Decider.decide_now` cannot answer without awaiting: hand it to :meth:`Decider.decide`."""

    __slots__ = ()


class Miss(Pending):
    """Not in the cache: :meth:`Decider.decide` must ask the IdP."""

    __slots__ = ("dpop_scheme", "key", "policy", "token")

    def __init__(self, token: str, key: bytes, policy: Policy, dpop_scheme: bool = False) -> None:
        self.token = token
        self.key = key
        self.policy = policy
        self.dpop_scheme = dpop_scheme  # the token came with the DPoP scheme


class ReplayClaim(Pending):
    """Every check passed, the DPoP proof too; the fleet must still confirm that no other replica
    accepted this proof (:class:`~sidecar.core.ports.SharedReplay`) before the allow."""

    __slots__ = ("entry", "key", "lookup", "policy", "request", "until")

    def __init__(self, entry: Entry, lookup: Lookup, policy: Policy, request: CheckRequest, key: bytes,
                 until: float) -> None:
        self.request = request
        self.entry = entry
        self.lookup = lookup
        self.policy = policy
        self.key = key
        self.until = until


def forged_denial(names: Sequence[str]) -> Denial:
    """``response.forged_headers = "deny"``: a client-sent copy of a credential header."""
    return InvalidRequest("credential_header_forged", ", ".join(names)[:256])


class Outcomes:
    """Records allows and denials (metrics, log lines, spans) for one configuration."""

    def __init__(self, config: Config, metrics: Metrics, policies: Sequence[Policy], trusted: TrustedProxies,
                 tracing: Tracing | None = None) -> None:
        self._metrics = metrics
        self.policies = list(policies)
        metrics.hit_counters.extend(policies)  # allowed hits: latencies per policy, folded when scraped
        self._log_allows = config.log.decisions == "all"
        self._log_denials = config.log.decisions != "off"
        self.decision_log = DecisionLog(log, trusted, config.log.allow_sample_ratio)
        self._cache_stale = metrics.cache.labels("stale")
        self._latency = metrics.decision_latency
        self._trusted = trusted
        self.tracing = tracing  # None: tracing off, nothing more than this test per decision
        self._waiting: dict[int, Span] = {}  # the spans of checks awaiting the IdP, by id of their request

    def allow(self, entry: Entry, lookup: Lookup, policy: Policy, request: CheckRequest) -> Entry:
        """An allow of ``entry`` under ``policy``. A cache hit (the hot path) records its latency in
        its policy's ``hits``, which is also its count as a hit and as an allow (folded when
        scraped), and at most a line and a span; any other allow goes through :meth:`_fresh`."""
        if lookup != "hit":
            return self._fresh(entry, lookup, policy, request)
        now = time()
        seconds = now - request.started
        hits = policy.hits  # Latencies.observe, inlined: nearly every hit lands in the first bucket
        if seconds <= FIRST_BUCKET:
            hits.counts[0] += 1
            if seconds > 0.0:  # a wall clock stepped back: counted, nothing added to the sum
                hits.total += seconds
        else:
            hits.counts[bisect_left(DECISION_BUCKETS, seconds)] += 1
            hits.total += seconds
        trace_id = None if self.tracing is None else self._traced(request, "allow", lookup, policy.name, entry,
                                                                  200, "ok")
        if self._log_allows:
            self.decision_log.allow(now, entry, lookup, policy, request, trace_id)
        return entry

    def _fresh(self, entry: Entry, lookup: Lookup, policy: Policy, request: CheckRequest) -> Entry:
        """An allow of an answer the IdP gave for this check (or another waiting for it), or a stale
        one: a stale allow is always logged (the IdP did not give this answer just now), whatever
        ``log.decisions`` says."""
        now = time()
        stale = lookup == "stale"
        self.count(lookup)
        self._metrics.decision("allow", "stale" if stale else "ok", policy.name)
        self._latency.child("allow", lookup).observe(max(now - request.started, 0.0))
        trace_id = None if self.tracing is None else self._traced(request, "allow", lookup, policy.name, entry,
                                                                  200, "stale" if stale else "ok")
        if stale:
            log.warning("allow", extra={"outcome": "allow", "reason": "stale", "stale": True, "token": entry.token_hash,
                                        "cache": lookup, "client_id": entry.info.client_id, "policy": policy.name,
                                        **self.decision_log.request_fields(request, now, trace_id)})
        elif self._log_allows:
            self.decision_log.allow(now, entry, lookup, policy, request, trace_id)
        return entry

    def deny(self, denial: Denial, hashed: str | None, policy: Policy | None, request: CheckRequest, *,
             lookup: Lookup | None = None, dpop_scheme: bool = False, entry: Entry | None = None,
             missed: bool = False) -> Deny:
        """A denial; ``policy`` None: none was chosen (no rule matched, or the proxy named an unknown
        policy: a configuration error, always logged as a warning); ``lookup``: the cache lookup the
        token's answer came from, when there was one; ``entry``: that answer; ``missed``: the cache
        missed and the IdP call failed (labelled ``miss``, not counted as a lookup)."""
        now = time()
        if lookup is not None:
            self.count(lookup)
        name = NO_POLICY if policy is None else policy.name
        cache = "miss" if missed else NO_CACHE if lookup is None else lookup
        self._metrics.decision("deny", denial.reason, name)
        self._latency.child("deny", cache).observe(max(now - request.started, 0.0))
        trace_id = None if self.tracing is None else self._traced(request, "deny", cache, name, entry, denial.status,
                                                                  denial.reason)
        unknown = denial.reason == "policy_unknown"
        if self._log_denials or unknown:
            extra = {"outcome": "deny", "reason": denial.reason, "status": denial.status, "token": hashed,
                     "cache": cache, "client_id": None if entry is None else entry.info.client_id, "policy": name,
                     "detail": denial.detail, **self.decision_log.request_fields(request, now, trace_id)}
            if lookup == "stale":
                extra["stale"] = True
            log.log(logging.WARNING if unknown else logging.INFO, "deny", extra=extra)
        return Deny(denial, hashed, dpop_scheme)

    def refuse(self, exc: Exception, hashed: str | None, policy: Policy | None, request: CheckRequest, *,
               lookup: Lookup | None = None, dpop_scheme: bool = False, entry: Entry | None = None,
               missed: bool = False) -> Deny:
        """Fail closed: a Denial raised by a stage is denied as such; anything else is a bug, logged
        with its type and denied as ``internal_error`` (503), never a 500 and never an allow."""
        if not isinstance(exc, Denial):
            log.error("decision failed", exc_info=exc, extra={"error_type": type(exc).__name__})
            exc = InternalError(type(exc).__name__)
        return self.deny(exc, hashed, policy, request, lookup=lookup, dpop_scheme=dpop_scheme, entry=entry,
                         missed=missed)

    def count(self, lookup: Lookup) -> None:
        m = self._metrics
        (m.cache_hit if lookup == "hit" else m.cache_miss if lookup == "miss"
         else m.cache_coalesced if lookup == "coalesced" else self._cache_stale).inc()

    @contextlib.contextmanager
    def waiting(self, request: CheckRequest) -> Iterator[None]:
        """A check that awaits the IdP (or Redis): its span (when sampled) is made now and is the
        parent of the spans of the calls it causes."""
        tracing = self.tracing
        parent = False if tracing is None else tracing.parent(request.headers, request.peer in self._trusted)
        if parent is False:
            yield
            return
        assert tracing is not None and not isinstance(parent, bool)
        span = tracing.start(parent, request.started)
        self._waiting[id(request)] = span
        try:
            with tracing.active(span):
                yield
        finally:
            self._waiting.pop(id(request), None)

    def _traced(self, request: CheckRequest, outcome: str, cache: str, policy: str, entry: Entry | None,
                status: int, reason: str) -> str | None:
        """End the check's span (made now for a check that did not wait); its trace id, or None
        when the check is not sampled."""
        tracing = self.tracing
        assert tracing is not None
        span = self._waiting.pop(id(request), None)
        parent = None
        if span is None:  # a check that did not wait: its span is made now, sampled or not
            parent = tracing.parent(request.headers, request.peer in self._trusted)
            if parent is False:
                return None
        attributes: dict[str, str | int] = {"sidecar.outcome": outcome, "sidecar.reason": reason,
                                            "sidecar.cache": cache, "sidecar.policy": policy,
                                            "http.response.status_code": status}
        if entry is not None and entry.info.client_id:
            attributes["sidecar.client_id"] = entry.info.client_id[:256]
        if span is None:
            assert not isinstance(parent, bool)
            span = tracing.start(parent, request.started, attributes)  # given at once: cheaper than set after
            tracing.finish(span, error=status >= 500)
        else:
            tracing.finish(span, attributes, error=status >= 500)
        return tracing.trace_id(span)
