"""RFC 9068 §4 validation, one rule per case, against a fixed key source (no network)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.config import IdpConfig, PolicyConfig
from sidecar.core.errors import InvalidToken
from sidecar.core.policy import Policy
from sidecar.dev.devidp import SigningKey
from sidecar.idp.jwk_set import KeySet, VerifyKey, parse_jwks
from sidecar.idp.jwt_access_token import MAX_KEYS_WITHOUT_KID, JwtAccessTokenVerifier, key_fits

ISSUER = "https://idp.example"
THUMBPRINT = "x" * 43
EC_KEY = SigningKey.generate("ES256", kid="ec")
RSA_KEY = SigningKey.generate("RS256", kid="rsa")
PS_KEY = SigningKey("ps", "PS256", RSA_KEY.private_key)


class Keys:
    def __init__(self, *keys: SigningKey) -> None:
        self.set: KeySet = parse_jwks(json.dumps({"keys": [k.public_jwk() for k in keys]}).encode())
        self.asked: list[str | None] = []

    async def keys_for(self, kid: str | None) -> Sequence[VerifyKey]:
        self.asked.append(kid)
        return self.set.find(kid)


def verifier(keys: Keys | None = None, **idp: Any) -> JwtAccessTokenVerifier:
    config = IdpConfig(**{"issuer": ISSUER, "jwt_algorithms": ("RS256", "PS256", "ES256", "EdDSA"), **idp})
    return JwtAccessTokenVerifier(config, keys or Keys(EC_KEY, RSA_KEY), extra_claims=("tenant",))


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": "api", "sub": "alice", "client_id": "alice", "iat": now, "exp": now + 300,
            "jti": "j1", "scope": "read write", "cnf": {"x5t#S256": THUMBPRINT}, "tenant": "t1"}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def sign(key: SigningKey = EC_KEY, header: dict[str, Any] | None = None, **changes: Any) -> str:
    headers = {k: v for k, v in {"typ": "at+jwt", "kid": key.kid, **(header or {})}.items()
               if v is not None or k == "typ"}  # typ None: no typ at all (pyjwt would write JWT)
    return jwt.encode(claims(**changes), key.private_key, algorithm=key.alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], **changes: Any) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims(**changes)).encode())}"


def hs256_with_public_key() -> str:
    pem = EC_KEY.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = unsigned({"alg": "HS256", "typ": "at+jwt", "kid": "ec"})
    return f"{body}.{b64url(hmac.new(pem, body.encode(), hashlib.sha256).digest())}"


async def test_a_valid_token_becomes_token_info_with_binding_scopes_and_extra_claims() -> None:
    info = await verifier().verify(sign())
    assert info.active and info.iss == ISSUER and info.aud == ("api",) and info.client_id == "alice"
    assert info.cnf_x5t_s256 == THUMBPRINT and info.scopes == {"read", "write"}
    assert info.extra == {"tenant": "t1"} and info.exp is not None


@pytest.mark.parametrize("key", [EC_KEY, RSA_KEY, PS_KEY], ids=lambda k: k.alg)
async def test_each_allowed_asymmetric_algorithm_verifies(key: SigningKey) -> None:
    assert (await verifier(Keys(EC_KEY, RSA_KEY, PS_KEY)).verify(sign(key))).active


async def test_application_at_jwt_in_any_case_is_an_access_token_type() -> None:
    assert (await verifier().verify(sign(header={"typ": "Application/AT+JWT"}))).active


async def test_a_token_without_kid_is_checked_against_every_fitting_key() -> None:
    keys = Keys(SigningKey.generate("ES256", kid="other"), EC_KEY)
    assert (await verifier(keys).verify(sign(header={"kid": None}))).active
    assert keys.asked == [None]


DENIALS: dict[str, tuple[Callable[[], str], str]] = {
    "not a JWT at all": (lambda: "opaque-token", "jwt_malformed"),
    "a header that is not JSON": (lambda: "bm90LWpzb24.e30.c2ln", "jwt_malformed"),
    "five segments (JWE)": (lambda: "a.b.c.d.e", "jwt_malformed"),
    "typ JWT": (lambda: sign(header={"typ": "JWT"}), "jwt_wrong_type"),
    "no typ": (lambda: sign(header={"typ": None}), "jwt_wrong_type"),
    "typ that is not a string": (lambda: sign(header={"typ": ["at+jwt"]}), "jwt_wrong_type"),
    "alg none": (lambda: unsigned({"alg": "none", "typ": "at+jwt", "kid": "ec"}) + ".", "jwt_algorithm_not_allowed"),
    "HS256 with the public key as secret": (hs256_with_public_key, "jwt_algorithm_not_allowed"),
    "an allowed alg the key does not fit": (lambda: sign(header={"kid": "rsa"}), "jwt_key_mismatch"),
    "an alg other than the one the JWK pins": (lambda: sign(PS_KEY, header={"kid": "rsa"}), "jwt_key_mismatch"),
    "a kid that is not a string": (lambda: unsigned({"alg": "ES256", "typ": "at+jwt", "kid": 1}) + ".c2ln",
                                   "jwt_malformed"),
    "an unknown kid": (lambda: sign(header={"kid": "nope"}), "jwt_unknown_key"),
    "another key under a known kid": (lambda: sign(SigningKey.generate("ES256", kid="ec")), "jwt_invalid_signature"),
    "a changed payload": (lambda: _swap_payload(sign(), claims(scope="admin")), "jwt_invalid_signature"),
    "no exp": (lambda: sign(exp=None), "jwt_malformed"),
    "exp that is not a number": (lambda: sign(exp="tomorrow"), "jwt_malformed"),
    "no iss": (lambda: sign(iss=None), "jwt_malformed"),
    "another issuer": (lambda: sign(iss="https://evil.example"), "issuer_not_allowed"),
    "an issuer that differs by a trailing slash": (lambda: sign(iss=ISSUER + "/"), "issuer_not_allowed"),
    "a claim of the wrong type": (lambda: sign(scope=["read"]), "jwt_malformed"),
    "a cnf that is not an object": (lambda: sign(cnf="x"), "jwt_malformed"),
}


def _swap_payload(token: str, payload: dict[str, Any]) -> str:
    head, _, signature = token.split(".")
    return f"{head}.{b64url(json.dumps(payload).encode())}.{signature}"


@pytest.mark.parametrize("case", DENIALS.values(), ids=DENIALS.keys())
async def test_denies_with_a_precise_reason(case: tuple[Callable[[], str], str]) -> None:
    make, reason = case
    with pytest.raises(InvalidToken) as denied:
        await verifier().verify(make())
    assert denied.value.reason == reason and denied.value.status == 401


TIME_DENIALS: dict[str, tuple[Callable[[], str], str]] = {
    "expired beyond the leeway": (lambda: sign(exp=int(time.time()) - 10), "token_expired"),
    "nbf in the future": (lambda: sign(nbf=int(time.time()) + 60), "token_not_yet_valid"),
    "iat in the future": (lambda: sign(iat=int(time.time()) + 60), "token_not_yet_valid"),
}


@pytest.mark.parametrize("case", TIME_DENIALS.values(), ids=TIME_DENIALS.keys())
async def test_the_time_window_is_the_policys_with_its_own_leeway(case: tuple[Callable[[], str], str]) -> None:
    make, reason = case
    info = await verifier().verify(make())  # the signature holds: time is not the issuer's to judge
    with pytest.raises(InvalidToken) as denied:
        Policy(PolicyConfig(leeway=5)).check_time(info, time.time())
    assert denied.value.reason == reason
    Policy(PolicyConfig(leeway=120)).check_time(info, time.time())  # a named policy's leeway widens it


async def test_an_alg_outside_idp_jwt_algorithms_is_refused_even_with_a_fitting_key() -> None:
    only_ec = JwtAccessTokenVerifier(IdpConfig(issuer=ISSUER, jwt_algorithms=("ES256",)), Keys(EC_KEY, RSA_KEY))
    with pytest.raises(InvalidToken) as denied:
        await only_ec.verify(sign(RSA_KEY))
    assert denied.value.reason == "jwt_algorithm_not_allowed"


async def test_leeway_accepts_small_clock_skew() -> None:
    now = int(time.time())
    info = await verifier().verify(sign(exp=now - 10, nbf=now + 10))
    Policy(PolicyConfig(leeway=30)).check_time(info, now)


async def test_without_its_own_issuer_the_keys_bind_and_the_policys_allowed_issuers_decide() -> None:
    other = "https://tenant.idp.example"
    info = await verifier(issuer=None, jwks_uri="https://idp.example/jwks").verify(sign(iss=other))
    assert info.iss == other
    assert Policy(PolicyConfig(allowed_issuers=(other,))).static_denial(info) is None
    denial = Policy(PolicyConfig(allowed_issuers=(ISSUER,))).static_denial(info)
    assert denial is not None and denial.reason == "issuer_not_allowed"


async def test_unknown_kid_lookups_reach_the_key_source_once_per_token() -> None:
    keys = Keys(EC_KEY)
    with pytest.raises(InvalidToken):
        await verifier(keys).verify(sign(header={"kid": "k9"}))
    assert keys.asked == ["k9"]


def test_key_fit_checks_curve_type_and_pinned_alg() -> None:
    p384 = VerifyKey("p384", None, ec.generate_private_key(ec.SECP384R1()).public_key())
    rsa_unpinned = VerifyKey("r", None, RSA_KEY.private_key.public_key())
    assert not key_fits(p384, "ES256") and key_fits(p384, "ES384")
    assert key_fits(rsa_unpinned, "RS256") and key_fits(rsa_unpinned, "PS256")
    assert not key_fits(rsa_unpinned, "ES256") and not key_fits(rsa_unpinned, "HS256")
    assert not key_fits(VerifyKey("r", "RS256", RSA_KEY.private_key.public_key()), "PS256")


async def test_a_token_without_kid_is_refused_when_too_many_keys_fit() -> None:
    many = Keys(*(SigningKey.generate("ES256", kid=f"k{i}") for i in range(MAX_KEYS_WITHOUT_KID)), EC_KEY)
    with pytest.raises(InvalidToken) as denied:
        await verifier(many).verify(sign(header={"kid": None}))
    assert denied.value.reason == "jwt_unknown_key"
    assert (await verifier(many).verify(sign())).active  # with its kid, the same token shape passes
