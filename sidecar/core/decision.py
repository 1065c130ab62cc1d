"""The decision: extract → lookup → bind → authorize → headers, for every front (HTTP or gRPC).

One path. :meth:`Decider.decide_now` is synchronous: it extracts the token and, when the cache
holds it, returns the final :data:`Allow` or :class:`Deny` through :meth:`Decider._verdict`.
Only on a miss does it return :class:`Miss`, and :meth:`Decider.decide` then awaits the IdP (one
shared call per token, admitted per source) and runs the **same** :meth:`Decider._verdict` on the
fresh entry. A front calls ``decide_now`` and awaits ``decide`` only for a miss, so a cache hit
creates no coroutine; no check exists twice.

The policy is chosen per request before anything else (:class:`~sidecar.core.routes.Router`:
the proxy's named policy, else the first matching rule, else ``[policy]``) and travels with the
request to ``_verdict``, which applies it to the token's entry as seen by that policy
(:meth:`~sidecar.core.policies.Policies.view`).

Nothing here raises to a front: every failure, a bug included, becomes a Deny (fail closed).
With ``cache.stale_if_error``, a miss whose IdP call failed may use the token's last active,
bound answer (still bound and policy checked); such decisions carry ``stale: true`` in the log,
reason ``stale`` on allow, and ``sidecar_cache_total{result="stale"}``.
"""

from __future__ import annotations

import logging
import time

from sidecar.config import Config
from sidecar.core.admission import Admission, source_of
from sidecar.core.binding import check_binding, needs_certificate
from sidecar.core.cache import Lookup, TokenCache
from sidecar.core.client_cert import CertificateError, CertificateReader
from sidecar.core.decision_log import AllowLog
from sidecar.core.entry import Entry
from sidecar.core.errors import Denial, IdpUnavailable, InternalError, InvalidToken
from sidecar.core.extract import TrustedProxies, bearer_token
from sidecar.core.interning import Interner
from sidecar.core.policies import Policies
from sidecar.core.policy import Policy
from sidecar.core.request import CheckRequest
from sidecar.core.routes import Router
from sidecar.core.verifier import Verifier
from sidecar.support.logs import token_hash
from sidecar.support.metrics import Metrics

log = logging.getLogger("sidecar.decision")

NO_POLICY = "none"  # the policy label of a request no policy admits (only configured names otherwise)

# An allow is the cache entry itself: its upstream headers were built when it was filled, so
# allowing a cached token allocates nothing.
Allow = Entry


class Deny:
    __slots__ = ("denial", "token_hash")

    def __init__(self, denial: Denial, hashed: str | None = None) -> None:
        self.denial = denial
        self.token_hash = hashed


class Miss:
    """Not in the cache: :meth:`Decider.decide` must ask the IdP."""

    __slots__ = ("key", "policy", "token")

    def __init__(self, token: str, key: bytes, policy: Policy) -> None:
        self.token = token
        self.key = key
        self.policy = policy


