from __future__ import annotations

import json

from sidecar.config import ResponseConfig
from sidecar.core.errors import InsufficientScope, InvalidToken, MissingToken
from sidecar.core.headers import HeaderBuilder, sanitize
from sidecar.core.token_info import TokenInfo
from sidecar.fronts.render import deny_body, deny_headers
from sidecar.idp.failures import IdpError, IdpFailure


def test_every_configured_header_is_present_and_empty_when_the_claim_is_absent() -> None:
    builder = HeaderBuilder(ResponseConfig(claims={"tenant": "tenant"}))
    headers = builder.build(TokenInfo(active=True, sub="alice", aud=("a", "b"), exp=5))
    assert headers["x-credential-sub"] == "alice"
    assert headers["x-credential-aud"] == "a b"
    assert headers["x-credential-exp"] == "5"
    assert headers["x-credential-username"] == "" and headers["x-credential-tenant"] == ""
    assert set(headers) == set(builder.names)
    assert len(builder.names) == 12


def test_claims_with_cr_lf_and_controls_never_split_a_header_and_are_bounded() -> None:
    builder = HeaderBuilder(ResponseConfig(max_value_length=32, claims={"note": "note"}))
    info = TokenInfo(active=True, sub="a\r\nX-Injected: 1", extra={"note": "x\x00\x1b\x7f\u0085" + "y" * 100})
    headers = builder.build(info)
    assert headers["x-credential-sub"] == "aX-Injected: 1"
    assert headers["x-credential-note"] == "x" + "y" * 31
    assert all("\r" not in v and "\n" not in v for v in headers.values())
    assert sanitize("\u00e9t\u00e9", 10) == "\u00e9t\u00e9"


def test_envoy_is_asked_to_remove_token_and_certificate_headers_when_configured() -> None:
    builder = HeaderBuilder(ResponseConfig(remove_upstream_headers=("Authorization", "x-client-cert")))
    assert builder.build(TokenInfo(active=True))["x-envoy-auth-headers-to-remove"] == "authorization, x-client-cert"


def test_www_authenticate_follows_rfc6750_and_escapes_values() -> None:
    assert deny_headers(MissingToken("token_missing"), "api")["WWW-Authenticate"] == 'Bearer realm="api"'
    challenge = deny_headers(InvalidToken("cnf_mismatch"), 'a"b\\c')["WWW-Authenticate"]
    assert challenge == ('Bearer realm="a\\"b\\\\c", error="invalid_token", '
                         'error_description="The access token is invalid"')
    scoped = deny_headers(InsufficientScope("scope_missing", scope="read write"), "api")["WWW-Authenticate"]
    assert scoped.endswith('error="insufficient_scope", error_description="The access token lacks a '
                           'required scope", scope="read write"')


def test_idp_unavailable_carries_retry_after_and_a_generic_body() -> None:
    denial = IdpError(IdpFailure.TIMEOUT, "secret detail", retry_after=3)
    assert deny_headers(denial, "api")["Retry-After"] == "3"
    body = json.loads(deny_body(denial))
    assert body == {"error": "temporarily_unavailable", "reason": "idp_unavailable"}
    assert b"secret detail" not in deny_body(denial)
