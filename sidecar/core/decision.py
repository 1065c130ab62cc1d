"""The decision: target → extract → lookup → bind → authorize → headers, for every front (HTTP or gRPC).

One path. :meth:`Decider.decide_now` is synchronous: it chooses the policy, extracts the token
and, when the cache holds it, returns the final allow or :class:`~sidecar.core.outcome.Deny`
through :meth:`Decider._verdict`. Only on a miss does it return a
:class:`~sidecar.core.outcome.Miss`, and :meth:`Decider.decide` then awaits the IdP (one shared
call per token, admitted per source) and runs the **same** :meth:`Decider._verdict` on the fresh
entry. A front calls ``decide_now`` and awaits ``decide`` only for a pending step, so a cache hit
creates no coroutine; no check exists twice.

Before anything else the description of the original request is judged
(:class:`~sidecar.core.target.RequestTarget`: each describing header once, the origin one of
``routing.origins``, a path with one meaning where the path decides the policy), then the policy is
chosen (:class:`~sidecar.core.routes.Router`: the proxy's named policy, else the first matching
rule, else ``[policy]``); it travels with the request to ``_verdict``, which applies it to the
token's entry as seen by that policy (:meth:`~sidecar.core.policies.Policies.view`) and verifies
every confirmation method the token's ``cnf`` holds (a DPoP proof for ``jkt``, the certificate for
``x5t#S256``; both when it holds both).

The Decider only decides: the stages are built in stages.py, which certificate counts is
presented.py's, and every metric and log line, and the turning of any failure into a denial
(fail closed), is outcome.py's. With ``cache.stale_if_error``, a miss whose IdP call failed may
use the token's last active, bound answer (still bound and policy checked). An answer a
remembered revocation names (core/revocation.py) enters the cache as inactive.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from sidecar.config import Config
from sidecar.core.binding import check_binding, needs_certificate
from sidecar.core.cache import Lookup, TokenCache
from sidecar.core.dpop import access_token_hash
from sidecar.core.entry import Entry
from sidecar.core.errors import Denial, IdpUnavailable, InvalidDpopProof, InvalidToken
from sidecar.core.extract import access_token
from sidecar.core.nonce import Nonces
from sidecar.core.outcome import Deny, Miss, Outcomes, Pending, ReplayClaim, forged_denial
from sidecar.core.policy import Policy
from sidecar.core.ports import SharedAnswers, SharedReplay, Verifier
from sidecar.core.request import CheckRequest
from sidecar.core.stages import Stages, build_stages
from sidecar.core.token_info import INACTIVE
from sidecar.support.fair import OWNER
from sidecar.support.logs import token_hash
from sidecar.support.metrics import Metrics
from sidecar.support.tracing import Tracing

log = logging.getLogger("sidecar.decision")
Decided = Entry | Deny  # an allow is the token's cache entry: its upstream headers were built at fill


class Decider:
    """Runs the stages of one configuration per request."""

    def __init__(self, config: Config, verifier: Verifier, metrics: Metrics,
                 shared: SharedAnswers | None = None, shared_replay: SharedReplay | None = None,
                 tracing: Tracing | None = None, previous: Decider | None = None, reuse_answers: bool = False) -> None:
        """``shared``: the fleet's cache level; ``shared_replay``: its DPoP replay store; ``tracing``:
        spans of decisions (None: off); ``previous``: the decider of the configuration this one
        replaces, whose state goes over (core/stages.py); ``reuse_answers``: and whose cached IdP
        answers this one may reuse (core/cache.py)."""
        stages = build_stages(config, shared, shared_replay, None if previous is None else previous.stages,
                              reuse_answers)
        self.stages: Stages = stages  # what a reload hands over (core/stages.py)
        self.cache: TokenCache = stages.cache
        self.policies = stages.policies
        self.target = stages.target
        self.router = stages.router
        self.presented = stages.presented
        self._trusted = stages.trusted
        self._admission = stages.admission
        self._proofs = stages.proofs
        self._dpop = stages.proofs is not None  # the DPoP scheme is accepted
        self._interner = stages.interner
        self.identity = stages.identity  # signs identity tokens (identity.py); None when no policy sends one
        self.signing_keys = stages.signing_keys  # their keys, published (None without identity.key_file)
        self._shared = shared  # a second cache level (the fleet's), asked on a miss before the IdP
        self._shared_replay = stages.shared_replay
        self._verifier = verifier
        self._default = self.policies.default
        self._deny_forged = config.response.forged_headers == "deny"
        self.outcomes = Outcomes(config, metrics, self.policies.all(), self._trusted, tracing)
        self.in_flight = 0  # checks awaiting the IdP (a cache hit never waits)

    @property
    def proof_algs(self) -> str | None:
        """The ``algs`` of the DPoP challenge (RFC 9449 §7.1); None when DPoP is off."""
        return None if self._proofs is None else self._proofs.algs

    @property
    def nonces(self) -> Nonces | None:
        """The DPoP server nonces (RFC 9449 §9) handed to DPoP clients; None unless ``dpop.nonce``."""
        return None if self._proofs is None else self._proofs.nonces

    def decide_now(self, request: CheckRequest) -> Decided | Pending:
        """Everything that needs no await: the final answer for a cached token, else a Miss (or, for a
        DPoP request in a fleet, the ReplayClaim to confirm)."""
        if request.forged and self._deny_forged:  # response.forged_headers = "deny"
            return self.outcomes.deny(forged_denial(request.forged), None, None, request)
        policy: Policy | None = None
        try:
            unsafe = self.target.check(request)  # stage 0: before any IdP call
            if unsafe is not None:
                return self.outcomes.deny(unsafe, None, None, request)
            selected = self.router.select(request)
            if isinstance(selected, Denial):  # no policy admits the request
                return self.outcomes.deny(selected, None, None, request)
            policy = selected
            token, dpop_scheme = access_token(request.authorization, dpop=self._dpop)
            key = self.cache.key(token)
            entry = self.cache.get(key, policy.route)
        except Exception as exc:
            return self.outcomes.refuse(exc, None, policy, request)
        if entry is None:
            return Miss(token, key, policy, dpop_scheme)
        return self._verdict(entry, request, "hit", policy, token if dpop_scheme else None)

    async def decide(self, request: CheckRequest, pending: Decided | Pending | None = None) -> Decided:
        """The whole decision; ``pending``: what :meth:`decide_now` already said for this request."""
        if pending is None:
            pending = self.decide_now(request)
        if isinstance(pending, ReplayClaim):
            with self.outcomes.waiting(request):
                return await self._confirm(pending)
        if not isinstance(pending, Miss):
            assert isinstance(pending, Entry | Deny)  # Pending has the two kinds above only
            return pending
        self.in_flight += 1
        try:
            with self.outcomes.waiting(request):  # the check's span: the IdP and Redis calls are its children
                try:
                    entry, lookup = await self._lookup(pending, request)
                except Exception as exc:
                    return self.outcomes.refuse(exc, token_hash(pending.token), pending.policy, request,
                                                dpop_scheme=pending.dpop_scheme, missed=True)
                verdict = self._verdict(entry, request, lookup, pending.policy,
                                        pending.token if pending.dpop_scheme else None)
                return await self._confirm(verdict) if isinstance(verdict, ReplayClaim) else verdict
        finally:
            self.in_flight -= 1

    async def _confirm(self, claim: ReplayClaim) -> Decided:
        """The fleet-wide half of the replay check (RFC 9449 §11.1): allow only if no other replica
        accepted this proof. The store answers from this replica alone when Redis fails (the local
        check already passed); anything else unexpected denies."""
        assert self._shared_replay is not None
        try:
            if not await self._shared_replay.claim(claim.key, claim.until):
                raise InvalidDpopProof("dpop_replayed", "this proof's jti was already used on another replica")
        except Exception as exc:
            return self.outcomes.refuse(exc, claim.entry.token_hash, claim.policy, claim.request, lookup=claim.lookup,
                                        dpop_scheme=True, entry=claim.entry)
        return self.outcomes.allow(claim.entry, claim.lookup, claim.policy, claim.request)

    def _verdict(self, entry: Entry, request: CheckRequest, lookup: Lookup, policy: Policy,
                 proof_token: str | None = None) -> Decided | ReplayClaim:
        """The checks of a token's answer against this request under ``policy``: the same for a hit
        and a miss.

        ``proof_token``: the token, when it came with the DPoP scheme. The binding step verifies
        every method the token is bound by: a DPoP proof for ``cnf.jkt`` (and for the DPoP scheme),
        and the certificate for ``cnf.x5t#S256`` (per ``policy.binding``; a token holding both must
        pass both).
        """
        claimed = None
        try:
            if policy.index:  # a named policy: its view of the token, kept on the entry (the default's is the entry)
                entry = self.policies.view(entry, policy)
            denial = entry.denial
            if denial is None:
                info = entry.info
                # a cached token at the check's arrival (no clock read on the hot path); a fresh one now
                now = request.started if lookup == "hit" else time.time()
                policy.check_time(info, now)
                if proof_token is not None or info.cnf_jkt is not None:
                    claimed = self._check_proof(info.cnf_jkt, request, proof_token)
                    if info.cnf_x5t_s256 is not None and policy.binding != "off":  # bound by both
                        check_binding(info, self.presented.thumbprint(request), policy.binding)
                elif needs_certificate(info, policy.binding):
                    check_binding(info, self.presented.thumbprint(request), policy.binding)
                denial = entry.scope_denial
                if denial is None and entry.identity_due <= now:  # first allow, or half its life gone
                    assert self.identity is not None  # identity_due is finite only under a policy that sends one
                    self.identity.renew(entry, policy, now)
            if denial is not None:
                return self.outcomes.deny(denial, entry.token_hash, policy, request, lookup=lookup,
                                          dpop_scheme=proof_token is not None, entry=entry)
        except Exception as exc:
            return self.outcomes.refuse(exc, entry.token_hash, policy, request, lookup=lookup,
                                        dpop_scheme=proof_token is not None, entry=entry)
        if claimed is not None and self._shared_replay is not None:
            return ReplayClaim(entry, lookup, policy, request, *claimed)
        return self.outcomes.allow(entry, lookup, policy, request)

    def _check_proof(self, jkt: str | None, request: CheckRequest, proof_token: str | None) -> tuple[bytes, float]:
        """RFC 9449 §7.1-7.2: a DPoP-bound token only with the DPoP scheme and a valid proof, and the
        DPoP scheme only with a DPoP-bound token (no downgrade either way)."""
        if proof_token is None:
            raise InvalidToken("dpop_scheme_required", "a DPoP-bound token came with the Bearer scheme")
        if jkt is None or self._proofs is None:
            raise InvalidToken("dpop_token_unbound", "the DPoP scheme with a token not bound by cnf.jkt")
        method: str | None = None
        uris: Sequence[str] = ()
        if request.peer in self._trusted:  # only a trusted proxy describes the original request
            method, uris = request.method, self.target.uris(request)
        return self._proofs.verify(request.dpop_proofs, jkt=jkt, ath=access_token_hash(proof_token),
                                   method=method, uris=uris)

    async def _lookup(self, miss: Miss, request: CheckRequest) -> tuple[Entry, Lookup]:
        """A miss: one shared IdP call (or the answer the replaced configuration cached); when the
        IdP itself fails, the stale entry if allowed."""
        try:
            return await self.cache.get_or_load(miss.key, lambda: self._load(miss, request), miss.policy.route)
        except IdpUnavailable as failure:
            stale = self.cache.stale(miss.key, failure)
            if stale is None:
                raise
            return stale, "stale"

    async def _load(self, miss: Miss, request: CheckRequest) -> Entry:
        """Ask the verifier (charged to the request's source), then precompute what a hit needs; an
        answer the replaced configuration cached (same IdP settings) is reused as it is."""
        token, issuers = miss.token, miss.policy.issuers
        admission = self._admission
        carried = None if miss.policy.route else self.cache.carried(miss.key)
        if carried is not None:
            info, until = carried
        else:
            source = admission.source(request)
            admission.enter(source)
            owner = OWNER.set(source)  # the IdP guard's slots are shared out fairly by source
            throttled, retry_after = False, 0
            try:
                # The fleet's level holds the default route's answers only (its keys are the tokens').
                if self._shared is None or miss.policy.route:
                    info, until = await self._verifier.verify(token, issuers), math.inf
                else:
                    info, until = await self._shared.load(miss.key, token,
                                                          lambda: self._verifier.verify(token, issuers))
                info = self._interner.info(info)  # shared values: memory per token
            except IdpUnavailable as failure:
                throttled, retry_after = failure.throttled, failure.retry_after
                raise
            finally:
                OWNER.reset(owner)
                admission.leave(source, throttled=throttled, retry_after=retry_after)
        if info.active and self.cache.revoked(miss.key, info):  # a security event or purge named it
            log.warning("revoked", extra={"token": token_hash(token), "client_id": info.client_id})
            info = INACTIVE
        if carried is None:
            admission.learn(info)
        default = self._default
        return Entry(
            info=info,
            headers=self.policies.headers.build(info),
            denial=default.static_denial(info),
            scope_denial=default.scope_denial(info),
            token_hash=token_hash(token),
            until=until,
            identity_due=default.identity_due,
        )
