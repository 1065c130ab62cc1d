"""End to end with real parts: a client with a real certificate → real nginx (deploy/nginx) →
the sidecar process → the real OpenID provider (oidc-provider) over mutual TLS → the upstream.

Every token here was issued by oidc-provider to a client that presented its certificate at the
mutual-TLS token endpoint (RFC 8705 §2.1 ``tls_client_auth``, §3 certificate-bound tokens); the
sidecar found the introspection endpoint by discovery from the issuer (§5 aliases preferred).
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.interop.conftest import StartStack, own_idp
from tests.interop.oidc_idp import OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import SidecarProcess, start_stack
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.fronts]

CREDENTIALS = ("sub", "client-id", "scope", "iss", "aud", "exp", "iat", "jti", "token-type", "username",
               "cnf-x5t-s256", "cnf-jkt", "cnf-method")


def escaped_pem(cert_file: Path) -> str:
    """What nginx's $ssl_client_escaped_cert holds, forged by a client."""
    return quote(cert_file.read_text(), safe="")


def decisions(sidecar: SidecarProcess, reason: str, outcome: str = "deny") -> float:
    return sidecar.metric("sidecar_decisions_total", outcome=outcome, reason=reason)


def failed_introspections(sidecar: SidecarProcess) -> float:
    """Introspection calls that got no answer, whatever label names the failure."""
    calls = sidecar.metric("sidecar_idp_requests_total", kind="introspection")
    answered = sum(sidecar.metric("sidecar_idp_requests_total", kind="introspection", result=r)
                   for r in ("active", "inactive"))
    return calls - answered


def test_a_bound_opaque_token_with_its_certificate_reaches_the_upstream_with_its_credentials(
    stacks: StartStack, oidc: OidcProvider, pki: TestPki
) -> None:
    stack = stacks()
    token = oidc.access_token("alice", scope="read write")
    said = oidc.introspect(token).json()  # what the IdP tells the sidecar's client
    reply = stack.call(token, "alice", method="POST", path="/orders/42?page=2")
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    assert (seen.method, seen.path) == ("POST", "/orders/42?page=2")
    assert seen.header("x-credential-client-id") == "alice"
    assert seen.header("x-credential-scope") == "read write"
    assert seen.header("x-credential-iss") == oidc.issuer
    assert seen.header("x-credential-aud") == OPAQUE_RESOURCE
    assert seen.header("x-credential-exp") == str(said["exp"])
    assert seen.header("x-credential-iat") == str(said["iat"])
    assert seen.header("x-credential-token-type") == "Bearer"
    assert seen.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256 == said["cnf"]["x5t#S256"]
    # oidc-provider's client-credentials tokens carry no sub, username or jti; the sidecar sends
    # those headers empty and nginx drops empty headers.
    for absent in ("sub", "username", "jti"):
        assert seen.header(f"x-credential-{absent}") is None
    assert seen.header("x-client-cert") is None


