"""The JOSE every part of the sidecar shares: RFC 7515 §2 base64url, RFC 7638 thumbprints, SHA-256
thumbprints such as RFC 8705 ``x5t#S256`` and RFC 9449 ``ath``, JWS signatures checked with
``cryptography`` directly (the JWK's public key, each algorithm's padding and hash prepared once),
and the keys the sidecar signs with (a private key file, its public JWK)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def b64url(data: bytes) -> str:
    """RFC 7515 §2: base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Strict base64url (no padding, no other characters); raises ValueError."""
    # binascii directly, its strict mode refusing any other character (and the three characters of the
    # standard alphabet refused here): base64.urlsafe_b64decode and a regular expression cost twice as
    # much (a DPoP proof decodes two segments per request).
    if not segment or "+" in segment or "/" in segment or "=" in segment:
        raise ValueError("not base64url")
    padded = (segment + "=" * (-len(segment) % 4)).encode("ascii")  # UnicodeEncodeError: a ValueError
    return binascii.a2b_base64(padded.translate(_FROM_URLSAFE), strict_mode=True)


def json_segment(segment: str) -> Any:
    """The JSON value of one base64url segment of a compact JWS; raises ValueError (which
    RecursionError on absurd nesting is turned into)."""
    try:
        return json.loads(b64url_decode(segment).decode())  # str: json skips guessing the encoding
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


# --- JWS signature verification with cryptography (RFC 7515 §5.2, RFC 7518 §3, RFC 8037 §3.1, RFC 9864)

SignatureCheck = Callable[[bytes, bytes], bool]  # (JWS signing input, signature) -> valid
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66),
    "secp256k1": (ec.SECP256K1, 32)}
_ECDSA: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {  # alg: (the curve it fits, its hash)
    "ES256": ("P-256", hashes.SHA256), "ES384": ("P-384", hashes.SHA384), "ES512": ("P-521", hashes.SHA512),
    "ES256K": ("secp256k1", hashes.SHA256),
    # RFC 9864 §2.1: the fully-specified ECDSA names (the same operations as ES256, ES384, ES512).
    "ESP256": ("P-256", hashes.SHA256), "ESP384": ("P-384", hashes.SHA384), "ESP512": ("P-521", hashes.SHA512)}
_RSA: dict[str, tuple[bool, type[hashes.HashAlgorithm]]] = {  # alg: (PSS, its hash)
    "RS256": (False, hashes.SHA256), "RS384": (False, hashes.SHA384), "RS512": (False, hashes.SHA512),
    "PS256": (True, hashes.SHA256), "PS384": (True, hashes.SHA384), "PS512": (True, hashes.SHA512)}
# RFC 8037 EdDSA takes either curve; RFC 9864 §2.2 Ed25519 and Ed448 name one each.
_EDDSA: dict[str, frozenset[str]] = {"EdDSA": frozenset({"Ed25519", "Ed448"}), "Ed25519": frozenset({"Ed25519"}),
                                     "Ed448": frozenset({"Ed448"})}
_OKP: dict[str, tuple[Callable[[bytes], Any], int]] = {
    "Ed25519": (ed25519.Ed25519PublicKey.from_public_bytes, 32), "Ed448": (ed448.Ed448PublicKey.from_public_bytes, 57)}
SIGNATURE_ALGORITHMS = frozenset(_ECDSA) | frozenset(_RSA) | frozenset(_EDDSA)
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


def public_key(jwk: Mapping[str, Any]) -> PublicKey:
    """The public key of an EC, RSA or OKP JWK (RFC 7518 §6.2.1, §6.3.1; RFC 8037 §2); ValueError
    for anything else, a coordinate of the wrong length or a point off the curve. Integers must be
    minimal (RFC 7518 §6.3.1.1: no leading zero octet), so one key has one thumbprint."""
    kty = jwk.get("kty")
    if kty == "EC":
        curve, size = _CURVES.get(jwk.get("crv"), (None, 0))  # type: ignore[arg-type]
        x, y = _member_bytes(jwk, "x"), _member_bytes(jwk, "y")
        if curve is None or len(x) != size or len(y) != size:
            raise ValueError("an EC key with an unknown curve or coordinates of the wrong length")
        return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                             curve()).public_key()
    if kty == "RSA":
        n, e = _member_bytes(jwk, "n"), _member_bytes(jwk, "e")
        if not n or not e or n[0] == 0 or e[0] == 0:
            raise ValueError("an RSA key with an empty or non-minimal modulus or exponent")
        return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    if kty == "OKP":
        load, size = _OKP.get(jwk.get("crv"), (None, 0))  # type: ignore[arg-type]
        x = _member_bytes(jwk, "x")
        if load is None or len(x) != size:
            raise ValueError("an OKP key with an unknown curve or a key of the wrong length")
        return load(x)  # type: ignore[no-any-return]
    raise ValueError(f"kty {str(kty)[:8]!r} is not a signature key type")


def _member_bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name}: missing")
    return b64url_decode(value)


def signature_check(alg: str, key: PublicKey, jwk: Mapping[str, Any]) -> SignatureCheck | None:
    """A check of JWS signatures under ``alg`` by ``key`` (parsed from ``jwk``), with everything but
    the signature prepared once; None when the key does not fit the algorithm."""
    if alg in _ECDSA:
        crv, hash_type = _ECDSA[alg]
        if not isinstance(key, ec.EllipticCurvePublicKey) or jwk.get("crv") != crv:
            return None
        return _ecdsa_check(key, ec.ECDSA(hash_type()), _CURVES[crv][1])
    if alg in _RSA:
        pss, hash_type = _RSA[alg]
        if not isinstance(key, rsa.RSAPublicKey):
            return None
        digest = hash_type()
        scheme = (padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size) if pss  # RFC 7518 §3.5
                  else padding.PKCS1v15())
        return _raising_check(lambda data, signature: key.verify(signature, data, scheme, digest))
    if alg in _EDDSA:
        if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) or jwk.get("crv") not in _EDDSA[alg]:
            return None
        return _raising_check(lambda data, signature: key.verify(signature, data))
    return None


def _ecdsa_check(key: ec.EllipticCurvePublicKey, ecdsa: ec.ECDSA, size: int) -> SignatureCheck:
    """RFC 7518 §3.4: the signature is R || S, each exactly ``size`` octets."""
    verify = key.verify

    def check(data: bytes, signature: bytes) -> bool:
        if len(signature) != 2 * size:
            return False
        der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
        try:
            verify(der, data, ecdsa)
        except InvalidSignature:
            return False
        return True

    return check


def _raising_check(verify: Callable[[bytes, bytes], None]) -> SignatureCheck:
    def check(data: bytes, signature: bytes) -> bool:
        try:
            verify(data, signature)
        except InvalidSignature:
            return False
        return True

    return check
