"""The real Envoy running the shipped deploy/envoy files, in front of the sidecar process running
the shipped sidecar TOML, in front of the real OpenID provider (oidc-provider): HTTP and gRPC
ext_authz alike, over mutual TLS with real client certificates.

Only ports and file paths in the Envoy YAML are templated (tests/interop/envoy.py checks that);
the sidecar gets the deployment's values (ports, the IdP's address and files, the API's
audiences) through SIDECAR_* variables, each a key the shipped TOML already has.
"""

from __future__ import annotations

import ssl
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import own_idp
from tests.interop.envoy import ENVOY_DIR, MODES, EnvoyFront
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.fronts]

STANDARD = ("sub", "client-id", "scope", "iss", "aud", "exp", "iat", "jti", "token-type", "username",
            "cnf-x5t-s256", "cnf-jkt", "cnf-method")
# The API's two resource identifiers at the test IdP (opaque and JWT access tokens).
DEPLOYMENT = {"SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}"}


def start(mode: str, idp: OidcProvider, pki: TestPki, log_dir: Path,
          client_files: dict[str, tuple[Path, Path]], **overrides: str) -> EnvoyFront:
    return EnvoyFront(mode, idp.issuer, pki, log_dir, {**DEPLOYMENT, **overrides}, client_files).start()


@pytest.fixture(scope="module", params=list(MODES))
def front(request: pytest.FixtureRequest, oidc: OidcProvider, pki: TestPki,
          client_files: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFront]:
    started = start(request.param, oidc, pki, tmp_path_factory.mktemp(f"envoy-{request.param}"), client_files)
    yield started
    started.stop()


@pytest.mark.parametrize("mode", list(MODES))
def test_the_deployment_values_replace_keys_the_shipped_sidecar_toml_has(mode: str) -> None:
    shipped = tomllib.loads((ENVOY_DIR / MODES[mode][1]).read_text())
    for name in DEPLOYMENT:
        section, key = name.removeprefix("SIDECAR_").lower().split("__")
        assert key in shipped[section], f"{section}.{key} is not in {MODES[mode][1]}"


def test_envoy_loads_the_shipped_file_without_warning_of_a_deprecated_field(front: EnvoyFront) -> None:
    assert "Deprecated field" not in front.envoy.logs()


def test_a_bound_opaque_token_with_its_certificate_reaches_the_upstream_with_credentials_but_not_the_token(
    front: EnvoyFront, oidc: OidcProvider, pki: TestPki
) -> None:
    token = oidc.access_token("alice", scope="read write")
    reply = front.call(token, "alice", method="POST", path="/orders/42?page=2")
    assert reply.status == 200, front.diagnostics()
    seen = front.upstream.last
    assert (seen.method, seen.path) == ("POST", "/orders/42?page=2")
    assert seen.header("x-credential-client-id") == "alice"
    assert seen.header("x-credential-scope") == "read write"
    assert seen.header("x-credential-aud") == OPAQUE_RESOURCE
    assert seen.header("x-credential-iss") == oidc.issuer
    assert seen.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256
    # The shipped choice: neither the raw token nor the certificate header goes upstream, on the
    # first check nor on one answered from the cache.
    assert seen.header("authorization") is None
    assert seen.header("x-forwarded-client-cert") is None
    hits = front.sidecar.metric("sidecar_cache_total", result="hit")
    assert front.call(token, "alice").status == 200
    assert front.sidecar.metric("sidecar_cache_total", result="hit") == hits + 1
    again = front.upstream.last
    assert again.header("authorization") is None and again.header("x-forwarded-client-cert") is None
    assert again.header("x-credential-client-id") == "alice"


def test_a_bound_jwt_access_token_is_validated_locally_and_reaches_the_upstream_with_its_certificate(
    front: EnvoyFront, oidc: OidcProvider, pki: TestPki
) -> None:
    token = oidc.access_token("alice", scope="read", resource=JWT_RESOURCE)
    introspections = front.sidecar.metric("sidecar_idp_requests_total", kind="introspection")
    reply = front.call(token, "alice")
    assert reply.status == 200, front.diagnostics()
    seen = front.upstream.last
    assert seen.header("x-credential-sub") == "alice"  # RFC 9068: the JWT has sub, introspection does not
    assert seen.header("x-credential-aud") == JWT_RESOURCE
    assert seen.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256
    assert seen.header("authorization") is None
    assert front.sidecar.metric("sidecar_idp_requests_total", kind="introspection") == introspections


@pytest.mark.parametrize("resource", [OPAQUE_RESOURCE, JWT_RESOURCE])
def test_the_token_with_another_clients_certificate_is_401_with_the_challenge_and_never_reaches_the_upstream(
    front: EnvoyFront, oidc: OidcProvider, resource: str
) -> None:
    token = oidc.access_token("alice", resource=resource)
    reached, mismatches = len(front.upstream.received), front.sidecar.decisions("cnf_mismatch")
    reply = front.call(token, "bob")
    assert reply.status == 401, front.diagnostics()
    assert reply.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_token"')
    assert len(front.upstream.received) == reached
    assert front.sidecar.decisions("cnf_mismatch") == mismatches + 1


