"""RFC 8417 Security Event Tokens from the configured issuer, verified as RFC 8935 §2 asks of a
push receiver (docs/events.md). In this order, each failure a
:class:`~sidecar.core.events.SetRefused` carrying its RFC 8935 §2.4 error code:

1. a compact JWS whose header is a JSON object, ``typ`` ``secevent+jwt`` (RFC 8417 §2.3), no
   ``crit`` (``invalid_request``);
2. ``iss`` is a configured issuer's identifier (``idp.issuer``, ``issuers.NAME.issuer``): one
   whose keys the sidecar knows (``invalid_issuer``);
3. ``alg`` one of the issuers' ``jwt_algorithms``, a key of that issuer's JWK Set named by
   ``kid`` that fits it (``invalid_key``);
4. the signature (``authentication_failed``: whoever sent it is not the issuer);
5. ``aud`` holds ``events.audience`` (``invalid_audience``);
6. ``iat`` within ``events.iat_window`` (and at most ``events.iat_skew`` ahead), ``jti`` a
   string, ``events`` an object (``invalid_request``).

The keys are the issuer's own JWK Set (idp/jwks.py: cached, refreshed on an unknown ``kid`` at a
bounded rate); when it cannot be had the push is answered 503, never accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt

from sidecar.config import EventsConfig
from sidecar.core.events import SetRefused
from sidecar.idp.jwk_set import VerifyKey
from sidecar.idp.jwt_access_token import KeySource, key_fits

SET_TYPES = frozenset({"secevent+jwt", "application/secevent+jwt"})
_OPTIONS: Any = {"verify_aud": False, "verify_iss": False, "verify_iat": False, "verify_exp": True,
                 "verify_nbf": True}


class SetVerifier:
    """Verifies one SET against its issuer's keys; returns its claims."""

    def __init__(self, algorithms: frozenset[str], events: EventsConfig, keys: Callable[[str], KeySource | None],
                 clock: Callable[[], float] = time.time) -> None:
        """``algorithms``: those the issuers' ``jwt_algorithms`` accept; ``keys``: the verification
        keys of a configured issuer by its issuer identifier, None for any other."""
        self._algorithms = algorithms
        self._audience = events.audience
        self._window, self._skew = events.iat_window, events.iat_skew
        self._keys = keys
        self._clock = clock

    async def verify(self, compact: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(compact)
            unverified = jwt.decode(compact, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise SetRefused("invalid_request", "the body is not a signed JWT") from None
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in SET_TYPES or "crit" in header:
            raise SetRefused("invalid_request", "typ is not secevent+jwt")
        iss = unverified.get("iss")
        keys = self._keys(iss) if isinstance(iss, str) else None
        if keys is None:
            raise SetRefused("invalid_issuer", "the issuer is not one this receiver trusts")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise SetRefused("invalid_key", "the algorithm is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise SetRefused("invalid_key", "kid is not a string")
        fitting = [k for k in await keys.keys_for(kid) if key_fits(k, alg)]
        if not fitting:
            raise SetRefused("invalid_key", "no key of the issuer's JWK Set fits the SET")
        claims = self._decode(compact, fitting, alg)
        self._check_claims(claims)
        return claims

    def _decode(self, compact: str, keys: Sequence[VerifyKey], alg: str) -> dict[str, Any]:
        for key in keys[:3]:  # a SET without kid: the few keys that fit, no more
            try:
                claims: dict[str, Any] = jwt.decode(compact, key.key, algorithms=[alg], options=_OPTIONS)
                return claims
            except jwt.InvalidSignatureError:
                continue
            except (jwt.PyJWTError, ValueError, RecursionError):
                raise SetRefused("invalid_request", "the SET's claims are malformed or expired") from None
        raise SetRefused("authentication_failed", "the signature does not verify with the issuer's keys")

    def _check_claims(self, claims: dict[str, Any]) -> None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self._audience not in audiences:
            raise SetRefused("invalid_audience", "aud does not name this receiver")
        iat, now = claims.get("iat"), self._clock()
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise SetRefused("invalid_request", "iat is missing")
        if iat < now - self._window or iat > now + self._skew:
            raise SetRefused("invalid_request", "iat is outside the accepted window")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise SetRefused("invalid_request", "jti is missing")
        if not isinstance(claims.get("events"), dict) or not claims["events"]:
            raise SetRefused("invalid_request", "events is missing")
