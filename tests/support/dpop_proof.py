"""A DPoP client for the tests (RFC 9449 §4.2): a key pair, its RFC 7638 thumbprint, and proofs.

Proofs are signed with ``cryptography`` here, apart from the sidecar's own code: ES256/384/512 and
the RFC 9864 names ESP256/384/512, EdDSA (Ed25519 or Ed448 keys) and the RFC 9864 names Ed25519 and
Ed448, RS256 and PS256. Every field a hostile client could bend is a keyword (``typ``, ``alg``, the
``jwk`` shown, ``iat``, ``jti``, ``nonce``, extra header parameters).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ALGORITHMS = ("ES256", "EdDSA", "PS256", "RS256")
_EC = {"ES256": ("P-256", ec.SECP256R1, hashes.SHA256, 32), "ESP256": ("P-256", ec.SECP256R1, hashes.SHA256, 32),
       "ES384": ("P-384", ec.SECP384R1, hashes.SHA384, 48), "ESP384": ("P-384", ec.SECP384R1, hashes.SHA384, 48),
       "ES512": ("P-521", ec.SECP521R1, hashes.SHA512, 66), "ESP512": ("P-521", ec.SECP521R1, hashes.SHA512, 66)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def ath_of(token: str) -> str:
    return b64url(hashlib.sha256(token.encode()).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3, written here independently of sidecar/core/dpop.py."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = "{" + ",".join(f'"{m}":"{jwk[m]}"' for m in required) + "}"
    return b64url(hashlib.sha256(canonical.encode()).digest())


class DpopKey:
    """One client key (ES256 by default) and the proofs it signs. ``curve``: the OKP curve of an
    ``EdDSA`` key (Ed25519 by default; ``Ed25519`` and ``Ed448`` keys are their own)."""

    def __init__(self, alg: str = "ES256", *, curve: str = "Ed25519") -> None:
        self.alg = alg
        private: Any
        if alg in _EC:
            crv, curve_type, _, size = _EC[alg]
            private = ec.generate_private_key(curve_type())
            numbers = private.public_key().public_numbers()
            self.jwk: dict[str, Any] = {"kty": "EC", "crv": crv, "x": b64url(numbers.x.to_bytes(size, "big")),
                                        "y": b64url(numbers.y.to_bytes(size, "big"))}
            self.private_jwk = {**self.jwk, "d": b64url(private.private_numbers().private_value.to_bytes(size, "big"))}
        elif alg in ("EdDSA", "Ed25519", "Ed448"):
            crv = alg if alg != "EdDSA" else curve
            private = (ed448.Ed448PrivateKey if crv == "Ed448" else ed25519.Ed25519PrivateKey).generate()
            raw = private.public_key().public_bytes_raw()
            self.jwk = {"kty": "OKP", "crv": crv, "x": b64url(raw)}
            self.private_jwk = {**self.jwk, "d": b64url(private.private_bytes_raw())}
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            numbers = private.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}
            self.private_jwk = {**self.jwk, "d": _int(private.private_numbers().d)}
        self.private = private
        self.jkt = thumbprint(self.jwk)

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of ``data`` under this key's ``alg`` (RFC 7518 §3, RFC 8037 §3.1)."""
        if self.alg in _EC:
            _, _, hash_type, size = _EC[self.alg]
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hash_type())))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if self.alg in ("EdDSA", "Ed25519", "Ed448"):
            return bytes(self.private.sign(data))
        scheme = (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32) if self.alg.startswith("PS")
                  else padding.PKCS1v15())
        return bytes(self.private.sign(data, scheme, hashes.SHA256()))

    def proof(self, method: str, url: str, token: str | None = None, *, iat: float | None = None,
              jti: str | None = None, typ: str = "dpop+jwt", jwk: dict[str, Any] | None = None,
              header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None,
              ath: str | None = None, nonce: str | None = None, alg: str | None = None) -> str:
        payload: dict[str, Any] = {"jti": jti or uuid.uuid4().hex, "htm": method, "htu": url,
                                   "iat": int(time.time()) if iat is None else iat}
        if token is not None or ath is not None:
            payload["ath"] = ath if ath is not None else ath_of(token or "")
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims or {})
        head = {"typ": typ, "alg": alg or self.alg, "jwk": self.jwk if jwk is None else jwk, **(header or {})}
        signed = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(payload).encode())}"
        return f"{signed}.{b64url(self.sign(signed.encode()))}"


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
