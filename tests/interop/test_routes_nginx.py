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
