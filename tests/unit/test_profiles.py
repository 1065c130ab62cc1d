"""IdP profiles (sidecar/idp/profiles.py): each IdP's access tokens, shaped exactly as that IdP
documents them and signed by test keys, pass local validation with their scopes and client where
the policy reads them; the same IdP's ID tokens, signed by the same keys, are refused.

Shapes: Keycloak (access token ``typ: JWT`` with the ``typ`` claim ``Bearer``, ``azp``; ID token
``typ`` claim ``ID``), Entra ID v1 (``https://sts.windows.net/{tid}/``, ``appid``, ``scp``) and v2
(``.../{tid}/v2.0``, ``azp``, ``scp``; app-only ``roles``), Okta (no ``typ``, ``cid``, ``scp``
array), Auth0 (``typ: JWT``, ``azp``, ``scope`` and ``permissions``), RFC 9068 (``at+jwt``).
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from sidecar.config import IdpConfig, PolicyConfig
from sidecar.core.errors import InvalidToken
from sidecar.core.policy import Policy
from sidecar.core.token_info import TokenInfo
from sidecar.dev.devidp import SigningKey
from sidecar.idp.jwt_access_token import JwtAccessTokenVerifier
from tests.unit.test_jwt_access_token import Keys

KEY = SigningKey.generate("RS256", kid="k1")
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
API_GUID = "6e74172b-be56-4843-9ff4-e66a39bb12e3"
CLIENT_GUID = "4a1aa1d5-c567-49d0-ad0b-cd957a47f842"
ISSUERS = {
    "keycloak": "https://kc.example/realms/shop",
    "entra_v2": f"https://login.microsoftonline.com/{TENANT}/v2.0",
    "entra_v1": f"https://sts.windows.net/{TENANT}/",
    "okta": "https://dev-123456.okta.com/oauth2/default",
    "auth0": "https://shop.eu.auth0.com/",
    "rfc9068": "https://as.example",
}


def times() -> dict[str, int]:
    now = int(time.time())
    return {"iat": now, "nbf": now, "exp": now + 3600}


def sign(payload: dict[str, Any], typ: str | None) -> str:
    headers = {"kid": KEY.kid, "typ": typ}  # None: no typ at all (pyjwt would write JWT)
    return jwt.encode({**times(), **payload}, KEY.private_key, algorithm="RS256", headers=headers)


async def verify(profile: str, issuer: str, token: str) -> TokenInfo:
    idp = IdpConfig(issuer=issuer, profile=profile, jwt_algorithms=("RS256",))  # type: ignore[arg-type]
    return await JwtAccessTokenVerifier(idp, Keys(KEY)).verify(token)


async def refused(profile: str, issuer: str, token: str) -> str:
    with pytest.raises(InvalidToken) as denied:
        await verify(profile, issuer, token)
    return denied.value.reason


def allowed(info: TokenInfo, audience: str, *scopes: str) -> bool:
    policy = Policy(PolicyConfig(audiences=(audience,), required_scopes=scopes))
    return policy.static_denial(info) is None and policy.scope_denial(info) is None


# ---- Keycloak: typ JWT by default; the typ claim says Bearer, ID or Refresh ----

KEYCLOAK_ACCESS = {"iss": ISSUERS["keycloak"], "aud": ["orders-api", "account"], "sub": "f2c3", "typ": "Bearer",
                   "azp": "web-shop", "session_state": "s1", "acr": "1", "scope": "openid orders:read profile",
                   "realm_access": {"roles": ["user"]}, "preferred_username": "alice", "jti": "j1"}


async def test_a_keycloak_access_token_of_typ_jwt_passes_with_azp_as_its_client() -> None:
    info = await verify("keycloak", ISSUERS["keycloak"], sign(KEYCLOAK_ACCESS, "JWT"))
    assert info.client_id == "web-shop" and "orders:read" in info.scopes
    assert allowed(info, "orders-api", "orders:read")


async def test_a_keycloak_service_account_token_names_its_client_in_client_id_and_azp() -> None:
    token = sign({**KEYCLOAK_ACCESS, "azp": "batch", "client_id": "batch", "scope": "orders:read"}, "JWT")
    assert (await verify("keycloak", ISSUERS["keycloak"], token)).client_id == "batch"


@pytest.mark.parametrize("changes", [
    {"typ": "ID", "aud": "web-shop", "azp": "web-shop", "at_hash": "x1", "nonce": "n"},  # the web app's ID token
    {"typ": "ID", "aud": "orders-api", "azp": "orders-api"},  # one issued to the API's own client
    {"typ": "ID", "aud": "orders-api", "azp": "web-shop"},  # the typ claim alone gives it away
    {"typ": "Refresh"},
], ids=["web app id token", "api client id token", "id typ claim", "refresh token"])
async def test_keycloak_id_and_refresh_tokens_signed_by_the_same_keys_are_refused(changes: dict[str, Any]) -> None:
    token = sign({**KEYCLOAK_ACCESS, **changes}, "JWT")
    assert await refused("keycloak", ISSUERS["keycloak"], token) == "jwt_not_access_token"


async def test_the_rfc9068_profile_refuses_keycloaks_typ_jwt() -> None:
    assert await refused("rfc9068", ISSUERS["keycloak"], sign(KEYCLOAK_ACCESS, "JWT")) == "jwt_wrong_type"


async def test_keycloak_with_at_jwt_turned_on_passes_under_the_rfc9068_profile() -> None:
    token = sign({**KEYCLOAK_ACCESS, "client_id": "web-shop"}, "at+jwt")
    assert allowed(await verify("rfc9068", ISSUERS["keycloak"], token), "orders-api", "orders:read")


# ---- Entra ID: typ JWT; v1 appid, v2 azp; scp a string; app-only tokens carry roles ----

ENTRA_V2 = {"aud": API_GUID, "iss": ISSUERS["entra_v2"], "aio": "x", "azp": CLIENT_GUID, "azpacr": "0",
            "name": "Alice", "oid": "o1", "preferred_username": "alice@contoso.com", "rh": "r",
            "scp": "Orders.Read Orders.Write", "sub": "s1", "tid": TENANT, "uti": "u", "ver": "2.0"}
ENTRA_V1 = {"aud": "api://orders", "iss": ISSUERS["entra_v1"], "appid": CLIENT_GUID, "appidacr": "0",
            "scp": "Orders.Read", "oid": "o1", "sub": "s1", "tid": TENANT, "unique_name": "alice@contoso.com",
            "ver": "1.0"}


async def test_an_entra_v2_access_token_passes_with_scp_as_scopes_and_azp_as_client() -> None:
    info = await verify("entra", ISSUERS["entra_v2"], sign(ENTRA_V2, "JWT"))
    assert info.client_id == CLIENT_GUID and info.scopes == {"Orders.Read", "Orders.Write"}
    assert allowed(info, API_GUID, "Orders.Write")


async def test_an_entra_v1_access_token_passes_with_appid_as_client() -> None:
    info = await verify("entra", ISSUERS["entra_v1"], sign(ENTRA_V1, "JWT"))
    assert info.client_id == CLIENT_GUID and allowed(info, "api://orders", "Orders.Read")


async def test_an_entra_app_only_token_has_its_roles_as_scopes() -> None:
    app_only = {k: v for k, v in ENTRA_V2.items() if k not in ("scp", "name", "preferred_username")}
    info = await verify("entra", ISSUERS["entra_v2"], sign({**app_only, "roles": ["Orders.ReadAll"]}, "JWT"))
    assert info.scopes == {"Orders.ReadAll"}


@pytest.mark.parametrize(("version", "id_token"), [
    ("entra_v2", {"aud": CLIENT_GUID, "iss": ISSUERS["entra_v2"], "name": "Alice", "oid": "o1", "sub": "s1",
                  "tid": TENANT, "nonce": "n", "preferred_username": "alice@contoso.com", "ver": "2.0"}),
    ("entra_v1", {"aud": CLIENT_GUID, "iss": ISSUERS["entra_v1"], "amr": ["pwd"], "oid": "o1", "sub": "s1",
                  "tid": TENANT, "unique_name": "alice@contoso.com", "ver": "1.0"}),
    ("entra_v2", {**ENTRA_V2, "aud": CLIENT_GUID}),  # an API that is its own client: refused, use at+jwt
])
async def test_entra_id_tokens_and_tokens_for_the_client_itself_are_refused(version: str,
                                                                            id_token: dict[str, Any]) -> None:
    assert await refused("entra", ISSUERS[version], sign(id_token, "JWT")) == "jwt_not_access_token"


# ---- Okta: no typ at all; cid; scp a JSON array ----

OKTA_ACCESS = {"ver": 1, "jti": "AT.x", "iss": ISSUERS["okta"], "aud": "api://default", "cid": "0oa1b2c3",
               "uid": "00u1", "scp": ["openid", "orders:read"], "auth_time": 1700000000, "sub": "alice@example.com"}


async def test_an_okta_access_token_without_typ_passes_with_its_scp_array() -> None:
    info = await verify("okta", ISSUERS["okta"], sign(OKTA_ACCESS, None))
    assert info.client_id == "0oa1b2c3" and info.scope == "openid orders:read"
    assert allowed(info, "api://default", "orders:read")


async def test_an_okta_id_token_is_refused() -> None:
    id_token = {"sub": "00u1", "name": "Alice", "ver": 1, "iss": ISSUERS["okta"], "aud": "0oa1b2c3", "jti": "ID.x",
                "amr": ["pwd"], "idp": "00o1", "nonce": "n", "auth_time": 1700000000, "at_hash": "h"}
    assert await refused("okta", ISSUERS["okta"], sign(id_token, None)) == "jwt_not_access_token"


async def test_an_okta_scp_that_is_not_an_array_of_scopes_is_malformed() -> None:
    token = sign({**OKTA_ACCESS, "scp": [{"admin": True}]}, None)
    assert await refused("okta", ISSUERS["okta"], token) == "jwt_malformed"


# ---- Auth0: typ JWT; azp; scope string plus the permissions array ----

AUTH0_ACCESS = {"iss": ISSUERS["auth0"], "sub": "auth0|123", "azp": "kX9client",
                "aud": ["https://orders.example", "https://shop.eu.auth0.com/userinfo"],
                "scope": "openid profile", "permissions": ["read:orders", "write:orders"]}


async def test_an_auth0_access_token_unites_scope_and_permissions() -> None:
    info = await verify("auth0", ISSUERS["auth0"], sign(AUTH0_ACCESS, "JWT"))
    assert info.scopes == {"openid", "profile", "read:orders", "write:orders"}
    assert info.client_id == "kX9client" and allowed(info, "https://orders.example", "write:orders")


async def test_an_auth0_client_credentials_token_passes() -> None:
    token = sign({"iss": ISSUERS["auth0"], "sub": "kX9client@clients", "aud": "https://orders.example",
                  "azp": "kX9client", "gty": "client-credentials", "scope": "read:orders"}, "JWT")
    assert allowed(await verify("auth0", ISSUERS["auth0"], token), "https://orders.example", "read:orders")


async def test_an_auth0_id_token_is_refused() -> None:
    id_token = {"iss": ISSUERS["auth0"], "sub": "auth0|123", "aud": "kX9client", "nonce": "n", "sid": "s",
                "name": "alice", "email": "alice@example.com"}
    assert await refused("auth0", ISSUERS["auth0"], sign(id_token, "JWT")) == "jwt_not_access_token"


# ---- RFC 9068, the default: at+jwt and nothing else ----

async def test_the_rfc9068_profile_takes_at_jwt_and_refuses_an_id_token_by_its_type() -> None:
    access = {"iss": ISSUERS["rfc9068"], "aud": "https://orders.example", "sub": "alice", "client_id": "web",
              "scope": "orders:read", "jti": "j"}
    assert allowed(await verify("rfc9068", ISSUERS["rfc9068"], sign(access, "at+jwt")), "https://orders.example")
    id_token = {"iss": ISSUERS["rfc9068"], "aud": "web", "sub": "alice", "nonce": "n"}
    assert await refused("rfc9068", ISSUERS["rfc9068"], sign(id_token, "JWT")) == "jwt_wrong_type"
    assert await refused("rfc9068", ISSUERS["rfc9068"], sign(id_token, None)) == "jwt_wrong_type"


@pytest.mark.parametrize("profile", ["keycloak", "entra", "auth0"])
async def test_a_relaxed_profile_still_refuses_a_type_that_is_not_an_access_token(profile: str) -> None:
    token = sign({**AUTH0_ACCESS, "iss": ISSUERS["rfc9068"]}, "logout+jwt")
    assert await refused(profile, ISSUERS["rfc9068"], token) == "jwt_wrong_type"


async def test_a_relaxed_profile_never_lets_the_policy_skip_the_audience() -> None:
    info = await verify("auth0", ISSUERS["auth0"], sign(AUTH0_ACCESS, "JWT"))
    denial = Policy(PolicyConfig(audiences=("https://billing.example",))).static_denial(info)
    assert denial is not None and denial.reason == "audience_mismatch"
