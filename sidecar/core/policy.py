"""Stage 4: authorize a token (RFC 7662 §4, RFC 9068 §4): active, time window, issuer, audience,
token format, required scopes (all or any of them), claim conditions.

Every check a policy makes is made here, per policy, for introspected and JWT tokens alike: the
issuers it accepts (``issuers``: which configured issuer vouched; ``allowed_issuers``: the ``iss``
claim), its audiences, and its ``leeway`` for ``exp`` and ``nbf``. The IdP layer verifies only
what the issuer vouches for (signature, ``typ`` and profile rules, the issuer's own ``iss``).

The checks that depend only on the token and the policy run once per (token, policy): for the
default policy when the token enters the cache, for a named one the first time a request under it
meets the token (:mod:`sidecar.core.policies`). Only the time window is checked on every request.
"""

from __future__ import annotations

import math

from sidecar.config import PolicyConfig
from sidecar.core.errors import Denial, InsufficientScope, InvalidToken
from sidecar.core.token_info import TokenInfo
from sidecar.support.metrics import DECISION_BUCKETS, Latencies

REFRESH_USES = frozenset({"refresh_token", "refresh", "offline", "refresh+jwt"})


class Policy:
    __slots__ = ("_allow_missing_type", "_any", "_audiences", "_contain", "_dpop", "_equal", "_formats", "_issuers",
                 "_leeway", "_required", "_scope_param", "_sources", "_token_types", "binding", "folded", "hits",
                 "identity_audience", "identity_claims", "identity_due", "index", "issuers", "name", "route")

    def __init__(self, config: PolicyConfig, name: str = "default", index: int = 0, *, dpop: bool = False,
                 issuers: tuple[str, ...] = ("default",), several: bool = False, route: bytes = b"") -> None:
        """``issuers``: the configured issuers this policy accepts, in the order opaque tokens are
        introspected; ``several``: more than one issuer is configured (so which one vouched is
        checked); ``route``: what tells this policy's inactive answers apart in the cache (empty
        when its issuers are the default policy's)."""
        self._dpop = dpop  # dpop.enabled: cnf.jkt is a method this sidecar verifies
        self.issuers = issuers
        self._sources = frozenset(issuers) if several else None
        self.route = route
        self.name = name  # a configured name: the only policy label logs and metrics carry
        self.index = index  # 0: the default policy ([policy])
        self.binding = config.binding
        # Allowed cache hits under this policy, as latency bucket counts: the one record a hit makes,
        # folded into the hit, allow and latency series when the metrics are read (support/metrics.py).
        self.hits = Latencies(len(DECISION_BUCKETS))
        self.folded = 0  # of those hits, how many the counters already hold
        self._any = config.scope_match == "any"
        self._formats = frozenset(config.token_formats)
        self._equal = tuple(config.claims_equal.items())
        self._contain = tuple(config.claims_contain.items())
        self._issuers = frozenset(config.allowed_issuers)
        self._audiences = frozenset(config.audiences)
        self._required = frozenset(config.required_scopes)
        self._scope_param = " ".join(config.required_scopes) or None
        self._leeway = config.leeway
        self._token_types = frozenset(t.lower() for t in config.token_types)
        self._allow_missing_type = config.allow_missing_token_type
        # The identity token (identity.py): its aud and copied claims; a new entry signs it at its
        # first allow (identity_due 0), or never.
        self.identity_audience = config.identity_audience if config.identity else None
        self.identity_claims = config.identity_claims if config.identity else ()
        self.identity_due = 0.0 if config.identity else math.inf

    def static_denial(self, info: TokenInfo) -> Denial | None:
        """The first 401 that does not depend on the clock, or None."""
        if not info.active:
            return InvalidToken("token_inactive", "the IdP reports the token inactive")
        if info.cnf_unverifiable:
            # Whatever the binding mode: a token bound by a method we cannot verify (DPoP jkt, x5t, jwk)
            # must never pass as an unbound one.
            methods = ", ".join(info.cnf_unverifiable)
            return InvalidToken("cnf_unsupported", f"cnf holds {methods}, which this sidecar does not verify")
        if info.cnf_jkt is not None and not self._dpop:
            return InvalidToken("cnf_unsupported", "cnf holds jkt and dpop.enabled is off")
        kind = self._not_an_access_token(info)
        if kind is not None:
            return kind
        if self._sources is not None and info.issuer not in self._sources:
            return InvalidToken("issuer_not_allowed", f"issuer {info.issuer!r} is not one of this policy's issuers")
        if self._issuers and info.iss not in self._issuers:
            return InvalidToken("issuer_not_allowed", f"iss {info.iss!r} is not allowed")
        if self._audiences and self._audiences.isdisjoint(info.aud):
            return InvalidToken("audience_mismatch", "no required audience in aud")
        if ("introspection" if info.introspected else "jwt") not in self._formats:
            return InvalidToken("token_format_not_allowed", "the policy does not accept tokens validated this way")
        return None

    def _not_an_access_token(self, info: TokenInfo) -> Denial | None:
        """Refresh tokens are introspectable too; only access tokens may pass (RFC 6749 §1.5)."""
        if info.token_use in REFRESH_USES:
            return InvalidToken("token_not_access", f"token_use/typ {info.token_use!r}: not an access token")
        if not info.introspected:
            return None  # a verified RFC 9068 JWT: its typ header (at+jwt) already said so
        if info.token_type is None:
            if self._allow_missing_type:
                return None
            return InvalidToken("token_not_access", "introspection gave no token_type (as for a refresh token)")
        if info.token_type.lower() not in self._token_types:
            return InvalidToken("token_type_not_allowed", f"token_type {info.token_type[:32]!r} is not accepted")
        return None

    def scope_denial(self, info: TokenInfo) -> Denial | None:
        """RFC 6750 §3.1 insufficient_scope (403) naming the scopes needed, then the claim conditions."""
        missing = self._required - info.scopes
        if missing and (not self._any or len(missing) == len(self._required)):
            return InsufficientScope(
                "scope_missing", f"missing scopes: {' '.join(sorted(missing))}", scope=self._scope_param
            )
        extra = info.extra or {}
        for claim, value in self._equal:
            if extra.get(claim) != value:
                return InsufficientScope("claim_mismatch", f"claim {claim!r} does not equal the required value")
        for claim, value in self._contain:
            if value not in extra.get(claim, "").split(" "):
                return InsufficientScope("claim_mismatch", f"claim {claim!r} does not hold the required value")
        return None

    def check_time(self, info: TokenInfo, now: float) -> None:
        """RFC 7662 §2.2 exp / nbf with a small leeway for clock skew."""
        if info.exp is not None and now > info.exp + self._leeway:
            raise InvalidToken("token_expired", "exp is in the past")
        if info.nbf is not None and now + self._leeway < info.nbf:
            raise InvalidToken("token_not_yet_valid", "nbf is in the future")
