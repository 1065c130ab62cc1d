"""RFC 9449 §4.3 and §7.1: the resource server's check of a DPoP proof sent with a DPoP-bound token.

Per request (a proof is single-use, so nothing of it is cached per token), in this order, each
failure an :class:`InvalidDpopProof` (401 ``invalid_dpop_proof``) with a stable reason:

1. exactly one ``DPoP`` header (``dpop_proof_missing``, ``dpop_proof_duplicated``), at most
   ``dpop.max_proof_size`` bytes, three base64url parts (``dpop_proof_too_large``,
   ``dpop_proof_malformed``);
2. the JOSE header: ``typ`` ``dpop+jwt`` (``dpop_wrong_type``); ``alg`` in ``dpop.algorithms``, never
   ``none`` nor ``HS*`` (``dpop_algorithm_not_allowed``); no ``crit``; ``jwk`` a public key that fits
   ``alg`` with no private member (``dpop_bad_key``);
3. the key's RFC 7638 SHA-256 thumbprint equals the token's ``cnf.jkt``, compared in constant time
   (``dpop_key_mismatch``) — before the signature, so a stranger's key costs no verification;
4. the signature (``dpop_invalid_signature``);
5. claims: ``jti``, ``htm``, ``htu``, ``iat`` present and typed (``dpop_proof_malformed``); ``htm`` equals
   the original method (``dpop_htm_mismatch``); ``htu`` equals the original target URI, both without
   query and fragment, after RFC 3986 normalization (``dpop_htu_mismatch``); ``iat`` no older than
   ``dpop.iat_window`` and no further ahead than ``dpop.iat_skew`` (``dpop_iat_too_old``,
   ``dpop_iat_in_future``); ``ath`` equals base64url(SHA-256(token)) (``dpop_ath_mismatch``);
6. the ``jti`` was never accepted for this key within the window (``dpop_replayed``, §11.1).

Parsing is bounded: the header of a proof that passed (``typ``, ``alg``, ``jwk``) is remembered with
its public key in a byte-bounded :class:`Memo`, so a client's next proof costs one signature
verification, one small JSON parse and a few compares. Server nonces (``DPoP-Nonce``,
``use_dpop_nonce``) are not issued: a ``nonce`` claim is ignored.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from sidecar.config import DpopConfig
from sidecar.core.errors import InvalidDpopProof
from sidecar.core.errors import ReplayStoreFull as ReplayFull
from sidecar.core.htu import Normalizer
from sidecar.core.replay import ReplayStore, StoreFull
from sidecar.support.jose import b64url_decode, json_segment, jwk_thumbprint, sha256_thumbprint
from sidecar.support.memo import Memo

_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1,
                                              "ES512": ec.SECP521R1, "ES256K": ec.SECP256K1}
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
MIN_RSA_BITS = 2048
MAX_JTI = 256
MAX_HEADER_CLAIMS = 16


def access_token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url(SHA-256(ASCII(token)))."""
    return sha256_thumbprint(token.encode())


def _fits(key: Any, alg: str) -> bool:
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES[alg])
    if alg in _RSA:
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


class ProofKey:
    """The verified header of a proof: its algorithm, public key and thumbprint."""

    __slots__ = ("algorithm", "key", "thumbprint")

    def __init__(self, algorithm: Any, key: Any, thumbprint: str) -> None:
        self.algorithm = algorithm
        self.key = key
        self.thumbprint = thumbprint


