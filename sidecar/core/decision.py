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
import math
import time

from sidecar.config import CertFormat, Config
from sidecar.core.admission import Admission, source_of
from sidecar.core.binding import check_binding, needs_certificate
from sidecar.core.cache import Lookup, TokenCache
from sidecar.core.client_cert import CertificateError, CertificateReader
from sidecar.core.client_trust import ClientTrust, window_problem
from sidecar.core.decision_log import AllowLog
from sidecar.core.dpop import ProofVerifier, access_token_hash
from sidecar.core.entry import Entry
from sidecar.core.errors import Denial, IdpUnavailable, InternalError, InvalidDpopProof, InvalidRequest, InvalidToken
from sidecar.core.extract import TrustedProxies, access_token
from sidecar.core.htu import target
from sidecar.core.interning import Interner
from sidecar.core.policies import Policies
from sidecar.core.policy import Policy
from sidecar.core.replay import LocalReplayStore, SharedReplay
from sidecar.core.request import CheckRequest
from sidecar.core.routes import Router
from sidecar.core.shared import SharedAnswers
from sidecar.core.verifier import Verifier
from sidecar.support.logs import token_hash
from sidecar.support.metrics import Metrics

log = logging.getLogger("sidecar.decision")

NO_POLICY = "none"  # the policy label of a request no policy admits (only configured names otherwise)

# An allow is the cache entry itself: its upstream headers were built when it was filled, so
# allowing a cached token allocates nothing.
Allow = Entry


class Deny:
    __slots__ = ("denial", "dpop", "token_hash")

    def __init__(self, denial: Denial, hashed: str | None = None, dpop: bool = False) -> None:
        self.denial = denial
        self.token_hash = hashed
        self.dpop = dpop  # the request used the DPoP scheme: its challenge carries the error (RFC 9449 §7.1)


class Pending:
    """:meth:`Decider.decide_now` cannot answer without awaiting: hand it to :meth:`Decider.decide`."""

    __slots__ = ()


class Miss(Pending):
    """Not in the cache: :meth:`Decider.decide` must ask the IdP."""

    __slots__ = ("dpop", "key", "policy", "token")

    def __init__(self, token: str, key: bytes, policy: Policy, dpop: bool = False) -> None:
        self.token = token
        self.key = key
        self.policy = policy
        self.dpop = dpop  # the token came with the DPoP scheme


class ReplayClaim(Pending):
    """Every check passed, the DPoP proof too; the fleet must still confirm that no other replica
    accepted this proof (:class:`~sidecar.core.replay.SharedReplay`) before the allow."""

    __slots__ = ("entry", "key", "lookup", "policy", "until")

    def __init__(self, entry: Entry, lookup: Lookup, policy: Policy, key: bytes, until: float) -> None:
        self.entry = entry
        self.lookup = lookup
        self.policy = policy
        self.key = key
        self.until = until


