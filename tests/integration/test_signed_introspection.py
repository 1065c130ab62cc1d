"""RFC 9701 modes against an IdP that only answers plain JSON (the development IdP): jwt_required
fails closed, jwt_preferred takes the JSON. The signed path itself is proven against the real
oidc-provider (tests/interop/test_idp_client_auth.py) and below against forged answers."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.core.errors import IdpUnavailable
from sidecar.dev.fakeidp import FakeIdp
from sidecar.idp.jwk_set import VerifyKey
from sidecar.idp.signed_introspection import verify_signed_answer
from tests.conftest import MakeSidecar
from tests.support.pki_fixtures import TestPki


async def test_an_unsigned_answer_fails_closed_only_when_signed_answers_are_required(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    required = await make_sidecar(idp={"introspection_response": "jwt_required"})
    response = await required.check(token, pki.alice)
    assert response.status == 503 and (await response.json())["reason"] == "idp_unavailable"
    preferred = await make_sidecar(idp={"introspection_response": "jwt_preferred"})
    assert (await preferred.check(token, pki.alice)).status == 200


KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())


class Keys:
    async def keys_for(self, kid: str | None) -> list[VerifyKey]:
        return [VerifyKey("k1", "ES256", KEY.public_key())] if kid in ("k1", None) else []


def signed(claims: dict[str, Any], *, key: Any = KEY, typ: str = "token-introspection+jwt", kid: str = "k1") -> str:
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": typ, "kid": kid})


def good(**changes: Any) -> dict[str, Any]:
    return {"iss": "https://idp.example", "aud": "sidecar", "iat": int(time.time()),
            "token_introspection": {"active": True, "token_type": "Bearer"}, **changes}


async def verify(text: str) -> Any:
    return await verify_signed_answer(text, Keys(), issuer="https://idp.example", client_id="sidecar",
                                      algorithms=("ES256",), leeway=5.0)


async def test_a_well_signed_answer_gives_its_introspection_object() -> None:
    assert (await verify(signed(good())))["active"] is True


@pytest.mark.parametrize(("name", "text"), [
    ("another key", signed(good(), key=OTHER)),
    ("an unknown kid", signed(good(), kid="k2")),
    ("another typ", signed(good(), typ="JWT")),
    ("another issuer", signed(good(iss="https://evil.example"))),
    ("another audience", signed(good(aud="someone-else"))),
    ("an old answer", signed(good(iat=int(time.time()) - 3600))),
    ("no token_introspection", signed(good(token_introspection="yes"))),
    ("not a JWT", "garbage"),
])
async def test_a_forged_or_stale_signed_answer_is_unusable(name: str, text: str) -> None:
    with pytest.raises(IdpUnavailable):
        await verify(text)