class Decider:
    """Holds the stages of one configuration and runs them per request."""

    def __init__(self, config: Config, verifier: Verifier, metrics: Metrics) -> None:
        self.config = config
        self.cache = TokenCache(config.cache)
        self.policies = Policies(config)
        self.headers = self.policies.headers
        self.policy = self.policies.default
        cc = config.client_cert
        self.reader = CertificateReader(cc.format, trust_xfcc_hash=cc.xfcc_trust_hash, max_size=cc.max_size,
                                        memo_bytes=cc.memo_max_bytes)
        self.trusted_proxies = TrustedProxies(cc.trusted_proxies)
        self.router = Router(self.policy, self.policies.named, config.routes, config.routing, self.trusted_proxies)
        self.admission = Admission(config.admission, config.idp.max_concurrent)
        self.in_flight = 0  # checks awaiting the IdP (a cache hit never waits)
        self._verifier = verifier
        self._metrics = metrics
        metrics.hit_counters.extend(self.policies.all())
        self._log_allows = config.log.decisions == "all"
        self._log_denials = config.log.decisions != "off"
        metrics.cache_entries.set_function(lambda: len(self.cache))
        self._cache_stale = metrics.cache.labels("stale")
        self._allow_log = AllowLog(log)
        self._interner = Interner()

    def decide_now(self, request: CheckRequest) -> Allow | Deny | Miss:
        """Everything that needs no IdP: the final answer for a cached token, else a Miss."""
        try:
            policy = self.router.select(request)
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            return self._deny(InternalError(type(exc).__name__), None, None)
        if isinstance(policy, Denial):
            return self._deny(policy, None, None)  # no policy admits the request
        try:
            token = bearer_token(request.authorization)
            key = self.cache.key(token)
            entry = self.cache.get(key)
        except Denial as denial:
            return self._deny(denial, None, policy)
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            return self._deny(InternalError(type(exc).__name__), None, policy)
        if entry is None:
            return Miss(token, key, policy)
        return self._verdict(entry, request, "hit", policy)

    async def decide(self, request: CheckRequest, now: Allow | Deny | Miss | None = None) -> Allow | Deny:
        """The whole decision; ``now`` is what :meth:`decide_now` already said for this request."""
        if now is None:
            now = self.decide_now(request)
        if not isinstance(now, Miss):
            return now
        self.in_flight += 1
        try:
            entry, lookup = await self._lookup(now, request)
        except Denial as denial:
            return self._deny(denial, token_hash(now.token), now.policy)
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            return self._deny(InternalError(type(exc).__name__), token_hash(now.token), now.policy)
        finally:
            self.in_flight -= 1
        return self._verdict(entry, request, lookup, now.policy)

    def _verdict(self, entry: Entry, request: CheckRequest, lookup: Lookup, policy: Policy) -> Allow | Deny:
        """The checks of a token's answer against this request under ``policy``: the same for a hit
        and a miss."""
        try:
            entry = self.policies.view(entry, policy)  # the default's entry itself; else kept on it
            denial = entry.denial
            if denial is None:
                info = entry.info
                policy.check_time(info, time.time())
                if needs_certificate(info, policy.binding):
                    check_binding(info, self._presented(request), policy.binding)
                denial = entry.scope_denial
        except Denial as fresh:
            denial = fresh
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            denial = InternalError(type(exc).__name__)
        if denial is not None:
            self._count_lookup(lookup)
            return self._deny(denial, entry.token_hash, policy, stale=lookup == "stale")
        return self._allow(entry, lookup, policy)

    def _presented(self, request: CheckRequest) -> str | None:
        """The thumbprint of the certificate the proxy vouches for; None when there is none.

        A certificate header counts only from a trusted proxy. Two copies mean a proxy appended
        instead of replacing: fail closed rather than guess which copy it set.
        """
        certificates = request.certificates
        if not certificates or request.peer not in self.trusted_proxies:
            return None
        if len(certificates) > 1:
            raise InvalidToken("cert_invalid", "more than one client certificate header")
        if not certificates[0].strip():
            return None  # an empty header (Caddy sends one without a client certificate): none presented
        try:
            return (request.reader or self.reader).thumbprint(certificates[0])
        except CertificateError as exc:
            raise InvalidToken("cert_invalid", f"client certificate header: {exc}") from None

    async def _lookup(self, miss: Miss, request: CheckRequest) -> tuple[Entry, Lookup]:
        """A miss: one shared IdP call; when the IdP itself fails, the stale entry if allowed."""
        try:
            return await self.cache.get_or_load(miss.key, lambda: self._load(miss.token, request))
        except IdpUnavailable as failure:
            stale = self.cache.stale(miss.key, failure)
            if stale is None:
                raise
            return stale, "stale"

    async def _load(self, token: str, request: CheckRequest) -> Entry:
        """Ask the verifier (charged to the request's source), then precompute what a hit needs."""
        source = source_of(request.forwarded, request.peer in self.trusted_proxies)
        self.admission.enter(source)
        try:
            info = self._interner.info(await self._verifier.verify(token))  # shared values: memory per token
        finally:
            self.admission.leave(source)
        return Entry(
            info=info,
            headers=self.headers.build(info),
            denial=self.policy.static_denial(info),
            scope_denial=self.policy.scope_denial(info),
            token_hash=token_hash(token),
        )

    def _count_lookup(self, lookup: Lookup) -> None:
        m = self._metrics
        (m.cache_hit if lookup == "hit" else m.cache_miss if lookup == "miss"
         else m.cache_coalesced if lookup == "coalesced" else self._cache_stale).inc()

    def _allow(self, entry: Entry, lookup: Lookup, policy: Policy) -> Allow:
        if lookup == "stale":
            return self._allow_stale(entry, policy)
        if lookup == "hit":
            policy.hit_allows += 1  # folded into the hit and allow counters when scraped
        else:
            self._count_lookup(lookup)
            self._metrics.decision("allow", "ok", policy.name)
        if self._log_allows:
            self._allow_log.write(entry.token_hash, lookup, entry.info.client_id, policy.name)
        return entry

    def _allow_stale(self, entry: Entry, policy: Policy) -> Allow:
        """Always logged, whatever log.decisions says: an answer the IdP did not give just now."""
        self._count_lookup("stale")
        self._metrics.decision("allow", "stale", policy.name)
        log.warning("allow", extra={"outcome": "allow", "reason": "stale", "stale": True, "policy": policy.name,
                                    "token": entry.token_hash, "client_id": entry.info.client_id})
        return entry

    def _deny(self, denial: Denial, hashed: str | None, policy: Policy | None, *, stale: bool = False) -> Deny:
        """``policy`` None: none was chosen (no rule matched, or the proxy named an unknown policy: a
        configuration error, always logged as a warning)."""
        name = NO_POLICY if policy is None else policy.name
        self._metrics.decision("deny", denial.reason, name)
        unknown = denial.reason == "policy_unknown"
        if self._log_denials or unknown:
            extra = {"outcome": "deny", "reason": denial.reason, "status": denial.status, "policy": name,
                     "token": hashed, "detail": denial.detail}
            log.log(logging.WARNING if unknown else logging.INFO, "deny",
                    extra={**extra, "stale": True} if stale else extra)
        return Deny(denial, hashed)
