"""A JWK Set (RFC 7517 §5) as the verification keys it holds: pure parsing, no I/O.

Only public signature keys are kept: RFC 7517 §4.2 ``use`` absent or ``sig``, §4.3 ``key_ops``
absent or including ``verify``. Symmetric (``oct``) keys, keys with private members, keys pyjwt
cannot load and RSA keys under 2048 bits are skipped; a set with no key left is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError

MAX_KEYS = 64
MIN_RSA_BITS = 2048


class JwksError(ValueError):
    """The JWK Set document is not acceptable; the message says why."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One public verification key: its ``kid``, the ``alg`` the JWK pins (if any), the key."""

    kid: str | None
    alg: str | None
    key: Any  # a cryptography public key object (RSA, EC, Ed25519, Ed448)


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerifyKey, ...]

    def find(self, kid: str | None) -> tuple[VerifyKey, ...]:
        """The keys named ``kid``; every key when the token names none."""
        if kid is None:
            return self.keys
        return tuple(k for k in self.keys if k.kid == kid)


def parse_jwks(body: bytes) -> KeySet:
    """Pure: the usable public signature keys of a JWK Set document."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise JwksError("not JSON") from None
    return keys_from_document(document)


def keys_from_document(document: object) -> KeySet:
    """Pure: the usable public signature keys of a decoded JWK Set document."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK Set (an object with a keys array)")
    if len(document["keys"]) > MAX_KEYS:
        raise JwksError(f"more than {MAX_KEYS} keys")
    keys = tuple(k for k in map(_verify_key, document["keys"]) if k is not None)
    if not keys:
        raise JwksError("no usable signature key")
    return KeySet(keys)


def _verify_key(jwk: object) -> VerifyKey | None:
    if not isinstance(jwk, dict) or jwk.get("kty") in (None, "oct") or "d" in jwk:
        return None  # symmetric or private material is never a verification key
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid, alg = jwk.get("kid"), jwk.get("alg")
    if not isinstance(kid, str | None) or not isinstance(alg, str | None):
        return None
    try:
        key = PyJWK(jwk).key
    except (PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return None
    return VerifyKey(kid, alg, key)
