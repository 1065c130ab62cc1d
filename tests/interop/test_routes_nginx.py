"""Per-route policies through real nginx (deploy/nginx/routes.conf.template and its snippets),
the sidecar process on deploy/nginx/sidecar-routes.toml, the real OpenID provider behind.

The sidecar file is the shipped one with its two API identifiers replaced by the test IdP's
resources (https://api.example.com → the opaque-token resource, https://admin.example.com → the
JWT resource), as a deployment fills in its own. One scenario table per route: each route's
scope, audience and binding are enforced, and a client cannot pick a laxer policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.https import raw_request, request
from tests.interop.nginx import DEPLOY
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.stack import Stack, start_stack

pytestmark = [pytest.mark.interop, pytest.mark.fronts, pytest.mark.routes]


@pytest.fixture(scope="module")
def stack(oidc: OidcProvider, client_files: dict[str, tuple[Path, Path]],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("routes")
    config = state / "sidecar-routes.toml"
    config.write_text((DEPLOY / "sidecar-routes.toml").read_text()
                      .replace("https://api.example.com", OPAQUE_RESOURCE)
                      .replace("https://admin.example.com", JWT_RESOURCE))
    started = start_stack(oidc, state, template="routes.conf.template", client_files=client_files, config=config,
                          overrides={"SIDECAR_POLICY__AUDIENCES": OPAQUE_RESOURCE})
    yield started
    started.stop()


def route_tokens(oidc: OidcProvider) -> dict[str, str]:
    """The tokens the per-route tables name, from the real IdP."""
    return {
        "read": oidc.access_token("alice", scope="read"),
        "write": oidc.access_token("alice", scope="write"),
        "read write": oidc.access_token("alice", scope="read write"),
        "jwt read write": oidc.access_token("alice", scope="read write", resource=JWT_RESOURCE),
        "jwt read": oidc.access_token("alice", scope="read", resource=JWT_RESOURCE),
        "carol": oidc.access_token("carol", scope="read"),  # client_secret_basic: not bound
    }


@pytest.fixture(scope="module")
def tokens(oidc: OidcProvider) -> dict[str, str]:
    return route_tokens(oidc)


# (path, token, client certificate, status, reason): reason None on allow
ROUTES: dict[str, list[tuple[str, str, str | None, int, str | None]]] = {
    "orders_read": [
        ("/orders/42", "read", "alice", 200, None),
        ("/orders/42", "read write", "alice", 200, None),
        ("/orders/42", "write", "alice", 403, "scope_missing"),
        ("/orders/42", "read", "bob", 401, "cnf_mismatch"),
        ("/orders/42", "read", None, 401, "cert_missing"),
        ("/orders/42", "carol", None, 401, "token_unbound"),
        ("/orders/42", "jwt read", "alice", 401, "audience_mismatch"),
    ],
    "admin": [
        ("/admin/users", "jwt read write", "alice", 200, None),
        ("/admin/users", "jwt read write", "bob", 401, "cnf_mismatch"),
        ("/admin/users", "jwt read", "alice", 403, "scope_missing"),
        ("/admin/users", "read write", "alice", 401, "audience_mismatch"),
    ],
    "health": [
        ("/health", "carol", None, 200, None),
        ("/health", "read", None, 200, None),
        ("/health", "jwt read", None, 401, "audience_mismatch"),
    ],
    "default": [
        ("/reports", "read", "alice", 200, None),
        ("/reports", "write", "alice", 403, "scope_missing"),
        ("/reports", "carol", None, 401, "token_unbound"),
    ],
}
CASES: list[tuple[str, str, str, str | None, int, str | None]] = [
    (route, *case) for route, cases in ROUTES.items() for case in cases]


@pytest.mark.parametrize(("route", "path", "token", "cert", "status", "reason"), CASES,
                         ids=[f"{c[0]}:{c[2]}:{c[3]}" for c in CASES])
def test_each_route_enforces_its_own_scope_audience_and_binding(
        stack: Stack, tokens: dict[str, str], route: str, path: str, token: str, cert: str | None, status: int,
        reason: str | None) -> None:
    labels = {"outcome": "allow"} if reason is None else {"reason": reason}
    before = stack.sidecar.metric("sidecar_decisions_total", policy=route, **labels)
    answer = stack.call(tokens[token], cert, path=path)
    assert answer.status == status, (answer.status, answer.body, stack.diagnostics())
    if reason is None:
        assert stack.upstream.last.path == path
        assert stack.upstream.last.header("x-credential-client-id") in ("alice", "carol")
    # nginx answers 401/403 itself: the sidecar's metrics say which policy decided, and why.
    assert stack.sidecar.metric("sidecar_decisions_total", policy=route, **labels) == before + 1, \
        stack.diagnostics()


@pytest.mark.parametrize("path", ["/reports", "/orders/42"])
def test_a_client_cannot_name_a_laxer_policy_through_nginx(stack: Stack, tokens: dict[str, str], path: str) -> None:
    answer = stack.call(tokens["carol"], None, path=path, headers={"X-Sidecar-Policy": "health"})
    assert answer.status == 401, (answer.status, answer.body)  # strict binding: an unbound token fails


def test_a_location_naming_an_unknown_policy_is_denied_and_logged(stack: Stack, tokens: dict[str, str]) -> None:
    """What an nginx location with a misspelt policy gets: the sidecar as nginx's check calls it."""
    answer = stack.sidecar.check({"Authorization": f"Bearer {tokens['read']}", "X-Sidecar-Policy": "ordrs_read",
                                  "X-Original-URI": "/orders/1", "X-Original-Method": "GET"})
    assert answer.status == 403 and b'"policy_unknown"' in answer.body
    assert '"reason":"policy_unknown"' in stack.sidecar.logs()


