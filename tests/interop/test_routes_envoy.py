"""Per-route policies through the real Envoy: deploy/envoy/envoy-grpc-routes.yaml names each route's
policy in ExtAuthzPerRoute.check_settings.context_extensions, envoy-http-routes.yaml in a per-route
http_service whose check request adds x-sidecar-policy; the sidecar process runs
deploy/envoy/sidecar-{grpc,http}-routes.toml (its API identifiers replaced by the test IdP's resources,
as in test_routes_nginx.py), the real OpenID provider behind. The same per-route scenario table
as through nginx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.envoy import ENVOY_DIR, ROUTE_MODES, EnvoyFront
from tests.interop.oidc_idp import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.interop.test_routes_nginx import CASES, route_tokens
from tests.support.pki_fixtures import TestPki

pytestmark = [pytest.mark.interop, pytest.mark.fronts, pytest.mark.routes]

# The shipped listener requires a client certificate: the nginx cases that send none are replaced
# by carol's unbound token presented with alice's certificate.
ENVOY_CASES = [c for c in CASES if c[3] is not None] + [
    ("health", "/health", "carol", "alice", 200, None),
    ("orders_read", "/orders/42", "carol", "alice", 401, "token_unbound"),
    ("default", "/reports", "carol", "alice", 401, "token_unbound"),
]


@pytest.fixture(scope="module")
def tokens(oidc: OidcProvider) -> dict[str, str]:
    return route_tokens(oidc)


@pytest.fixture(scope="module", params=list(ROUTE_MODES))
def front(request: pytest.FixtureRequest, oidc: OidcProvider, pki: TestPki,
          client_files: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFront]:
    state = tmp_path_factory.mktemp(request.param)
    shipped = ROUTE_MODES[request.param][1]
    config = state / shipped
    config.write_text((ENVOY_DIR / shipped).read_text()
                      .replace("https://api.example.com", OPAQUE_RESOURCE)
                      .replace("https://admin.example.com", JWT_RESOURCE))
    built = EnvoyFront(request.param, oidc.issuer, pki, state, {"SIDECAR_POLICY__AUDIENCES": OPAQUE_RESOURCE},
                       client_files)
    built.sidecar.config_file = config
    started = built.start()
    yield started
    started.stop()


@pytest.mark.parametrize(("route", "path", "token", "cert", "status", "reason"), ENVOY_CASES,
                         ids=[f"{c[0]}:{c[2]}:{c[3]}" for c in ENVOY_CASES])
def test_each_envoy_route_enforces_its_own_scope_audience_and_binding(
        front: EnvoyFront, tokens: dict[str, str], route: str, path: str, token: str, cert: str | None,
        status: int, reason: str | None) -> None:
    labels = {"outcome": "allow"} if reason is None else {"reason": reason}
    before = front.sidecar.metric("sidecar_decisions_total", policy=route, **labels)
    answer = front.call(tokens[token], cert, path=path)
    assert answer.status == status, (answer.status, answer.body, front.diagnostics())
    if reason is None:
        assert front.upstream.last.path == path
    else:  # Envoy passes the sidecar's denied_response on as it is
        assert f'"reason":"{reason}"'.encode() in answer.body
    assert front.sidecar.metric("sidecar_decisions_total", policy=route, **labels) == before + 1


@pytest.mark.parametrize("path", ["/reports", "/orders/42", "/health/../reports", "/health%2f..%2freports"])
def test_a_client_cannot_reach_a_laxer_envoy_route(front: EnvoyFront, tokens: dict[str, str], path: str) -> None:
    """An unbound token passes /health only: no header, dot segment or encoded slash gets it further."""
    answer = front.call(tokens["carol"], "alice", path=path, headers={"X-Sidecar-Policy": "health"})
    assert answer.status in (400, 401), (answer.status, answer.body)
    assert front.upstream.received == [] or front.upstream.last.path != path


# Targets Envoy's normalize_path leaves alone (a %25, percent-encoded non-ASCII): Envoy routes them
# under /health (policy health) and the upstream receives them as they are (issue 22, case 2).
@pytest.mark.parametrize("path", ["/health/%252e%252e/admin/users", "/health/%e2%80%a5/admin/users",
                                  "/health/%EF%BC%8E%EF%BC%8E/admin/users"])
def test_a_target_with_two_meanings_never_reaches_the_upstream_under_the_policy_the_route_names(
        front: EnvoyFront, tokens: dict[str, str], path: str) -> None:
    reached = len(front.upstream.received)
    before = front.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="path_invalid")
    answer = front.call(tokens["carol"], "alice", path=path)
    assert answer.status == 400 and b'"path_invalid"' in answer.body, (answer.status, answer.body, front.diagnostics())
    assert len(front.upstream.received) == reached
    assert front.sidecar.metric("sidecar_decisions_total", outcome="deny", reason="path_invalid") == before + 1