def test_the_same_token_with_the_second_clients_certificate_is_401_and_never_reaches_the_upstream(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = stacks()
    token = oidc.access_token("alice")
    assert stack.call(token, "alice").status == 200, stack.diagnostics()
    reached, mismatches = len(stack.upstream.received), decisions(stack.sidecar, "cnf_mismatch")
    reply = stack.call(token, "bob")
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_token"')
    assert len(stack.upstream.received) == reached
    assert decisions(stack.sidecar, "cnf_mismatch") == mismatches + 1


def test_the_same_token_without_a_certificate_is_401_under_strict_binding(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = stacks()
    token = oidc.access_token("alice")
    reached, missing = len(stack.upstream.received), decisions(stack.sidecar, "cert_missing")
    assert stack.call(token).status == 401
    assert len(stack.upstream.received) == reached
    assert decisions(stack.sidecar, "cert_missing") == missing + 1


def test_an_unbound_token_is_401_under_strict_and_allowed_under_optional(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    token = oidc.access_token("carol", scope="read")
    assert "cnf" not in oidc.introspect(token).json()
    strict = stacks()
    assert strict.call(token, "alice").status == 401
    assert decisions(strict.sidecar, "token_unbound") >= 1
    optional = stacks(SIDECAR_POLICY__BINDING="optional")
    reply = optional.call(token, "alice")
    assert reply.status == 200, optional.diagnostics()
    assert optional.upstream.last.header("x-credential-client-id") == "carol"
    assert optional.upstream.last.header("x-credential-cnf-x5t-s256") is None
    # optional still checks a token that is bound
    assert optional.call(oidc.access_token("alice"), "bob").status == 401


def test_a_token_without_a_scope_the_policy_requires_is_403(stacks: StartStack, oidc: OidcProvider) -> None:
    stack = stacks(SIDECAR_POLICY__REQUIRED_SCOPES="write")
    reached = len(stack.upstream.received)
    reply = stack.call(oidc.access_token("alice", scope="read"), "alice")
    assert reply.status == 403
    assert len(stack.upstream.received) == reached
    assert decisions(stack.sidecar, "scope_missing") == 1
    assert stack.call(oidc.access_token("alice", scope="read write"), "alice").status == 200


def test_a_revoked_token_is_denied_once_its_cache_entry_ends(stacks: StartStack, oidc: OidcProvider) -> None:
    stack = stacks(SIDECAR_CACHE__MAX_TTL="4")
    token = oidc.access_token("alice")
    assert stack.call(token, "alice").status == 200, stack.diagnostics()
    oidc.revoke(token)
    assert oidc.introspect(token).json() == {"active": False}
    # The cached answer still stands (README: caching delays revocation by at most max_ttl) ...
    hits = stack.sidecar.metric("sidecar_cache_total", result="hit")
    assert stack.call(token, "alice").status == 200
    assert stack.sidecar.metric("sidecar_cache_total", result="hit") == hits + 1
    # ... and once the entry ends, the IdP's answer is asked for again and the token is denied.
    deadline = time.monotonic() + 20
    status = 200
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.25)
        status = stack.call(token, "alice").status
    assert status == 401
    assert decisions(stack.sidecar, "token_inactive") >= 1


def test_a_revoked_token_is_denied_at_once_with_the_cache_off(stacks: StartStack, oidc: OidcProvider) -> None:
    stack = stacks(SIDECAR_CACHE__MAX_ENTRIES="0")
    token = oidc.access_token("alice")
    assert stack.call(token, "alice").status == 200, stack.diagnostics()
    oidc.revoke(token)
    reached = len(stack.upstream.received)
    assert stack.call(token, "alice").status == 401
    assert len(stack.upstream.received) == reached


def test_credential_and_certificate_headers_sent_by_the_client_never_reach_the_upstream(
    stacks: StartStack, oidc: OidcProvider, pki: TestPki, client_files: dict[str, tuple[Path, Path]]
) -> None:
    stack = stacks()
    token = oidc.access_token("alice", scope="read")
    forged = {f"X-Credential-{name}": "forged" for name in CREDENTIALS}
    forged |= {"X_Credential_Sub": "forged", "X-Client-Cert": escaped_pem(client_files["bob"][0])}
    reply = stack.call(token, "alice", headers=forged)
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    for name, value in seen.headers:
        assert value != "forged", f"{name} reached the upstream as the client sent it"
    assert seen.header("x-credential-client-id") == "alice" and seen.header("x-credential-scope") == "read"
    assert seen.header("x-client-cert") is None
    # nginx replaces the certificate header with the certificate of the TLS connection ...
    assert stack.call(token, "bob", headers={"X-Client-Cert": escaped_pem(client_files["alice"][0])}).status == 401
    # ... and drops a client's copy when the connection has no certificate.
    missing = decisions(stack.sidecar, "cert_missing")
    assert stack.call(token, headers={"X-Client-Cert": escaped_pem(client_files["alice"][0])}).status == 401
    assert decisions(stack.sidecar, "cert_missing") == missing + 1


def test_a_refresh_token_the_real_idp_introspects_as_active_is_refused_even_under_optional_binding(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    refresh = oidc.refresh_token("carol")
    answer = oidc.introspect(refresh).json()
    assert answer["active"] is True and "token_type" not in answer  # the shape oidc-provider gives
    stack = stacks(SIDECAR_POLICY__BINDING="optional")
    reached = len(stack.upstream.received)
    reply = stack.call(refresh, "alice")
    assert reply.status == 401, stack.diagnostics()
    assert len(stack.upstream.received) == reached
    assert decisions(stack.sidecar, "token_not_access") == 1
    assert stack.call(oidc.access_token("carol", scope="read"), "alice").status == 200  # its access tokens pass


def test_a_garbage_or_malformed_token_is_401_never_500(stacks: StartStack) -> None:
    stack = stacks()
    reached = len(stack.upstream.received)
    reply = stack.call("not-a-token-the-idp-issued", "alice")
    assert reply.status == 401
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    # A malformed Authorization header is invalid_request: 401 behind nginx (400 would become 500).
    assert stack.call("two values", "alice").status == 401
    assert stack.call(None, "alice", headers={"Authorization": "Bearer"}).status == 401
    assert len(stack.upstream.received) == reached


def test_idp_stopped_mid_run_is_500_at_nginx_and_503_at_the_sidecar_then_allowed_again_once_it_is_back(
    pki: TestPki, client_files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    idp = own_idp(pki, tmp_path / "idp")
    stack = None
    try:
        # Cache off: every request asks the IdP, so the outage shows on the next request.
        stack = start_stack(idp, tmp_path, overrides={"SIDECAR_CACHE__MAX_ENTRIES": "0"}, client_files=client_files)
        processes = (stack.sidecar.process, stack.nginx.process)
        token = idp.access_token("alice")
        assert stack.call(token, "alice").status == 200, stack.diagnostics()
        issuer = idp.issuer

        idp.stop()
        reached = len(stack.upstream.received)
        assert stack.call(token, "alice").status == 500
        direct = stack.sidecar.check({"Authorization": f"Bearer {token}",
                                      "X-Client-Cert": escaped_pem(client_files["alice"][0])})
        assert direct.status == 503
        assert direct.json() == {"error": "temporarily_unavailable", "reason": "idp_unavailable"}
        assert int(direct.headers["retry-after"]) > 0
        assert len(stack.upstream.received) == reached
        assert decisions(stack.sidecar, "idp_unavailable") == 2
        assert failed_introspections(stack.sidecar) >= 2


        idp.start()  # same ports, same stored tokens
        assert idp.issuer == issuer
        # Bounded wait: a guard in front of the IdP (circuit breaker) may hold calls back briefly.
        deadline = time.monotonic() + 30
        reply = stack.call(token, "alice")
        while reply.status != 200 and time.monotonic() < deadline:
            time.sleep(0.25)
            reply = stack.call(token, "alice")
        assert reply.status == 200, stack.diagnostics()
        assert stack.upstream.last.header("x-credential-client-id") == "alice"
        assert (stack.sidecar.process, stack.nginx.process) == processes
        assert stack.sidecar.running and stack.nginx.process is not None and stack.nginx.process.poll() is None
    finally:
        if stack is not None:
            stack.stop()
        idp.stop()


def test_with_ssl_verify_client_on_nginx_refuses_clients_without_a_certificate_from_its_ca(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    stack = stacks(template="api-verify-on.conf.template")
    token = oidc.access_token("alice")
    assert stack.call(token, "alice").status == 200, stack.diagnostics()
    checks = stack.sidecar.metric("sidecar_decisions_total")
    assert stack.call(token).status == 400  # nginx: no required SSL certificate was sent
    assert stack.call(token, "mallory").status == 400  # nginx: certificate from another CA
    assert stack.sidecar.metric("sidecar_decisions_total") == checks  # the sidecar was never asked
    assert stack.call(token, "bob").status == 401  # a certificate from the CA, but not the token's


def test_the_sidecar_uses_the_mtls_alias_it_discovered_where_the_plain_endpoint_would_refuse_it(
    stacks: StartStack, oidc: OidcProvider
) -> None:
    metadata = oidc.metadata()
    alias = metadata["mtls_endpoint_aliases"]["introspection_endpoint"]
    assert alias != metadata["introspection_endpoint"]
    stack = stacks()
    assert f'"introspection_endpoint":"{alias}"' in stack.sidecar.logs()
    token = oidc.access_token("alice")
    assert oidc.introspect(token).json()["active"] is True
    # The issuer's own listener asks for no certificate: tls_client_auth cannot succeed there.
    plain = oidc.introspect(token, endpoint=metadata["introspection_endpoint"])
    assert plain.status == 401 and plain.json()["error"] == "invalid_client"


def test_only_the_sidecars_client_may_introspect_at_the_real_idp(oidc: OidcProvider) -> None:
    token = oidc.access_token("alice")
    assert oidc.introspect(token, client_id="bob").json() == {"active": False}
    assert oidc.introspect(token, client_id="alice").json() == {"active": False}
    assert oidc.introspect(token).json()["active"] is True
