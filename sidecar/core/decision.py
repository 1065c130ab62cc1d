"""The decision: extract → lookup → bind → authorize → headers, for any front (HTTP or gRPC).

Fronts turn their protocol into a :class:`CheckRequest` and render the :class:`Allow` or
:class:`Deny` they get back; only they know HTTP or gRPC. Nothing here raises to a front: every
failure, including a bug, becomes a Deny (fail closed). With ``cache.stale_if_error``, a miss
whose IdP call failed may use the token's last active, bound answer (still bound and policy
checked); such decisions carry ``stale: true`` in the log, reason ``stale`` on allow, and
``sidecar_cache_total{result="stale"}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.config import Config
from sidecar.core.binding import check_binding, needs_certificate
from sidecar.core.cache import Entry, Lookup, TokenCache
from sidecar.core.client_cert import CertificateError, CertificateReader
from sidecar.core.decision_log import AllowLog
from sidecar.core.errors import Denial, IdpUnavailable, InternalError, InvalidToken
from sidecar.core.extract import bearer_token
from sidecar.core.interning import Interner
from sidecar.core.policy import Policy
from sidecar.core.response import CredentialHeaders, HeaderBuilder
from sidecar.core.token_info import TokenInfo
from sidecar.support.logs import token_hash
from sidecar.support.metrics import Metrics

log = logging.getLogger("sidecar.decision")


class Verifier(Protocol):
    """Says what a token is: introspection, local JWT validation, or a choice of the two."""

    async def verify(self, token: str) -> TokenInfo: ...


@dataclass(frozen=True, slots=True)
class CheckRequest:
    authorization: Sequence[str]  # every Authorization field value received
    certificate: str | None = None  # the forwarded certificate, only from a trusted peer
    reader: CertificateReader | None = None  # how to read it; None: the configured format
    certificate_duplicated: bool = False  # the header came more than once: which one is the proxy's?


@dataclass(frozen=True, slots=True)
class Allow:
    headers: Mapping[str, str]
    entry: Entry
    lookup: Lookup


@dataclass(frozen=True, slots=True)
class Deny:
    denial: Denial
    token_hash: str | None = None


class HitEntry(Protocol):
    """A cached entry as :meth:`Decider.decide_hit` returns it: headers built by HeaderBuilder."""

    @property
    def headers(self) -> CredentialHeaders: ...


class Decider:
    """Holds the stages of one configuration and runs them per request."""

    def __init__(self, config: Config, verifier: Verifier, metrics: Metrics) -> None:
        self.config = config
        self.cache = TokenCache(config.cache.max_entries, stale_if_error=config.cache.stale_if_error)
        self.headers = HeaderBuilder(config.response)
        self.policy = Policy(config.policy)
        self.reader = CertificateReader(
            config.client_cert.format, trust_xfcc_hash=config.client_cert.xfcc_trust_hash
        )
        self._verifier = verifier
        self._metrics = metrics
        self._binding = config.policy.binding
        self._log_allows = config.log.decisions == "all"
        self._log_denials = config.log.decisions != "off"
        metrics.cache_entries.set_function(lambda: len(self.cache))
        self._cache_stale = metrics.cache.labels("stale")
        self._allow_log = AllowLog(log)
        self._interner = Interner()

    def decide_hit(self, authorization: Sequence[str], certificate: str | None) -> HitEntry | None:
        """The hot path: the entry when :meth:`decide` would allow from the cache, else None.

        Synchronous and allocation-free: no CheckRequest, no Allow, no coroutine. On None nothing
        was counted or logged; the caller runs :meth:`decide`, which repeats the cheap steps and
        does the rest (miss, denial, error). An allow here is counted and logged as decide's.
        """
        try:
            entry = self.cache.get(self.cache.key(bearer_token(authorization)))
            if entry is None or entry.denial is not None or entry.scope_denial is not None:
                return None
            info = entry.info
            self.policy.check_time(info, time.time())
            if needs_certificate(info, self._binding):
                presented = None if certificate is None else self.reader.thumbprint(certificate)
                check_binding(info, presented, self._binding)
        except Exception:  # a denial, an unreadable certificate or a bug: decide() handles it
            return None
        self._metrics.hit_allows += 1
        if self._log_allows:
            self._allow_log.write(entry.token_hash, "hit", info.client_id)
        return entry  # type: ignore[return-value]  # cached entries carry HeaderBuilder's headers


    async def decide(self, request: CheckRequest) -> Allow | Deny:
        token: str | None = None
        entry: Entry | None = None
        lookup: Lookup = "hit"
        try:
            token = bearer_token(request.authorization)
            key = self.cache.key(token)
            entry = self.cache.get(key)
            if entry is None:
                entry, lookup = await self._lookup(key, token)
            self._count_lookup(lookup)
            if entry.denial is not None:
                return self._deny(entry.denial, entry.token_hash)
            self.policy.check_time(entry.info, time.time())
            if needs_certificate(entry.info, self._binding):
                check_binding(entry.info, self._thumbprint(request), self._binding)
            if entry.scope_denial is not None:
                return self._deny(entry.scope_denial, entry.token_hash, stale=lookup == "stale")
            return self._allow(entry, lookup)
        except Denial as denial:
            return self._deny(denial, _hash_of(entry, token), stale=lookup == "stale")
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            return self._deny(InternalError(type(exc).__name__), _hash_of(entry, token))

    async def _lookup(self, key: bytes, token: str) -> tuple[Entry, Lookup]:
        """A miss: one shared IdP call; when the IdP cannot answer, the stale entry if allowed."""
        try:
            return await self.cache.get_or_load(key, lambda: self._load(token))
        except IdpUnavailable:
            stale = self.cache.stale(key)
            if stale is None:
                raise
            return stale, "stale"

    async def _load(self, token: str) -> Entry:
        """A cache miss: ask the verifier, then precompute everything a hit needs."""
        info = self._interner.info(await self._verifier.verify(token))  # shared values: memory per token
        wall, mono = time.time(), time.monotonic()
        cache = self.config.cache
        if info.active:
            ttl = cache.max_ttl if info.exp is None else min(cache.max_ttl, info.exp - wall)
        else:
            ttl = cache.negative_ttl
        return Entry(
            info=info,
            headers=self.headers.build(info),
            denial=self.policy.static_denial(info),
            scope_denial=self.policy.scope_denial(info),
            token_hash=token_hash(token),
            expires=mono + ttl,
        )

    def _thumbprint(self, request: CheckRequest) -> str | None:
        if request.certificate_duplicated:  # fail closed rather than guess which copy the proxy set
            raise InvalidToken("cert_invalid", "more than one client certificate header")
        if request.certificate is None:
            return None
        try:
            return (request.reader or self.reader).thumbprint(request.certificate)
        except CertificateError as exc:
            raise InvalidToken("cert_invalid", f"client certificate header: {exc}") from None

    def _count_lookup(self, lookup: Lookup) -> None:
        m = self._metrics
        (m.cache_hit if lookup == "hit" else m.cache_miss if lookup == "miss"
         else m.cache_coalesced if lookup == "coalesced" else self._cache_stale).inc()

    def _allow(self, entry: Entry, lookup: Lookup) -> Allow:
        if lookup == "stale":
            return self._allow_stale(entry)
        self._metrics.decision("allow", "ok")
        if self._log_allows:
            log.info("allow", extra={"outcome": "allow", "reason": "ok", "token": entry.token_hash,
                                     "cache": lookup, "client_id": entry.info.client_id})
        return Allow(entry.headers, entry, lookup)

    def _allow_stale(self, entry: Entry) -> Allow:
        """Always logged, whatever log.decisions says: an answer the IdP did not give just now."""
        self._metrics.decision("allow", "stale")
        log.warning("allow", extra={"outcome": "allow", "reason": "stale", "stale": True,
                                    "token": entry.token_hash, "client_id": entry.info.client_id})
        return Allow(entry.headers, entry, "stale")

    def _deny(self, denial: Denial, hashed: str | None, *, stale: bool = False) -> Deny:
        self._metrics.decision("deny", denial.reason)
        if self._log_denials:
            extra = {"outcome": "deny", "reason": denial.reason, "status": denial.status,
                     "token": hashed, "detail": denial.detail}
            log.info("deny", extra={**extra, "stale": True} if stale else extra)
        return Deny(denial, hashed)


def _hash_of(entry: Entry | None, token: str | None) -> str | None:
    if entry is not None:
        return entry.token_hash
    return token_hash(token) if token else None
