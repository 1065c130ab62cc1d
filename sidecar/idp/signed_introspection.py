"""RFC 9701: introspection answers as JWTs signed by the IdP (``idp.introspection_response``).

Asked for with ``Accept: application/token-introspection+jwt`` (§4). The answer (§5) is a JWT
with ``typ: token-introspection+jwt``, signed by a key of the issuer's JWK Set, whose claims are
``iss`` (the issuer), ``aud`` (our ``client_id``), ``iat`` and ``token_introspection`` (the RFC 7662
object). Every check below failing makes the answer unusable (fail closed, never an allow):

- ``typ`` is ``token-introspection+jwt``; ``alg`` one of ``idp.jwt_algorithms`` (asymmetric);
- a key of the JWK Set named by ``kid`` that fits ``alg`` verifies the signature;
- ``iss`` equals the issuer, ``aud`` holds our client id, ``iat`` is within ``policy.leeway`` of
  now and not older than :data:`MAX_AGE` (a replayed old answer);
- ``token_introspection`` is a JSON object.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

import jwt

from sidecar.idp.failures import IdpError, IdpFailure
from sidecar.idp.jwt_access_token import KeySource, key_fits, verified_claims

MEDIA_TYPE = "application/token-introspection+jwt"
JWT_TYPE = "token-introspection+jwt"
MAX_AGE = 300  # seconds: an older signed answer is not today's answer
_OPTIONS: Any = {"require": ["iss", "aud", "iat"], "verify_aud": False, "verify_iss": False, "verify_iat": False}


def _unusable(detail: str) -> IdpError:
    return IdpError(IdpFailure.MALFORMED, f"signed introspection answer: {detail}")


async def verify_signed_answer(
    text: str, keys: KeySource, *, issuer: str | None, client_id: str, algorithms: Collection[str], leeway: float,
) -> Mapping[str, Any]:
    """The RFC 7662 object inside a verified RFC 9701 answer; IdpError otherwise."""
    try:
        header = jwt.get_unverified_header(text)
    except jwt.PyJWTError:
        raise _unusable("not a JWS") from None
    typ, alg, kid = header.get("typ"), header.get("alg"), header.get("kid")
    if not isinstance(typ, str) or typ.lower() not in (JWT_TYPE, f"application/{JWT_TYPE}"):
        raise _unusable(f"typ {str(typ)[:40]!r}")
    if not isinstance(alg, str) or alg not in algorithms:
        raise _unusable(f"alg {str(alg)[:20]!r} is not in idp.jwt_algorithms")
    if kid is not None and not isinstance(kid, str):
        raise _unusable("kid is not a string")
    claims = _decode(text, [k for k in await keys.keys_for(kid) if key_fits(k, alg)], alg)
    if issuer is not None and claims.get("iss") != issuer:
        raise _unusable("iss is not the issuer")
    aud = claims.get("aud")
    if client_id not in ((aud,) if isinstance(aud, str) else aud if isinstance(aud, list) else ()):
        raise _unusable("aud is not our client_id")
    iat = claims.get("iat")
    now = time.time()
    if not isinstance(iat, int | float) or iat > now + leeway or iat < now - MAX_AGE - leeway:
        raise _unusable("iat is not recent")
    answer = claims.get("token_introspection")
    if not isinstance(answer, Mapping):
        raise _unusable("token_introspection is not an object")
    return answer


def _decode(text: str, keys: list[Any], alg: str) -> dict[str, Any]:
    try:  # a kid names one key; without kid, a bounded number are tried
        claims = verified_claims(text, keys[:3], alg, _OPTIONS)
    except jwt.PyJWTError as exc:
        raise _unusable(type(exc).__name__) from None
    if claims is None:
        raise _unusable("no key of the JWK Set verifies the signature")
    return claims
