"""Traefik, Caddy and HAProxy in front of the sidecar, each run from its shipped files in deploy/
(only listen addresses and file paths set by the test), with real client certificates, the real
OpenID provider (oidc-provider) behind the sidecar, and an upstream that records what reaches it.

Per front: a token with its own certificate is allowed (opaque and JWT access tokens), with
another client's certificate or without one it is 401 and the upstream is never reached, no
credential header a client sends reaches the upstream, and what the client gets when the IdP or
the sidecar is down.
"""

from __future__ import annotations

import base64
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import load
from sidecar.core.headers import HeaderBuilder
from tests.interop.front_doors import DEPLOY, FrontStack, start_front_stack
from tests.interop.https import Reply
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.fronts]

FRONTS = ("traefik", "caddy", "haproxy")
# The header the front puts the connection's certificate in, as the front's sidecar.toml reads it.
CERT_HEADER = {"traefik": "x-forwarded-tls-client-cert", "caddy": "x-client-cert", "haproxy": "x-client-cert"}
# What the client gets when the sidecar itself cannot be reached: each front's own error.
SIDECAR_DOWN = {"traefik": 500, "caddy": 502, "haproxy": 503}
STANDARD = ("sub", "client-id", "scope", "iss", "aud", "exp", "iat", "jti", "token-type", "username",
            "cnf-x5t-s256", "cnf-jkt", "cnf-method")


@pytest.fixture(scope="module")
def idp(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """This module's own IdP: one test stops and restarts it."""
    provider = OidcProvider(pki, tmp_path_factory.mktemp("fronts-idp"))
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module", params=FRONTS)
def stack(request: pytest.FixtureRequest, idp: OidcProvider, client_files: dict[str, tuple[Path, Path]],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontStack]:
    # The audiences are this IdP's resource indicators, as idp.issuer is its address.
    started = start_front_stack(request.param, idp, tmp_path_factory.mktemp(request.param),
                                client_files=client_files,
                                overrides={"SIDECAR_POLICY__AUDIENCES": f"{OPAQUE_RESOURCE},{JWT_RESOURCE}"})
    yield started
    started.stop()


def der_base64(cert_file: Path) -> str:
    """A certificate as the three fronts pass it on (base64 DER), forged by a client."""
    pem = cert_file.read_text()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return base64.b64encode(base64.b64decode("".join(body.split()))).decode()


def denied(stack: FrontStack, reply: Reply, reached: int, status: int = 401) -> None:
    assert reply.status == status, (reply.status, reply.body, stack.diagnostics())
    assert len(stack.upstream.received) == reached, "a denied request reached the upstream"


def test_a_bound_opaque_token_with_its_own_certificate_reaches_the_upstream_with_its_credentials_and_not_the_token(
    stack: FrontStack, idp: OidcProvider, pki: TestPki
) -> None:
    token = idp.access_token("alice", scope="read write")
    reply = stack.call(token, "alice", method="POST", path="/orders/42?page=2")
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    assert (seen.method, seen.path) == ("POST", "/orders/42?page=2")
    assert seen.header("x-credential-client-id") == "alice"
    assert seen.header("x-credential-scope") == "read write"
    assert seen.header("x-credential-iss") == idp.issuer
    assert seen.header("x-credential-aud") == OPAQUE_RESOURCE
    assert seen.header("x-credential-token-type") == "Bearer"
    assert seen.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256
    # The shipped files' choice: the API gets the credentials, never the raw token, and never
    # the certificate header meant for the sidecar.
    assert seen.header("authorization") is None
    assert seen.header(CERT_HEADER[stack.front.name]) is None


def test_a_bound_jwt_access_token_is_validated_locally_and_allowed_only_with_its_own_certificate(
    stack: FrontStack, idp: OidcProvider, pki: TestPki
) -> None:
    token = idp.access_token("alice", resource=JWT_RESOURCE)
    reply = stack.call(token, "alice")
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    assert seen.header("x-credential-sub") == "alice"
    assert seen.header("x-credential-aud") == JWT_RESOURCE
    assert seen.header("x-credential-cnf-x5t-s256") == pki.alice.x5t_s256
    denied(stack, stack.call(token, "bob"), len(stack.upstream.received))


def test_a_resumed_tls_session_still_carries_the_client_certificate_to_the_sidecar(
    stack: FrontStack, idp: OidcProvider
) -> None:
    token = idp.access_token("alice")
    assert stack.call_on_resumed_session(token, "alice") == [(False, 200), (True, 200)], stack.diagnostics()
    assert stack.call_on_resumed_session(token, "bob") == [(False, 401), (True, 401)]


def test_the_token_with_another_clients_certificate_is_401_with_a_bearer_challenge_and_never_reaches_the_upstream(
    stack: FrontStack, idp: OidcProvider
) -> None:
    token = idp.access_token("alice")
    assert stack.call(token, "alice").status == 200, stack.diagnostics()
    reached = len(stack.upstream.received)
    mismatches = stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="cnf_mismatch")
    reply = stack.call(token, "bob")
    denied(stack, reply, reached)
    assert reply.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_token"')
    assert reply.json()["error"] == "invalid_token"
    assert stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="cnf_mismatch") == mismatches + 1


