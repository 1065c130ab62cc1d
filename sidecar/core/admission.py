"""Fair admission of cache misses to the IdP: no client can spend the others' IdP capacity.

A cache miss costs an IdP call, and a client can make every request a miss (random tokens). So
each new IdP call is charged to a **source**, the client as well as the sidecar can tell it:

1. a client the sidecar can name: the certificate the proxy forwarded, when the sidecar verified
   its chain (``client_cert.ca_file``) or the IdP vouched for it (an active token bound to it was
   seen: the source is then the token's ``client_id``, so one client's certificates share a
   budget) — wherever it connects from, a NAT or a balancer's address shared with a flooder;
2. otherwise the client's address group: the address a trusted proxy vouches for
   (``admission.source_header``, last element: the hop the proxy itself added; for gRPC the
   downstream address Envoy reports), or else the peer's own address, grouped by prefix
   (``admission.ipv4_prefix``, ``admission.ipv6_prefix``: one IPv6 client holds a /64). A proxy
   that sends no source header is one source for all its clients (logged once: set the header).

A source gets at most ``admission.miss_rate`` new calls per second (a token bucket of
``admission.miss_burst``) and ``admission.max_share`` of the IdP slots (``idp.max_concurrent``)
at once; freed slots go to the waiting sources in turn (support/fair.py, in the IdP guard). An
IdP that answers 429 slows the source whose call it refused: that source is refused for the
``Retry-After`` (doubling with each further 429, at most ``admission.idp_backoff_max``), and the
others go on. Past any of these the check is denied at once with 429 ``rate_limited`` and
``Retry-After`` (fail closed, without waiting): cached tokens are unaffected, and the refusal is
not an IdP failure (it opens no breaker and serves nothing stale). Per-source state and the
clients the IdP vouched for are bounded memos (``admission.max_sources``); a reload hands them
to the new configuration (:meth:`Admission.carry`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable

from sidecar.config import AdmissionConfig
from sidecar.core.errors import Denial, RateLimited
from sidecar.core.extract import TrustedProxies
from sidecar.core.presented import PresentedCertificate
from sidecar.core.request import CheckRequest
from sidecar.core.token_info import TokenInfo
from sidecar.support.memo import Memo
from sidecar.support.ratelimit import TokenBucket

log = logging.getLogger(__name__)
MAX_SOURCE_LENGTH = 64
BACKOFF_FIRST = 1.0  # seconds a source is refused after the IdP's first 429 without Retry-After


class _Source(TokenBucket):
    """One source's rate (the bucket), its IdP calls in flight and its back-off after a 429."""

    __slots__ = ("backoffs", "in_flight", "refused_until")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        super().__init__(rate, burst, now)
        self.in_flight = 0
        self.refused_until = 0.0
        self.backoffs = 0  # consecutive 429s