class ProofVerifier:
    """Checks one request's proof against the token's ``cnf.jkt`` and ``ath`` (see the module doc)."""

    def __init__(self, config: DpopConfig, replay: ReplayStore, *, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``secret``: the key of the replay keys; a fleet shares one (:mod:`sidecar.core.replay`), so
        that every replica names a proof alike. Default: one of this process's own."""
        # Resolved once: an algorithm pyjwt lacks fails at start, not per request.
        self._algorithms = {a: jwt.get_algorithm_by_name(a) for a in config.algorithms if a.lower() != "none"}
        self.algs = " ".join(config.algorithms)  # the challenge's algs parameter (§7.1)
        self._window = config.iat_window
        self._skew = config.iat_skew
        self._max_size = config.max_proof_size
        self._replay = replay
        self._clock = clock
        self._normalize = Normalizer()
        # Replay keys: the jti is never stored.
        self._secret = hashlib.blake2b(key=secret or os.urandom(32), digest_size=16, person=b"dpop replay")
        self._keys: Memo[str, ProofKey] = Memo(4096, max_bytes=4 * 1024 * 1024,
                                               size_of=lambda header, _key: 2 * len(header) + 512)

    def verify(self, proofs: Sequence[str], *, jkt: str, ath: str, method: str | None,
               uri: str | None) -> tuple[bytes, float]:
        """Raise :class:`InvalidDpopProof` (or ReplayStoreFull) unless the one proof holds; return the
        replay key the proof was claimed under here and the wall-clock end of its window (a fleet
        claims it again across replicas)."""
        if not proofs:
            raise InvalidDpopProof("dpop_proof_missing", "no DPoP header")
        if len(proofs) > 1:
            raise InvalidDpopProof("dpop_proof_duplicated", "more than one DPoP header")
        proof = proofs[0].strip(" \t")
        if len(proof) > self._max_size:
            raise InvalidDpopProof("dpop_proof_too_large", f"DPoP header longer than {self._max_size}")
        parts = proof.split(".")
        if len(parts) != 3 or not proof.isascii():
            raise InvalidDpopProof("dpop_proof_malformed", "not a compact JWS")
        header, payload, signature = parts
        key = self._keys.get(header)
        fresh = key is None
        if key is None:
            key = self._header(header)
        # Constant time: how much of a forged key's thumbprint matched must not leak.
        if not hmac.compare_digest(key.thumbprint.encode(), jkt.encode("utf-8", "surrogatepass")):
            raise InvalidDpopProof("dpop_key_mismatch", "the proof key's thumbprint is not cnf.jkt")
        try:
            valid = key.algorithm.verify(f"{header}.{payload}".encode(), key.key, b64url_decode(signature))
        except (ValueError, binascii.Error):
            valid = False
        if not valid:
            raise InvalidDpopProof("dpop_invalid_signature", "signature verification failed")
        claims = self._claims(payload)
        self._check_claims(claims, ath=ath, method=method, uri=uri)
        claimed = self._first_use(key.thumbprint, claims["jti"], claims["iat"])
        if fresh:
            self._keys.put(header, key)  # only keys of proofs that passed: bound to a valid token
        return claimed

    def _header(self, segment: str) -> ProofKey:
        header = _json_object(segment, "header")
        if len(header) > MAX_HEADER_CLAIMS:
            raise InvalidDpopProof("dpop_proof_malformed", "too many header parameters")
        if header.get("typ") != "dpop+jwt":
            raise InvalidDpopProof("dpop_wrong_type", f"typ {str(header.get('typ'))[:40]!r} is not dpop+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidDpopProof("dpop_algorithm_not_allowed", f"alg {str(alg)[:20]!r} is not in dpop.algorithms")
        if "crit" in header:
            raise InvalidDpopProof("dpop_proof_malformed", "crit: no extension is understood (RFC 7515 §4.1.11)")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or len(jwk) > MAX_HEADER_CLAIMS:
            raise InvalidDpopProof("dpop_bad_key", "jwk is not a JSON object")
        private = _PRIVATE.intersection(jwk)
        if private:
            raise InvalidDpopProof("dpop_bad_key", f"jwk holds private members: {', '.join(sorted(private))}")
        try:
            thumbprint = jwk_thumbprint(jwk)
            algorithm = self._algorithms[alg]
            key = algorithm.from_jwk(jwk)
        except (ValueError, TypeError, KeyError, jwt.PyJWTError) as exc:
            raise InvalidDpopProof("dpop_bad_key", f"jwk: {type(exc).__name__}") from None
        if not _fits(key, alg):
            raise InvalidDpopProof("dpop_bad_key", f"jwk does not fit alg {alg}")
        return ProofKey(algorithm, key, thumbprint)

    def _claims(self, segment: str) -> dict[str, Any]:
        claims = _json_object(segment, "payload")
        jti, htm, htu, iat = claims.get("jti"), claims.get("htm"), claims.get("htu"), claims.get("iat")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
            raise InvalidDpopProof("dpop_proof_malformed", "jti: must be a string of 1 to 256 characters")
        if not isinstance(htm, str) or not isinstance(htu, str):
            raise InvalidDpopProof("dpop_proof_malformed", "htm and htu: must be strings")
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            raise InvalidDpopProof("dpop_proof_malformed", "iat: must be a NumericDate")
        return claims

    def _check_claims(self, claims: dict[str, Any], *, ath: str, method: str | None, uri: str | None) -> None:
        if method is None or claims["htm"] != method:
            raise InvalidDpopProof("dpop_htm_mismatch", f"htm {claims['htm'][:16]!r} is not the request method")
        expected = self._normalize(uri) if uri else None
        if expected is None:
            raise InvalidDpopProof("dpop_htu_mismatch", "the proxy did not describe the original request")
        if self._normalize(claims["htu"]) != expected:
            raise InvalidDpopProof("dpop_htu_mismatch", "htu is not the request's target URI")
        now = self._clock()
        iat = claims["iat"]
        if iat < now - self._window:
            raise InvalidDpopProof("dpop_iat_too_old", f"iat is more than {self._window:g} s old")
        if iat > now + self._skew:
            raise InvalidDpopProof("dpop_iat_in_future", f"iat is more than {self._skew:g} s ahead")
        proof_ath = claims.get("ath")
        if not isinstance(proof_ath, str) or not hmac.compare_digest(proof_ath.encode("utf-8", "surrogatepass"),
                                                                     ath.encode()):
            raise InvalidDpopProof("dpop_ath_mismatch", "ath is not the hash of this access token")

    def _first_use(self, thumbprint: str, jti: str, iat: float) -> tuple[bytes, float]:
        hashed = self._secret.copy()
        hashed.update(f"{thumbprint}\x00{jti}".encode("utf-8", "surrogatepass"))
        key, until = hashed.digest(), iat + self._window
        try:
            first = self._replay.claim(key, until, thumbprint)  # charged to this client's key
        except StoreFull as exc:
            raise ReplayFull(str(exc)) from None
        if not first:
            raise InvalidDpopProof("dpop_replayed", "this proof's jti was already used")
        return key, until


def _json_object(segment: str, part: str) -> dict[str, Any]:
    try:
        value = json_segment(segment)
    except (ValueError, binascii.Error):
        raise InvalidDpopProof("dpop_proof_malformed", f"{part}: not base64url JSON") from None
    if not isinstance(value, dict):
        raise InvalidDpopProof("dpop_proof_malformed", f"{part}: not a JSON object")
    return value
