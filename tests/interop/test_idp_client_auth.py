"""The sidecar authenticates to the real OpenID provider (oidc-provider 8.8.1) in the ways Kong's
plugin does besides tls_client_auth: RFC 7523 private_key_jwt and RFC 8705 §2.2
self_signed_tls_client_auth, through real nginx. A wrong key or certificate fails closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.conftest import StartStack
from tests.interop.oidc_idp import OidcProvider
from tests.interop.stack import SidecarProcess

pytestmark = [pytest.mark.interop, pytest.mark.parity]


def decisions(sidecar: SidecarProcess, reason: str, outcome: str = "deny") -> float:
    return sidecar.metric("sidecar_decisions_total", outcome=outcome, reason=reason)


def private_key_jwt(oidc: OidcProvider, key_file: Path) -> dict[str, str]:
    return {"SIDECAR_IDP__CLIENT_ID": "sidecar-pkjwt", "SIDECAR_IDP__AUTH_METHOD": "private_key_jwt",
            "SIDECAR_IDP__ASSERTION_KEY_FILE": str(key_file), "SIDECAR_IDP__ASSERTION_KID": "sidecar-assertion-1"}


def test_private_key_jwt_introspects_with_a_fresh_signed_assertion_per_call(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = stacks(**private_key_jwt(oidc, oidc.assertion_key_file))
    for _ in range(2):  # two new tokens: two assertions (a replayed jti would be refused)
        reply = stack.call(oidc.access_token("alice"), "alice")
        assert reply.status == 200, stack.diagnostics()
    assert stack.call(oidc.access_token("alice"), "bob").status == 401


def test_private_key_jwt_with_a_key_the_idp_does_not_know_fails_closed(
    stacks: StartStack, oidc: OidcProvider, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    stack = stacks(**private_key_jwt(oidc, other))
    reached = len(stack.upstream.received)
    assert stack.call(oidc.access_token("alice"), "alice").status == 500  # nginx: the sidecar's 503
    assert len(stack.upstream.received) == reached
    assert decisions(stack.sidecar, "idp_unavailable") >= 1


def test_self_signed_tls_client_auth_authenticates_with_a_certificate_known_by_its_key(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    cert, key = oidc.self_signed_files
    stack = stacks(SIDECAR_IDP__CLIENT_ID="sidecar-self", SIDECAR_IDP__AUTH_METHOD="self_signed_tls_client_auth",
                   SIDECAR_IDP__CERT_FILE=str(cert), SIDECAR_IDP__KEY_FILE=str(key))
    assert stack.call(oidc.access_token("alice"), "alice").status == 200, stack.diagnostics()
    assert stack.call(oidc.access_token("alice"), "bob").status == 401


def test_self_signed_tls_client_auth_with_another_certificate_fails_closed(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    cert, key = oidc.pki.sidecar_files  # a valid certificate, but not the one registered for sidecar-self
    stack = stacks(SIDECAR_IDP__CLIENT_ID="sidecar-self", SIDECAR_IDP__AUTH_METHOD="self_signed_tls_client_auth",
                   SIDECAR_IDP__CERT_FILE=str(cert), SIDECAR_IDP__KEY_FILE=str(key))
    assert stack.call(oidc.access_token("alice"), "alice").status == 500
    assert decisions(stack.sidecar, "idp_unavailable") >= 1


def test_signed_introspection_answers_are_verified_with_the_issuers_keys(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = stacks(SIDECAR_IDP__INTROSPECTION_RESPONSE="jwt_required")
    reply = stack.call(oidc.access_token("alice", scope="read write"), "alice")
    assert reply.status == 200, stack.diagnostics()
    assert stack.upstream.last.header("x-credential-scope") == "read write"
    assert stack.call(oidc.access_token("alice"), "bob").status == 401
    assert stack.call("not-a-token-the-idp-issued", "alice").status == 401  # a signed {"active": false}


def test_with_client_cert_ca_file_a_token_bound_to_a_self_signed_certificate_is_refused_through_nginx(
    stacks: StartStack, oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]]
) -> None:
    """The IdP accepts a self-signed client (RFC 8705 §2.2) and binds its token to that certificate;
    nginx (optional_no_ca) passes it on; only the sidecar's CA validation can refuse it."""
    client_files.setdefault("selfie", oidc.self_signed_files)
    token = oidc.access_token("selfie", scope="read")
    assert "x5t#S256" in oidc.introspect(token).json()["cnf"]
    assert stacks().call(token, "selfie").status == 200  # the thumbprint alone: bound and allowed
    validating = stacks(SIDECAR_CLIENT_CERT__CA_FILE=str(oidc.pki.ca_file))
    assert validating.call(token, "selfie").status == 401, validating.diagnostics()
    assert decisions(validating.sidecar, "cert_untrusted") == 1
    assert validating.call(oidc.access_token("alice"), "alice").status == 200  # our CA's clients pass