# Targets nginx reads one way and an upstream another (issue 22, case 2): nginx picks
# the `/health` location (policy health: any active token, binding off) on its own normalized reading,
# and proxy_pass sends the raw target upstream, where it means /admin/users.
AMBIGUOUS = [
    b"/health/%252e%252e/admin/users",         # an upstream that decodes twice
    b"/health/x/..;/../admin/users",            # Tomcat: ..; is .., nginx: a segment named ..;
    b"/health/..\\admin/users",                 # Windows-style normalizers: \ is /
    "/health/\u2025/admin/users".encode(),      # NFKC: the two-dot leader is ..
    b"/health/%e2%80%a5/admin/users",
    b"/health;x/../admin/users",
    b"/health#/../admin/users",                 # nginx ends the path at #, and sends all of it upstream
]


@pytest.mark.parametrize("target", AMBIGUOUS, ids=[t.decode(errors="replace") for t in AMBIGUOUS])
def test_a_target_with_two_meanings_never_reaches_the_upstream_under_the_policy_nginx_names(
        stack: Stack, tokens: dict[str, str], oidc: OidcProvider, target: bytes) -> None:
    """carol's unbound token passes /health only: under the name nginx sends, the sidecar judges
    the raw target the upstream receives and refuses the ambiguous ones (path_invalid, answered
    401 for nginx: server.invalid_request_status)."""
    reached, before = len(stack.upstream.received), stack.sidecar.metric(
        "sidecar_decisions_total", outcome="deny", reason="path_invalid")
    reply = raw_request(stack.nginx.url, target, ca_file=oidc.pki.ca_file,
                        headers=[("Host", "127.0.0.1"), ("Authorization", f"Bearer {tokens['carol']}")])
    assert reply.status in (400, 401), (reply.status, stack.diagnostics())
    assert len(stack.upstream.received) == reached, stack.upstream.last.path
    if reply.status == 401:  # the sidecar's answer (nginx itself refuses some targets with 400)
        assert stack.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="path_invalid") == before + 1


@pytest.mark.parametrize("target", [b"/healthz", b"/health-internal/users", b"/health.json", b"/healthadmin"])
def test_a_path_that_only_begins_with_a_named_locations_prefix_falls_under_the_default_policy(
        stack: Stack, tokens: dict[str, str], oidc: OidcProvider, target: bytes) -> None:
    """``location /health`` (a plain prefix) would name the health policy (binding off) for
    ``/healthz`` too: carol's unbound token reached resources the template puts under the default.
    The named locations match whole segments, as ``[[routes]]`` prefixes and Envoy's
    ``path_separated_prefix`` do."""
    reached, before = len(stack.upstream.received), stack.sidecar.metric(
        "sidecar_decisions_total", policy="default", reason="token_unbound")
    reply = raw_request(stack.nginx.url, target, ca_file=oidc.pki.ca_file,
                        headers=[("Host", "127.0.0.1"), ("Authorization", f"Bearer {tokens['carol']}")])
    assert reply.status == 401, (reply.status, stack.diagnostics())
    assert len(stack.upstream.received) == reached, stack.upstream.last.path
    assert stack.sidecar.metric("sidecar_decisions_total", policy="default", reason="token_unbound") == before + 1


def test_the_same_token_passes_health_with_a_target_that_has_one_meaning(
        stack: Stack, tokens: dict[str, str], oidc: OidcProvider) -> None:
    reply = raw_request(stack.nginx.url, b"/health/x/../live?probe=1", ca_file=oidc.pki.ca_file,
                        headers=[("Host", "127.0.0.1"), ("Authorization", f"Bearer {tokens['carol']}")])
    assert reply.status == 200 and stack.upstream.last.path == "/health/x/../live?probe=1"


def test_a_describing_header_sent_twice_to_the_sidecar_is_refused_whichever_copy_would_win(
        stack: Stack, tokens: dict[str, str]) -> None:
    """Issue 22, case 4: a check request with two copies of a header describing the request
    (nginx sets one; a second one can only come from a client through a front that passes it on)."""
    auth = {"Authorization": f"Bearer {tokens['read']}", "X-Original-Method": "GET", "X-Original-URI": "/health",
            "X-Sidecar-Policy": "health", "Host": "127.0.0.1", "X-Forwarded-Proto": "https"}
    for name, second in [("X-Sidecar-Policy", "admin"), ("X-Original-URI", "/admin/users"),
                         ("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-Proto", "http"), ("Host", "evil.test")]:
        before = stack.sidecar.metric("sidecar_decisions_total", reason="request_header_duplicated")
        first = [(name, auth.get(name, "198.51.100.7"))] if name not in auth else []
        reply = request(f"http://127.0.0.1:{stack.sidecar.port}/_sidecar_check", headers=auth,
                        repeated=[*first, (name, second)])
        if name == "Host" and reply.status == 400 and b"request_header_duplicated" not in reply.body:
            continue  # aiohttp's parser refuses a second Host itself (RFC 9112 §3.2): no decision at all
        assert reply.status == 401 and b'"request_header_duplicated"' in reply.body, (name, reply.body)
        assert stack.sidecar.metric("sidecar_decisions_total", reason="request_header_duplicated") == before + 1
    assert request(f"http://127.0.0.1:{stack.sidecar.port}/_sidecar_check", headers=auth).status == 200
