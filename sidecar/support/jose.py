"""The JOSE encodings every part of the sidecar shares (RFC 7515 §2 base64url, RFC 7638
thumbprints, SHA-256 thumbprints such as RFC 8705 ``x5t#S256`` and RFC 9449 ``ath``), and the keys
the sidecar signs with (a private key file, its public JWK)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def b64url(data: bytes) -> str:
    """RFC 7515 §2: base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Strict base64url (no padding, no other characters); raises ValueError."""
    if _B64URL.fullmatch(segment) is None:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def json_segment(segment: str) -> Any:
    """The JSON value of one base64url segment of a compact JWS; raises ValueError (which
    RecursionError on absurd nesting is turned into)."""
    try:
        return json.loads(b64url_decode(segment))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def sha256_thumbprint(data: bytes) -> str:
    """base64url(SHA-256(data)): RFC 8705 §3.1 ``x5t#S256`` of a DER certificate, RFC 9449 §4.2 ``ath``."""
    return b64url(hashlib.sha256(data).digest())


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 of the required members, sorted, no whitespace; base64url."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ValueError("jwk lacks the members of its kty")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), ensure_ascii=False)
    return sha256_thumbprint(canonical.encode())


SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def signing_key(pem: bytes) -> tuple[SigningKey, str]:
    """A PEM private key that signs JWTs, and its algorithm: Ed25519 (``EdDSA``, RFC 8037) or P-256
    (``ES256``); ValueError for anything else (RSA, other curves, an encrypted or broken file)."""
    try:
        key = load_pem_private_key(pem, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise ValueError("not an unencrypted PEM private key") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ValueError("an Ed25519 or P-256 private key is required")


def public_jwk(key: SigningKey, alg: str) -> dict[str, str]:
    """The public half of ``key`` as a JWK (RFC 7517) with ``kid`` its RFC 7638 thumbprint, ``use``
    and ``alg``: the same key gives the same ``kid`` on every replica."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        jwk: dict[str, str] = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": jwk_thumbprint(jwk), "use": "sig", "alg": alg}