class Decider:
    """Holds the stages of one configuration and runs them per request."""

    def __init__(self, config: Config, verifier: Verifier, metrics: Metrics,
                 shared: SharedAnswers | None = None, shared_replay: SharedReplay | None = None) -> None:
        """``shared``: the fleet's cache level; ``shared_replay``: its DPoP replay store."""
        self.config = config
        self.cache = TokenCache(config.cache, secret=None if shared is None else shared.digest_key)
        self._shared = shared  # a second cache level (the fleet's), asked on a miss before the IdP
        self.policies = Policies(config)
        self.headers = self.policies.headers
        self.policy = self.policies.default
        dp = config.dpop
        self._shared_replay = shared_replay if dp.enabled else None
        secret = None if self._shared_replay is None else self._shared_replay.secret  # replicas name a proof alike
        self.dpop = ProofVerifier(dp, LocalReplayStore(dp.replay_max_entries), secret=secret) if dp.enabled else None
        self.dpop_algs = self.dpop.algs if self.dpop is not None else None  # the DPoP challenge's algs
        cc = config.client_cert
        self.trust = ClientTrust(cc.ca_file, require_client_auth=cc.require_client_auth) if cc.ca_file else None
        self._readers: list[CertificateReader] = []
        self.reader = self.reader_for(cc.format)
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
        self._deny_forged = config.response.forged_headers == "deny"

    def reader_for(self, fmt: CertFormat) -> CertificateReader:
        """A certificate reader for ``fmt`` with this configuration's limits and CA trust."""
        cc = self.config.client_cert
        reader = CertificateReader(fmt, trust_xfcc_hash=cc.xfcc_trust_hash, max_size=cc.max_size,
                                   memo_bytes=cc.memo_max_bytes, trust=self.trust)
        self._readers.append(reader)
        return reader

    def reload_client_trust(self) -> bool:
        """Reload ``client_cert.ca_file`` if it changed; every memoized verdict is then dropped."""
        if self.trust is None or not self.trust.reload():
            return False
        for reader in self._readers:
            reader.forget()
        return True

    def decide_now(self, request: CheckRequest) -> Allow | Deny | Pending:
        """Everything that needs no await: the final answer for a cached token, else a Miss (or, for a
        DPoP request in a fleet, the ReplayClaim to confirm)."""
        if request.forged and self._deny_forged:  # response.forged_headers = "deny" (core/forged.py)
            forged = InvalidRequest("credential_header_forged", ", ".join(request.forged)[:256])
            return self._deny(forged, None, None)
        try:
            policy = self.router.select(request)
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            return self._deny(InternalError(type(exc).__name__), None, None)
        if isinstance(policy, Denial):
            return self._deny(policy, None, None)  # no policy admits the request
        try:
            token, dpop = access_token(request.authorization, dpop=self.dpop is not None)
            key = self.cache.key(token)
            entry = self.cache.get(key)
        except Denial as denial:
            return self._deny(denial, None, policy)
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            return self._deny(InternalError(type(exc).__name__), None, policy)
        if entry is None:
            return Miss(token, key, policy, dpop)
        return self._verdict(entry, request, "hit", policy, token if dpop else None)

    async def decide(self, request: CheckRequest, now: Allow | Deny | Pending | None = None) -> Allow | Deny:
        """The whole decision; ``now`` is what :meth:`decide_now` already said for this request."""
        if now is None:
            now = self.decide_now(request)
        if isinstance(now, ReplayClaim):
            return await self._confirm(now)
        if not isinstance(now, Miss):
            assert isinstance(now, Allow | Deny)  # Pending has these two kinds only
            return now
        self.in_flight += 1
        try:
            entry, lookup = await self._lookup(now, request)
        except Denial as denial:
            return self._deny(denial, token_hash(now.token), now.policy, dpop=now.dpop)
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            return self._deny(InternalError(type(exc).__name__), token_hash(now.token), now.policy, dpop=now.dpop)
        finally:
            self.in_flight -= 1
        verdict = self._verdict(entry, request, lookup, now.policy, now.token if now.dpop else None)
        return await self._confirm(verdict) if isinstance(verdict, ReplayClaim) else verdict

    async def _confirm(self, claim: ReplayClaim) -> Allow | Deny:
        """The fleet-wide half of the replay check (RFC 9449 §11.1): allow only if no other replica
        accepted this proof. The store answers from this replica alone when Redis fails (the local
        check already passed); anything else unexpected denies."""
        assert self._shared_replay is not None
        try:
            first = await self._shared_replay.claim(claim.key, claim.until)
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            denial: Denial = InternalError(type(exc).__name__)
        else:
            if first:
                return self._allow(claim.entry, claim.lookup, claim.policy)
            denial = InvalidDpopProof("dpop_replayed", "this proof's jti was already used on another replica")
        self._count_lookup(claim.lookup)
        return self._deny(denial, claim.entry.token_hash, claim.policy, dpop=True)

    def _verdict(self, entry: Entry, request: CheckRequest, lookup: Lookup, policy: Policy,
                 dpop: str | None = None) -> Allow | Deny | ReplayClaim:
        """The checks of a token's answer against this request under ``policy``: the same for a hit
        and a miss.

        ``dpop``: the token, when it came with the DPoP scheme. The binding step verifies the method
        the token is bound by: a DPoP proof for ``cnf.jkt`` (and for the DPoP scheme), else the
        certificate.
        """
        claimed = None
        try:
            entry = self.policies.view(entry, policy)  # the default's entry itself; else kept on it
            denial = entry.denial
            if denial is None:
                info = entry.info
                policy.check_time(info, time.time())
                if dpop is not None or info.cnf_jkt is not None:
                    claimed = self._check_proof(info.cnf_jkt, request, dpop)
                elif needs_certificate(info, policy.binding):
                    check_binding(info, self._presented(request), policy.binding)
                denial = entry.scope_denial
        except Denial as fresh:
            denial = fresh
        except Exception as exc:  # a bug must deny, never answer 500 or allow
            log.exception("decision failed", extra={"error_type": type(exc).__name__})
            denial = InternalError(type(exc).__name__)
        if denial is not None:
            self._count_lookup(lookup)
            return self._deny(denial, entry.token_hash, policy, stale=lookup == "stale", dpop=dpop is not None)
        if claimed is not None and self._shared_replay is not None:
            return ReplayClaim(entry, lookup, policy, *claimed)
        return self._allow(entry, lookup, policy)

    def _check_proof(self, jkt: str | None, request: CheckRequest, token: str | None) -> tuple[bytes, float]:
        """RFC 9449 §7.1-7.2: a DPoP-bound token only with the DPoP scheme and a valid proof, and the
        DPoP scheme only with a DPoP-bound token (no downgrade either way). ``token``: the token sent
        with the DPoP scheme, else None."""
        if token is None:
            raise InvalidToken("dpop_scheme_required", "a DPoP-bound token came with the Bearer scheme")
        if jkt is None or self.dpop is None:
            raise InvalidToken("dpop_token_unbound", "the DPoP scheme with a token not bound by cnf.jkt")
        method = uri = None
        if request.peer in self.trusted_proxies:  # only a trusted proxy describes the original request
            method, uri = request.method, target(request.scheme, request.host, request.path)
        return self.dpop.verify(request.dpop, jkt=jkt, ath=access_token_hash(token), method=method, uri=uri)

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
        value = certificates[0]
        if not value or value.isspace():  # isspace, not strip: no copy of a 2 KB header per request
            return None  # an empty header (Caddy sends one without a client certificate): none presented
        reader = request.reader or self.reader
        try:
            if self.trust is None:
                return reader.thumbprint(value)
            presented = reader.presented(value)
        except CertificateError as exc:
            raise InvalidToken("cert_invalid", f"client certificate header: {exc}") from None
        problem = window_problem(presented, time.time(), self.config.policy.leeway) or presented.problem
        if problem is not None:
            raise InvalidToken(problem, "the client certificate is not valid under client_cert.ca_file")
        return presented.thumbprint

    async def _lookup(self, miss: Miss, request: CheckRequest) -> tuple[Entry, Lookup]:
        """A miss: one shared IdP call; when the IdP itself fails, the stale entry if allowed."""
        try:
            return await self.cache.get_or_load(miss.key, lambda: self._load(miss, request))
        except IdpUnavailable as failure:
            stale = self.cache.stale(miss.key, failure)
            if stale is None:
                raise
            return stale, "stale"

    async def _load(self, miss: Miss, request: CheckRequest) -> Entry:
        """Ask the verifier (charged to the request's source), then precompute what a hit needs."""
        token = miss.token
        source = source_of(request.forwarded, request.peer in self.trusted_proxies)
        self.admission.enter(source)
        try:
            if self._shared is None:
                info, until = await self._verifier.verify(token), math.inf
            else:
                info, until = await self._shared.load(miss.key, token, lambda: self._verifier.verify(token))
            info = self._interner.info(info)  # shared values: memory per token
        finally:
            self.admission.leave(source)
        return Entry(
            info=info,
            headers=self.headers.build(info),
            denial=self.policy.static_denial(info),
            scope_denial=self.policy.scope_denial(info),
            token_hash=token_hash(token),
            until=until,
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

    def _deny(self, denial: Denial, hashed: str | None, policy: Policy | None, *, stale: bool = False,
              dpop: bool = False) -> Deny:
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
        return Deny(denial, hashed, dpop)
