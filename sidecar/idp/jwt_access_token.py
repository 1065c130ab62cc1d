"""RFC 9068 §4: validate a JWT access token locally with pyjwt against the issuer's JWK Set.

In this order, each failure an :class:`InvalidToken` (401) with a stable reason:

1. the token is a JWS whose header is a JSON object (``jwt_malformed``);
2. header ``typ`` is ``at+jwt`` or ``application/at+jwt`` — "Resource servers ... MUST validate
   the typ header value is at+jwt or application/at+jwt and reject tokens carrying any other
   value" (``jwt_wrong_type``); an issuer's ``profile`` may accept its IdP's own ``typ``
   (sidecar/idp/profiles.py), and then the token must not look like an ID token
   (``jwt_not_access_token``);
3. ``alg`` is one of ``idp.jwt_algorithms`` — never ``none`` nor ``HS*`` (config refuses them;
   RFC 9068 §4 "MUST reject any JWT in which the value of alg is none")
   (``jwt_algorithm_not_allowed``);
4. a key of the issuer's JWK Set named by ``kid`` exists (``jwt_unknown_key``, after at most one
   rate-limited refresh; without ``kid``: at most ``MAX_KEYS_WITHOUT_KID`` keys are tried) and
   fits ``alg``: key type, curve and the JWK's own ``alg`` (``jwt_key_mismatch``) — so a public
   key can never be used as an HMAC secret;
5. the signature (``jwt_invalid_signature``);
6. ``exp`` is required (a number);
7. ``iss`` equals the issuer's own identifier (``idp.issuer``; a tenant's, for a multi-tenant
   issuer) — "The issuer identifier ... MUST exactly match the value of the iss claim"
   (``issuer_not_allowed``); an issuer without one is bound by its keys alone, and the
   policies that accept it name ``policy.allowed_issuers`` (config rules);
8. the claims, in RFC 9068 names (the profile's), become a :class:`TokenInfo` (``active=True``)
   by the same code as introspection answers, so the time window (``exp``, ``nbf``, and a JWT's
   ``iat`` as a second ``nbf``) within the policy's ``leeway``, ``aud`` (``policy.audiences``,
   required for local validation), ``policy.allowed_issuers``, the ``cnf.x5t#S256`` binding
   (RFC 8705 §3) and the scopes are checked by the policy exactly as for introspected tokens.

The JWK Set being unavailable is :class:`IdpError` (503), never an allow.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from sidecar.config import IdpConfig
from sidecar.core.errors import InvalidToken
from sidecar.core.token_info import MalformedTokenInfo, TokenInfo, token_info_from_claims
from sidecar.idp.jwk_set import VerifyKey
from sidecar.idp.profiles import AT_JWT, PROFILES

ACCESS_TOKEN_TYPES = AT_JWT
# A token without kid is tried against each fitting key; more would let a forged token cost many
# signature checks. IdPs that omit kid publish one key.
MAX_KEYS_WITHOUT_KID = 3
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1, "ES256K": ec.SECP256K1,
}
# Time is the policy's (its own leeway, per request): pyjwt checks the signature and that exp is there.
_OPTIONS: Any = {"require": ["exp", "iss"], "verify_aud": False, "verify_iss": False, "verify_exp": False,
                 "verify_nbf": False, "verify_iat": False}


class KeySource(Protocol):
    async def keys_for(self, kid: str | None) -> Sequence[VerifyKey]: ...


def verified_claims(token: str, keys: Sequence[VerifyKey], alg: str, options: Any) -> dict[str, Any] | None:
    """The claims of ``token`` as the first of ``keys`` whose signature holds verifies them (pyjwt,
    ``options``); None when none does. Any other pyjwt error is raised: the caller names it."""
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[alg], options=options)
            return claims
        except jwt.InvalidSignatureError:
            continue
    return None


def key_fits(key: VerifyKey, alg: str) -> bool:
    """The key may verify ``alg``: right key type and curve, and the JWK's ``alg`` if it pins one."""
    if key.alg is not None and key.alg != alg:
        return False
    if alg in _RSA:
        return isinstance(key.key, rsa.RSAPublicKey)
    if alg in _CURVES:
        return isinstance(key.key, ec.EllipticCurvePublicKey) and isinstance(key.key.curve, _CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key.key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken("jwt_malformed", f"header: {exc}") from None


class JwtAccessTokenVerifier:
    """A :class:`~sidecar.core.ports.Verifier` for RFC 9068 JWT access tokens."""

    def __init__(self, idp: IdpConfig, keys: KeySource, extra_claims: Collection[str] = ()) -> None:
        self._keys = keys
        self._algorithms = frozenset(a for a in idp.jwt_algorithms if a in _RSA or a in _CURVES or a == "EdDSA")
        self._issuer = idp.issuer  # a tenant's own, for a multi-tenant issuer (issuers.py)
        self._profile = PROFILES[idp.profile]
        self._extra = tuple(extra_claims)

    async def verify(self, token: str) -> TokenInfo:
        header = unverified_header(token)
        typ = header.get("typ")
        if not self._profile.accepts_type(typ):
            raise InvalidToken("jwt_wrong_type", f"typ {str(typ)[:40]!r} is not at+jwt (RFC 9068 §4) nor a type "
                               f"of profile {self._profile.name}")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("jwt_algorithm_not_allowed", f"alg {str(alg)[:20]!r} is not in idp.jwt_algorithms")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("jwt_malformed", "kid is not a string")
        candidates = await self._keys.keys_for(kid)
        if not candidates:
            raise InvalidToken("jwt_unknown_key", f"no key {str(kid)[:64]!r} in the issuer's JWK Set")
        fitting = [k for k in candidates if key_fits(k, alg)]
        if not fitting:
            raise InvalidToken("jwt_key_mismatch", f"key {str(kid)[:64]!r} does not fit alg {alg}")
        if kid is None and len(fitting) > MAX_KEYS_WITHOUT_KID:
            raise InvalidToken("jwt_unknown_key", f"no kid and {len(fitting)} keys fit alg {alg}")
        claims = self._decode(token, fitting, alg)
        iss = claims.get("iss")
        if not isinstance(iss, str) or (self._issuer is not None and iss != self._issuer):
            raise InvalidToken("issuer_not_allowed", f"iss {str(iss)[:100]!r} is not the configured issuer")
        claims = self._profile.claims(typ, claims)
        iat = claims.get("iat")
        if isinstance(iat, int | float) and not isinstance(iat, bool):
            # A JWT issued in the future is not valid yet: its iat is a second nbf, under the policy's leeway.
            nbf = claims.get("nbf")
            if not isinstance(nbf, int | float) or isinstance(nbf, bool) or nbf < iat:
                claims["nbf"] = iat
        try:
            return token_info_from_claims(claims, self._extra, active=True)
        except MalformedTokenInfo as exc:
            raise InvalidToken("jwt_malformed", f"claims: {exc}") from None

    def _decode(self, token: str, keys: Sequence[VerifyKey], alg: str) -> dict[str, Any]:
        """Signature with each fitting key (one, unless the token names no kid); exp and iss present."""
        try:
            claims = verified_claims(token, keys, alg, _OPTIONS)
        except jwt.InvalidKeyError as exc:
            raise InvalidToken("jwt_key_mismatch", str(exc)) from None
        except jwt.PyJWTError as exc:  # DecodeError, MissingRequiredClaimError, ...
            raise InvalidToken("jwt_malformed", f"{type(exc).__name__}: {exc}") from None
        if claims is None:
            raise InvalidToken("jwt_invalid_signature", "signature verification failed")
        return claims