def test_a_certificate_from_another_ca_is_refused_by_haproxy_at_the_handshake_and_by_the_sidecar_elsewhere(
    stack: FrontStack, idp: OidcProvider
) -> None:
    token = idp.access_token("alice")
    reached = len(stack.upstream.received)
    if stack.front.name == "haproxy":  # verify optional + ca-file: another CA's certificate fails TLS
        with pytest.raises((ssl.SSLError, ConnectionError)):
            stack.call(token, "mallory")
        assert len(stack.upstream.received) == reached
    else:  # the certificate is asked for, not verified: the binding check refuses it
        denied(stack, stack.call(token, "mallory"), reached)


def test_the_token_without_a_certificate_is_401_even_with_a_forged_certificate_header(
    stack: FrontStack, idp: OidcProvider, client_files: dict[str, tuple[Path, Path]]
) -> None:
    token = idp.access_token("alice")
    reached = len(stack.upstream.received)
    denied(stack, stack.call(token), reached)
    # The client sends alice's certificate in the header the sidecar reads (and in the other
    # fronts' header): the front replaces or removes it, without a TLS certificate and with bob's.
    forged = der_base64(client_files["alice"][0])
    headers = {"X-Client-Cert": forged, "X-Forwarded-Tls-Client-Cert": forged}
    denied(stack, stack.call(token, headers=headers), reached)
    denied(stack, stack.call(token, "bob", headers=headers), reached)


def test_no_credential_header_a_client_sends_reaches_the_upstream_whatever_its_name(
    stack: FrontStack, idp: OidcProvider
) -> None:
    token = idp.access_token("alice", scope="read")
    forged = {f"X-Credential-{name}": "forged" for name in STANDARD}
    # Names the sidecar never emits, and spellings that some frameworks read as the same header.
    forged |= {"X-Credential-Tenant": "forged", "x-credential-role": "forged", "X_Credential_Sub": "forged",
               "X_Credential_Tenant": "forged", "X.Credential.Scope": "forged"}
    reply = stack.call(token, "alice", headers=forged)
    assert reply.status == 200, stack.diagnostics()
    seen = stack.upstream.last
    for name, value in seen.headers:
        assert value != "forged", f"{name} reached the upstream through {stack.front.name} as the client sent it"
    emitted = {f"x-credential-{name}" for name in STANDARD}
    names = {name.lower().replace("_", "-").replace(".", "-") for name, _ in seen.headers}
    assert {name for name in names if name.startswith("x-credential-")} <= emitted
    assert seen.header("x-credential-client-id") == "alice" and seen.header("x-credential-scope") == "read"


def test_a_garbage_token_is_401_and_a_malformed_authorization_header_400_never_500(stack: FrontStack) -> None:
    reached = len(stack.upstream.received)
    reply = stack.call("not-a-token-the-idp-issued", "alice")
    denied(stack, reply, reached)
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    reply = stack.call("two values", "alice")
    denied(stack, reply, reached, status=400)
    assert reply.json()["error"] == "invalid_request"


def test_while_the_idp_is_down_the_client_gets_the_sidecars_503_with_retry_after_and_then_access_again(
    stack: FrontStack, idp: OidcProvider
) -> None:
    token = idp.access_token("alice")  # never checked before: not in the sidecar's cache
    idp.stop()
    try:
        reached = len(stack.upstream.received)
        reply = stack.call(token, "alice")
        denied(stack, reply, reached, status=503)
        assert reply.json() == {"error": "temporarily_unavailable", "reason": "idp_unavailable"}
        assert int(reply.headers["retry-after"]) > 0
    finally:
        idp.start()  # same ports, same stored tokens
    deadline = time.monotonic() + 30  # bounded: the IdP guard may hold calls back briefly
    reply = stack.call(token, "alice")
    while reply.status != 200 and time.monotonic() < deadline:
        time.sleep(0.25)
        reply = stack.call(token, "alice")
    assert reply.status == 200, stack.diagnostics()


