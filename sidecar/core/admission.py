"""Fair admission of cache misses to the IdP: one client cannot spend everyone's IdP capacity.

A cache miss costs an IdP call, and a client can make every request a miss (random tokens). So
each new IdP call is charged to its **source** — the client address a trusted proxy vouches for
(``admission.source_header``, last element: the hop the proxy itself added; for gRPC the
downstream address Envoy reports) — and a source gets at most:

- ``admission.miss_rate`` new calls per second (a token bucket of ``admission.miss_burst``);
- ``admission.max_share`` of the IdP slots (``idp.max_concurrent``) at once.

Past either, the check is denied at once with 429 ``rate_limited`` and ``Retry-After`` (fail
closed, and without waiting for a slot): cached tokens are unaffected, other sources keep their
share, and the refusal is not an IdP failure (it opens no breaker and serves nothing stale).
Per-source state is a bounded memo (``admission.max_sources``). A check without a vouched-for
source (no header, or not from a trusted proxy) is not limited: its peer is the proxy, which
speaks for every client, and limiting it would limit them all. The shipped proxy files send the
header; without it there is no per-client fairness.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sidecar.config import AdmissionConfig
from sidecar.core.errors import RateLimited
from sidecar.support.memo import Memo
from sidecar.support.ratelimit import TokenBucket

MAX_SOURCE_LENGTH = 64


def source_of(forwarded: str | None, trusted: bool) -> str | None:
    """The last hop of the forwarded header from a trusted peer; None when there is none."""
    if trusted and forwarded:
        last = forwarded.rpartition(",")[2].strip()
        if last:
            return last[:MAX_SOURCE_LENGTH]
    return None


class _Source(TokenBucket):
    """One source's rate (the bucket) and its IdP calls in flight."""

    __slots__ = ("in_flight",)

    def __init__(self, rate: float, burst: float, now: float) -> None:
        super().__init__(rate, burst, now)
        self.in_flight = 0


class Admission:
    def __init__(self, config: AdmissionConfig, max_concurrent: int, *,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._rate = config.miss_rate
        self._burst = float(config.miss_burst)
        self._share = max(1, math.floor(max_concurrent * config.max_share + 1e-9))
        self._timer = timer
        self._sources: Memo[str, _Source] = Memo(config.max_sources)

    def enter(self, source: str | None) -> None:
        """Charge one IdP call to ``source``, or raise :class:`RateLimited`; pair with :meth:`leave`."""
        if source is None:
            return
        now = self._timer()
        state = self._sources.get(source)
        if state is None:
            state = self._sources.put(source, _Source(self._rate, self._burst, now))
        if state.in_flight >= self._share:
            raise RateLimited(f"source has {state.in_flight} IdP calls in flight (admission.max_share)")
        wait = state.take(now)
        if wait:
            raise RateLimited("source is over admission.miss_rate", retry_after=max(1, math.ceil(wait)))
        state.in_flight += 1

    def leave(self, source: str | None) -> None:
        state = None if source is None else self._sources.get(source)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1