class Admission:
    def __init__(self, config: AdmissionConfig, max_concurrent: int, *, trusted: TrustedProxies,
                 presented: PresentedCertificate | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._rate = config.miss_rate
        self._burst = float(config.miss_burst)
        self._share = max(1, math.floor(max_concurrent * config.max_share + 1e-9))
        self._prefixes = {4: config.ipv4_prefix, 6: config.ipv6_prefix}
        self._backoff_max = config.idp_backoff_max
        self._trusted = trusted
        self._presented = presented
        self._timer = timer
        self._sources: Memo[str, _Source] = Memo(config.max_sources)
        self._known: Memo[str, str] = Memo(config.max_sources)  # thumbprint -> the source the IdP vouched for
        self._groups: Memo[str, str] = Memo(4096)  # address string -> its group
        self._silent_proxies: Memo[str, bool] = Memo(256)  # trusted peers that sent no source header (logged)

    def carry(self, previous: Admission) -> None:
        """A reload: every source's budget, IdP calls in flight and back-off go on under the new
        limits, and the clients the IdP vouched for stay known; a reload never re-opens a source
        that was refused. The replaced configuration's calls still in flight leave the same state."""
        for source, state in previous._sources.items():
            state.rate, state.burst = self._rate, self._burst
            state.tokens = min(state.tokens, self._burst)
            self._sources.put(source, state)
        for thumbprint, known in previous._known.items():
            self._known.put(thumbprint, known)

    # -- whom a miss is charged to ---------------------------------------------------------------

    def source(self, request: CheckRequest) -> str:
        """Whom a miss is charged to (see the module doc); never raises."""
        thumbprint = self._thumbprint(request)
        if thumbprint is not None:
            if self._presented is not None and self._presented.trust is not None:
                return "x5t:" + thumbprint  # the chain was verified
            known = self._known.get(thumbprint)
            if known is not None:
                return known
        return self._address(request)

    def learn(self, info: TokenInfo) -> None:
        """An IdP answer: an active token bound to a certificate vouches that it is its client's."""
        bound = info.cnf_x5t_s256
        if info.active and bound is not None and self._known.get(bound) is None:
            self._known.put(bound, "client:" + (info.client_id or bound)[:MAX_SOURCE_LENGTH])

    def _thumbprint(self, request: CheckRequest) -> str | None:
        if self._presented is None or not (request.certificates or request.peer_certificate):
            return None
        try:
            return self._presented.thumbprint(request)
        except Denial:  # the verdict will say so; the miss is charged to the address
            return None

    def _address(self, request: CheckRequest) -> str:
        address = request.peer or ""
        if request.peer in self._trusted:
            forwarded = request.forwarded
            last = forwarded.rpartition(",")[2].strip() if forwarded else ""
            if last:
                address = last
            elif self._silent_proxies.get(address) is None:
                self._silent_proxies.put(address, True)
                log.warning("admission: a trusted proxy sends no source header; its clients share one budget",
                            extra={"peer": address})
        group = self._groups.get(address)
        if group is None:
            group = self._groups.put(address, self._group(address))
        return group

    def _group(self, address: str) -> str:
        """``ip:<network>`` for an address (IPv4-mapped IPv6 as IPv4), else the text itself, bounded."""
        try:
            ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
        except ValueError:
            return "src:" + address[:MAX_SOURCE_LENGTH]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        network = ipaddress.ip_network((ip, self._prefixes[ip.version]), strict=False)
        return f"ip:{network}"

    # -- the budget --------------------------------------------------------------------------------

    def enter(self, source: str) -> None:
        """Charge one IdP call to ``source``, or raise :class:`RateLimited`; pair with :meth:`leave`."""
        now = self._timer()
        state = self._sources.get(source)
        if state is None:
            state = self._sources.put(source, _Source(self._rate, self._burst, now))
        if state.refused_until > now:
            raise RateLimited("the IdP answered this source 429: backing off",
                              retry_after=max(1, math.ceil(state.refused_until - now)))
        if state.in_flight >= self._share:
            raise RateLimited(f"source has {state.in_flight} IdP calls in flight (admission.max_share)")
        wait = state.take(now)
        if wait:
            raise RateLimited("source is over admission.miss_rate", retry_after=max(1, math.ceil(wait)))
        state.in_flight += 1

    def leave(self, source: str, *, throttled: bool = False, retry_after: float = 0.0) -> None:
        """The call is over; ``throttled``: the IdP answered 429 (``retry_after``: its Retry-After)."""
        state = self._sources.get(source)
        if state is None:
            return
        if state.in_flight > 0:
            state.in_flight -= 1
        if not throttled:
            state.backoffs = 0
            return
        hold = min(self._backoff_max, max(retry_after, BACKOFF_FIRST * 2 ** min(state.backoffs, 16)))
        state.backoffs += 1
        state.refused_until = max(state.refused_until, self._timer() + hold)
        log.warning("admission: the IdP answered 429; this source backs off",
                    extra={"source": source, "seconds": round(hold, 3)})