def test_while_the_sidecar_is_down_the_front_fails_closed_with_its_own_5xx(
    stack: FrontStack, idp: OidcProvider
) -> None:
    token = idp.access_token("alice")
    assert stack.call(token, "alice").status == 200, stack.diagnostics()
    stack.sidecar.stop()
    try:
        reached = len(stack.upstream.received)
        denied(stack, stack.call(token, "alice"), reached, status=SIDECAR_DOWN[stack.front.name])
        assert token not in stack.front.logs()  # the front's error log names no token
    finally:
        stack.sidecar.start()
    assert stack.call(token, "alice").status == 200, stack.diagnostics()


# ---- the shipped files agree with the sidecar (no processes) ----

@pytest.mark.parametrize("front", FRONTS)
def test_each_fronts_sidecar_toml_reads_the_certificate_header_its_front_writes(front: str, pki: TestPki) -> None:
    config = load(DEPLOY / front / "sidecar.toml", {
        "SIDECAR_IDP__CERT_FILE": str(pki.sidecar_files[0]), "SIDECAR_IDP__KEY_FILE": str(pki.sidecar_files[1]),
        "SIDECAR_IDP__CA_FILE": str(pki.ca_file)})
    assert config.client_cert.header == CERT_HEADER[front]
    assert config.client_cert.format == {"traefik": "traefik", "caddy": "der_base64", "haproxy": "der_base64"}[front]
    assert config.policy.binding == "strict" and config.idp.token_format == "auto" and config.policy.audiences
    shipped = {"traefik": "dynamic.yml", "caddy": "Caddyfile", "haproxy": "haproxy.cfg"}[front]
    text = (DEPLOY / front / shipped).read_text().lower()
    # Every front file states its choice about the raw token, and makes it: Authorization removed.
    assert "raw access token is not forwarded" in text
    if front == "caddy":
        # copy_headers sets only the names it lists: it must list every header the sidecar emits.
        copied = next(line.split()[1:] for line in text.splitlines() if line.strip().startswith("copy_headers"))
        assert set(copied) == set(HeaderBuilder(config.response).names)


@pytest.mark.routes
def test_a_policy_name_or_original_uri_sent_by_the_client_never_reaches_the_sidecar(
    stack: FrontStack, idp: OidcProvider
) -> None:
    """A trusted front's check request names the policy (docs/routes.md): a client's copy must not
    pass, or any client could pick the laxest policy. An unknown name would be a 403."""
    token = idp.access_token("alice", scope="read")
    reply = stack.call(token, "alice", path="/orders/1",
                       headers={"X-Sidecar-Policy": "nope", "X-Original-URI": "/%2e%2e", "X-Original-Method": "x"})
    assert reply.status == 200, (reply.status, reply.body, stack.diagnostics())


# A budget of two new tokens per client, and nearly no refill: the third is refused.
TIGHT_BUDGET = {"SIDECAR_ADMISSION__MISS_RATE": "0.001", "SIDECAR_ADMISSION__MISS_BURST": "2"}


@pytest.mark.parametrize("front", FRONTS)
def test_the_front_passes_the_client_address_so_each_client_has_its_own_budget_of_new_tokens(
    front: str, idp: OidcProvider, client_files: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    stack = start_front_stack(front, idp, tmp_path, client_files=client_files, overrides=TIGHT_BUDGET)
    try:
        statuses = [stack.call(secrets.token_urlsafe(24), source="127.0.0.2",
                               headers={"X-Forwarded-For": f"198.51.100.{i}"}).status for i in range(4)]
        assert statuses == [401, 401, 429, 429], stack.diagnostics()  # its own X-Forwarded-For changes nothing
        assert stack.call(secrets.token_urlsafe(24), source="127.0.0.3").status == 401  # another client's budget
        assert stack.sidecar.metric("sidecar_decisions_total", reason="rate_limited") == 2
        assert "sends no source header" not in stack.sidecar.logs()
    finally:
        stack.stop()
