"""RFC 9068 JWT access tokens from the real IdP, validated by the sidecar against its JWK Set.

oidc-provider issues an ``at+jwt`` carrying ``cnf.x5t#S256`` for the JWT resource (resource
indicators) but will not introspect it (8.x answers ``{"active": false}``), so only local
validation can accept it. Through real nginx, with real client certificates.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.interop.conftest import StartStack, own_idp
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import start_stack
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.interop


def jose_header(token: str) -> dict[str, str]:
    head = token.split(".")[0]
    decoded: dict[str, str] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return decoded


def test_the_real_idp_issues_a_bound_at_jwt_that_it_does_not_introspect(oidc: OidcProvider) -> None:
    token = oidc.access_token("alice", resource=JWT_RESOURCE)
    assert jose_header(token)["typ"] == "at+jwt"
    assert oidc.introspect(token).json() == {"active": False}


def test_a_bound_jwt_access_token_is_validated_locally_and_allowed_only_with_its_certificate(
    stacks: StartStack, oidc: OidcProvider, pki: TestPki
) -> None:
    stack = stacks(SIDECAR_IDP__TOKEN_FORMAT="jwt", SIDECAR_POLICY__AUDIENCES=JWT_RESOURCE)
    token = oidc.access_token("alice", scope="read write", resource=JWT_RESOURCE)
    reply = stack.call(token, "alice")
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    assert seen.header("x-credential-sub") == "alice"  # RFC 9068 §2.2: sub is there, unlike introspection
    assert seen.header("x-credential-client-id") == "alice"
    assert seen.header("x-credential-aud") == JWT_RESOURCE
    assert seen.header("x-credential-iss") == oidc.issuer
    assert seen.header("x-credential-scope") == "read write"
    assert seen.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256
    assert seen.header("x-credential-jti")
    reached = len(stack.upstream.received)
    reply = stack.call(token, "bob")
    assert reply.status == 401 and 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert stack.call(token).status == 401
    assert len(stack.upstream.received) == reached
    assert stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="cnf_mismatch") == 1
    # Local validation: the IdP was asked for its JWK Set, never to introspect.
    assert stack.sidecar.metric("sidecar_idp_requests_total", kind="jwks", result="ok") >= 1
    assert stack.sidecar.metric("sidecar_idp_requests_total", kind="introspection") == 0


@pytest.mark.parametrize("token_format", ["auto", "jwt_then_introspection"])
def test_jwt_and_opaque_tokens_side_by_side_each_checked_the_way_it_needs(
    stacks: StartStack, oidc: OidcProvider, token_format: str
) -> None:
    stack = stacks(SIDECAR_IDP__TOKEN_FORMAT=token_format,
                   SIDECAR_POLICY__AUDIENCES=f"{JWT_RESOURCE},{OPAQUE_RESOURCE}")
    jwt = oidc.access_token("alice", resource=JWT_RESOURCE)
    opaque = oidc.access_token("alice", resource=OPAQUE_RESOURCE)
    assert stack.call(jwt, "alice").status == 200, stack.diagnostics()
    assert stack.upstream.last.header("x-credential-aud") == JWT_RESOURCE
    assert stack.call(opaque, "alice").status == 200, stack.diagnostics()
    assert stack.upstream.last.header("x-credential-aud") == OPAQUE_RESOURCE
    assert stack.sidecar.metric("sidecar_idp_requests_total", kind="introspection", result="active") == 1
    assert stack.call(jwt, "bob").status == 401
    assert stack.call(opaque, "bob").status == 401


def test_introspection_only_denies_the_real_idps_jwt_access_token(stacks: StartStack, oidc: OidcProvider) -> None:
    stack = stacks(SIDECAR_IDP__TOKEN_FORMAT="introspection")
    token = oidc.access_token("alice", resource=JWT_RESOURCE)
    assert stack.call(token, "alice").status == 401
    assert stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="token_inactive") == 1


def test_while_the_idp_is_down_a_jwt_is_still_validated_locally_and_an_opaque_token_is_not(
    pki: TestPki, client_files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    idp = own_idp(pki, tmp_path / "idp")
    stack = None
    try:
        stack = start_stack(idp, tmp_path, client_files=client_files, overrides={
            "SIDECAR_IDP__TOKEN_FORMAT": "auto", "SIDECAR_CACHE__MAX_ENTRIES": "0",
            "SIDECAR_POLICY__AUDIENCES": f"{JWT_RESOURCE},{OPAQUE_RESOURCE}"})
        jwt = idp.access_token("alice", resource=JWT_RESOURCE)
        opaque = idp.access_token("alice", resource=OPAQUE_RESOURCE)
        assert stack.call(jwt, "alice").status == 200, stack.diagnostics()
        idp.stop()
        assert stack.call(jwt, "alice").status == 200  # the JWK Set fetched before is still valid
        assert stack.call(jwt, "bob").status == 401
        assert stack.call(opaque, "alice").status == 500  # introspection needed: sidecar 503
    finally:
        if stack is not None:
            stack.stop()
        idp.stop()