@pytest.mark.parametrize("cert", [None, "mallory"])
def test_envoy_refuses_the_handshake_without_a_certificate_from_its_ca_and_the_sidecar_is_never_asked(
    front: EnvoyFront, oidc: OidcProvider, cert: str | None
) -> None:
    token = oidc.access_token("alice")
    reached, checks = len(front.upstream.received), front.checks()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        front.call(token, cert)
    assert len(front.upstream.received) == reached
    assert front.checks() == checks


def test_no_credential_header_the_client_sends_reaches_the_upstream_whatever_its_name(
    front: EnvoyFront, oidc: OidcProvider
) -> None:
    token = oidc.access_token("alice", scope="read")
    forged = {f"X-Credential-{name}": "forged" for name in STANDARD}
    # Names the sidecar does not emit in the shipped config: only a prefix rule can catch them.
    forged |= {"X-Credential-Tenant": "forged", "x-credential-role": "forged", "X-CREDENTIAL-ADMIN": "forged"}
    # Underscores: a CGI or WSGI upstream reads X_Credential_Sub as X-Credential-Sub.
    forged |= {"X_Credential_Sub": "forged", "x_credential_tenant": "forged"}
    # Dots: PHP reads X.Credential.Scope as X-Credential-Scope (and X_Credential_Scope).
    forged |= {"X.Credential.Scope": "forged", "x-credential.tenant": "forged", "x.credential-role": "forged"}
    reply = front.call(token, "alice", headers=forged)
    assert reply.status == 200, front.diagnostics()
    seen = front.upstream.last
    assert [(k, v) for k, v in seen.headers if v == "forged"] == []
    for name in ("tenant", "role", "admin"):
        assert seen.header(f"x-credential-{name}") is None
    assert seen.header("x-credential-client-id") == "alice" and seen.header("x-credential-scope") == "read"
    # Without a token the forged headers buy nothing either.
    reached = len(front.upstream.received)
    assert front.call(None, "alice", headers=forged).status == 401
    assert len(front.upstream.received) == reached


def test_an_xfcc_header_from_the_client_is_replaced_by_the_one_envoy_renders_for_the_connection(
    front: EnvoyFront, oidc: OidcProvider, pki: TestPki
) -> None:
    """SANITIZE_SET: Envoy drops the client's XFCC and sets its own (Hash=, Cert=) for the
    verified certificate, so a header naming another certificate changes nothing."""
    token = oidc.access_token("alice")
    as_alice = {"X-Forwarded-Client-Cert": envoy_side.xfcc_element(pki.alice)}
    as_bob = {"X-Forwarded-Client-Cert": envoy_side.xfcc_element(pki.bob)}
    assert front.call(token, "alice", headers=as_bob).status == 200, front.diagnostics()
    assert front.upstream.last.header("x-forwarded-client-cert") is None
    reached, mismatches = len(front.upstream.received), front.sidecar.decisions("cnf_mismatch")
    assert front.call(token, "bob", headers=as_alice).status == 401
    assert len(front.upstream.received) == reached
    assert front.sidecar.decisions("cnf_mismatch") == mismatches + 1


@pytest.mark.parametrize("mode", list(MODES))
def test_with_the_idp_stopped_envoy_answers_503_and_allows_again_once_it_is_back(
    mode: str, pki: TestPki, client_files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    idp = own_idp(pki, tmp_path / "idp")
    front = None
    try:
        # Cache off: every opaque token is introspected, so the outage shows on the next request.
        front = start(mode, idp, pki, tmp_path, client_files, SIDECAR_CACHE__MAX_ENTRIES="0")
        opaque = idp.access_token("alice")
        jwt = idp.access_token("alice", resource=JWT_RESOURCE)
        assert front.call(opaque, "alice").status == 200, front.diagnostics()
        assert front.call(jwt, "alice").status == 200, front.diagnostics()

        idp.stop()
        reached, unavailable = len(front.upstream.received), front.sidecar.decisions("idp_unavailable")
        reply = front.call(opaque, "alice")
        assert reply.status == 503, front.diagnostics()  # status_on_error (HTTP) / denied_response (gRPC)
        assert len(front.upstream.received) == reached
        assert front.sidecar.decisions("idp_unavailable") == unavailable + 1
        # A JWT access token needs no IdP call: the JWK Set fetched before still validates it.
        assert front.call(jwt, "alice").status == 200
        assert front.call(jwt, "bob").status == 401

        idp.start()  # same ports, same stored tokens
        deadline = time.monotonic() + 30
        reply = front.call(opaque, "alice")
        while reply.status != 200 and time.monotonic() < deadline:
            time.sleep(0.25)  # bounded: the circuit breaker may hold calls back briefly
            reply = front.call(opaque, "alice")
        assert reply.status == 200, front.diagnostics()
        assert front.upstream.last.header("x-credential-client-id") == "alice"
    finally:
        if front is not None:
            front.stop()
        idp.stop()
