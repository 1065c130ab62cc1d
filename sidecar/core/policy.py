"""Stage 4: authorize a token (RFC 7662 §4, RFC 9068 §4): active, time window, issuer, audience,
required scopes.

The checks that depend only on the token and the configured policy run once, when a token enters
the cache (:meth:`Policy.static_denial`, :meth:`Policy.scope_denial`); only the time window is
checked on every request. A cache belongs to one process and one policy, so a verdict cached here
is never reused under another policy or issuer.
"""

from __future__ import annotations

from sidecar.config import PolicyConfig
from sidecar.core.errors import Denial, InsufficientScope, InvalidToken
from sidecar.core.token_info import TokenInfo


class Policy:
    __slots__ = ("_audiences", "_issuers", "_leeway", "_required", "_scope_param")

    def __init__(self, config: PolicyConfig) -> None:
        self._issuers = frozenset(config.allowed_issuers)
        self._audiences = frozenset(config.audiences)
        self._required = frozenset(config.required_scopes)
        self._scope_param = " ".join(config.required_scopes) or None
        self._leeway = config.leeway

    def static_denial(self, info: TokenInfo) -> Denial | None:
        """The first 401 that does not depend on the clock, or None."""
        if not info.active:
            return InvalidToken("token_inactive", "the IdP reports the token inactive")
        if self._issuers and info.iss not in self._issuers:
            return InvalidToken("issuer_not_allowed", f"iss {info.iss!r} is not allowed")
        if self._audiences and self._audiences.isdisjoint(info.aud):
            return InvalidToken("audience_mismatch", "no required audience in aud")
        return None

    def scope_denial(self, info: TokenInfo) -> Denial | None:
        """RFC 6750 §3.1 insufficient_scope (403) naming the scopes needed."""
        missing = self._required - info.scopes
        if missing:
            return InsufficientScope(
                "scope_missing", f"missing scopes: {' '.join(sorted(missing))}", scope=self._scope_param
            )
        return None

    def check_time(self, info: TokenInfo, now: float) -> None:
        """RFC 7662 §2.2 exp / nbf with a small leeway for clock skew."""
        if info.exp is not None and now > info.exp + self._leeway:
            raise InvalidToken("token_expired", "exp is in the past")
        if info.nbf is not None and now + self._leeway < info.nbf:
            raise InvalidToken("token_not_yet_valid", "nbf is in the future")
