"""idp.token_format: which verifier a token goes to, and the configuration rules around it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sidecar.config import Config, ConfigError, from_mapping
from sidecar.core.token_info import TokenInfo
from sidecar.idp.discovery import Endpoints
from sidecar.idp.token_format import TokenFormatVerifier, jwt_header, local_jwt_enabled

ISSUER = "https://idp.example"


def segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def shaped(header: dict[str, Any], signature: str = "c2ln") -> str:
    return f"{segment(header)}.{segment({'sub': 'a'})}.{signature}"


@pytest.mark.parametrize(("token", "is_jwt"), [
    (shaped({"alg": "ES256", "typ": "at+jwt"}), True),
    (shaped({"alg": "none"}, signature=""), True),
    ("opaque-Token_123", False),
    ("a.b", False),
    ("a.b.c.d.e", False),  # JWE compact
    (f"{segment(b'not json')}.e30.c2ln", False),
    (f"{segment([1, 2])}.e30.c2ln", False),
    (shaped({"typ": "at+jwt"}), False),  # no alg: not a JOSE header
    (shaped({"alg": "ES256"}).replace(".", "..", 1), False),
    ("e30=.e30.c2ln", False),  # padding is not base64url in JWS
])
def test_jwt_shape_is_three_base64url_segments_with_a_json_header_naming_alg(token: str, is_jwt: bool) -> None:
    assert (jwt_header(token) is not None) is is_jwt


class Named:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []

    async def verify(self, token: str) -> TokenInfo:
        self.seen.append(token)
        return TokenInfo(active=True, sub=self.name)


class FixedDiscovery:
    def __init__(self, jwks_uri: str | None) -> None:
        self.jwks_uri = jwks_uri

    async def get(self) -> Endpoints:
        return Endpoints("https://idp/introspect", self.jwks_uri, ISSUER)


AT_JWT = shaped({"alg": "ES256", "typ": "at+jwt"})
OTHER_JWT = shaped({"alg": "RS256", "typ": "JWT"})
OPAQUE = "2YotnFZFEjr1zCsicMWpAA"


@pytest.mark.parametrize(("mode", "jwks_uri", "routes"), [
    ("jwt_then_introspection", "https://idp/jwks", {AT_JWT: "local", OTHER_JWT: "introspection",
                                                     OPAQUE: "introspection"}),
    ("auto", "https://idp/jwks", {AT_JWT: "local", OTHER_JWT: "local", OPAQUE: "introspection"}),
    ("auto", None, {AT_JWT: "introspection", OTHER_JWT: "introspection", OPAQUE: "introspection"}),
])
async def test_routes_each_token_per_mode(mode: str, jwks_uri: str | None, routes: dict[str, str]) -> None:
    chooser = TokenFormatVerifier(mode, Named("introspection"), Named("local"), FixedDiscovery(jwks_uri))  # type: ignore[arg-type]
    for token, expected in routes.items():
        assert (await chooser.verify(token)).sub == expected, token


async def test_jwt_mode_sends_every_token_to_local_validation() -> None:
    local = Named("local")
    chooser = TokenFormatVerifier("jwt", None, local, FixedDiscovery("https://idp/jwks"))  # type: ignore[arg-type]
    for token in (AT_JWT, OPAQUE):
        assert (await chooser.verify(token)).sub == "local"


def config(**sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {"idp": {"issuer": ISSUER, "client_id": "sidecar", "auth_method": "client_secret_post",
                                   "client_secret": "s"}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return from_mapping(raw)


def test_auto_validates_locally_only_with_audiences_and_an_issuer() -> None:
    assert not local_jwt_enabled(config())
    assert local_jwt_enabled(config(policy={"audiences": ["api"]}))
    assert not local_jwt_enabled(config(idp={"issuer": None, "introspection_endpoint": "https://idp/i"},
                                        policy={"audiences": ["api"]}))
    assert not local_jwt_enabled(config(idp={"token_format": "introspection"}, policy={"audiences": ["api"]}))


@pytest.mark.parametrize("mode", ["jwt", "jwt_then_introspection"])
def test_local_jwt_modes_refuse_to_start_without_audiences(mode: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(idp={"token_format": mode})
    assert error.value.key == "policy.audiences"
    assert local_jwt_enabled(config(idp={"token_format": mode}, policy={"audiences": ["api"]}))


def test_jwt_mode_needs_an_issuer_to_check_iss_and_no_introspection_client() -> None:
    with pytest.raises(ConfigError) as error:
        from_mapping({"idp": {"jwks_uri": "https://idp/jwks", "token_format": "jwt"},
                      "policy": {"audiences": ["api"]}})
    assert error.value.key == "idp.issuer"
    jwt_only = from_mapping({"idp": {"jwks_uri": "https://idp/jwks", "token_format": "jwt"},
                             "policy": {"audiences": ["api"], "allowed_issuers": [ISSUER]}})
    assert jwt_only.idp.client_id == ""


@pytest.mark.parametrize(("idp", "key"), [
    ({"jwt_algorithms": ["HS256"]}, "idp.jwt_algorithms"),
    ({"jwt_algorithms": ["none"]}, "idp.jwt_algorithms"),
    ({"jwt_algorithms": ["RS1"]}, "idp.jwt_algorithms"),
    ({"jwt_algorithms": []}, "idp.jwt_algorithms"),
    ({"jwks_max_age": 0}, "idp.jwks_max_age"),
    ({"jwks_min_refresh_interval": -1}, "idp.jwks_min_refresh_interval"),
    ({"jwks_uri": "http://idp/jwks"}, "idp.jwks_uri"),
])
def test_invalid_jwt_settings_name_their_key(idp: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(idp=idp)
    assert error.value.key == key


def test_jwks_settings_come_from_the_environment() -> None:
    env = {"SIDECAR_IDP__JWKS_MAX_AGE": "60", "SIDECAR_IDP__JWKS_MIN_REFRESH_INTERVAL": "2.5",
           "SIDECAR_IDP__TOKEN_FORMAT": "jwt_then_introspection", "SIDECAR_POLICY__AUDIENCES": "api"}
    loaded = from_mapping({"idp": {"issuer": ISSUER, "client_id": "c", "client_secret": "s",
                                   "auth_method": "client_secret_basic"}}, env)
    assert (loaded.idp.jwks_max_age, loaded.idp.jwks_min_refresh_interval) == (60.0, 2.5)
    assert loaded.idp.token_format == "jwt_then_introspection"


class BrokenDiscovery:
    async def get(self) -> Endpoints:
        from sidecar.idp.discovery import DiscoveryError

        raise DiscoveryError("metadata unreachable")


async def test_auto_with_a_configured_jwks_uri_does_not_need_the_discovery_document() -> None:
    chooser = TokenFormatVerifier("auto", Named("introspection"), Named("local"), BrokenDiscovery(),  # type: ignore[arg-type]
                                  jwks_uri="https://idp/jwks")
    assert (await chooser.verify(AT_JWT)).sub == "local"


async def test_auto_without_a_configured_jwks_uri_fails_closed_when_discovery_fails() -> None:
    from sidecar.core.errors import IdpUnavailable

    chooser = TokenFormatVerifier("auto", Named("introspection"), Named("local"), BrokenDiscovery())  # type: ignore[arg-type]
    with pytest.raises(IdpUnavailable):
        await chooser.verify(AT_JWT)
