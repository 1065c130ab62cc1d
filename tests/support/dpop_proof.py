"""A DPoP client for the tests (RFC 9449 §4.2): a key pair, its RFC 7638 thumbprint, and proofs.

Proofs are signed with pyjwt over cryptography keys; every field a hostile client could bend is a
keyword (``typ``, ``alg``, the ``jwk`` shown, ``iat``, ``jti``, extra header parameters).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALGORITHMS = ("ES256", "EdDSA", "PS256", "RS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ath_of(token: str) -> str:
    return b64url(hashlib.sha256(token.encode()).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3, written here independently of sidecar/core/dpop.py."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = "{" + ",".join(f'"{m}":"{jwk[m]}"' for m in required) + "}"
    return b64url(hashlib.sha256(canonical.encode()).digest())


class DpopKey:
    """One client key (ES256 by default) and the proofs it signs."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        private: Any
        if alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private = private
        algorithm = jwt.get_algorithm_by_name(alg)
        self.jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
        self.private_jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private))
        self.jkt = thumbprint(self.jwk)

    def proof(self, method: str, url: str, token: str | None = None, *, iat: float | None = None,
              jti: str | None = None, typ: str = "dpop+jwt", jwk: dict[str, Any] | None = None,
              header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None,
              ath: str | None = None, nonce: str | None = None) -> str:
        payload: dict[str, Any] = {"jti": jti or uuid.uuid4().hex, "htm": method, "htu": url,
                                   "iat": int(time.time()) if iat is None else iat}
        if token is not None or ath is not None:
            payload["ath"] = ath if ath is not None else ath_of(token or "")
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims or {})
        headers = {"typ": typ, "jwk": self.jwk if jwk is None else jwk, **(header or {})}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


def unsigned(method: str, url: str, token: str, jwk: dict[str, Any]) -> str:
    """``alg: none`` (RFC 7519 §6): no signature at all."""
    head = b64url(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}).encode())
    body = b64url(json.dumps({"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time()),
                              "ath": ath_of(token)}).encode())
    return f"{head}.{body}."


def hmac_signed(method: str, url: str, token: str, jwk: dict[str, Any], secret: bytes) -> str:
    """HS256 with a secret the client chose: proves nothing about any key."""
    payload = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time()), "ath": ath_of(token)}
    return jwt.encode(payload, secret, algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": jwk})
