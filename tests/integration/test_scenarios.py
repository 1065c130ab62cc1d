"""The shared scenario table (tests/support/scenarios.py) through the HTTP front and the gRPC front.

HTTP: a real aiohttp server, asked the way Envoy's HTTP ext_authz asks (any method, path under
``path_prefix`` with the query, allow-listed headers, XFCC). gRPC: the real grpc.aio server,
called by a real grpc.aio client over loopback with the CheckRequest Envoy builds
(``include_peer_certificate``, or XFCC only). Both against the fake IdP over real mutual TLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.rpc import code_pb2

from sidecar.dev.fakeidp import FakeIdp
from sidecar.fronts.grpc import GrpcFront
from tests.conftest import MakeSidecar
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki
from tests.support.scenarios import (
    CASES,
    FORGED,
    FRONTS,
    Case,
    Seen,
    authorization_for,
    certificate_for,
    deploy_sections,
    grpc_through_envoy,
    http_through_envoy,
    xfcc_for,
)

Run = Callable[[str, Case], Awaitable[Seen]]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def merged(front: str, case: Case) -> dict[str, dict[str, Any]]:
    sections = deploy_sections(front)
    for name, values in case.sections.items():
        sections.setdefault(name, {}).update(values)
    return sections


@pytest.fixture
async def run(make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> AsyncIterator[Run]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def run_case(front: str, case: Case) -> Seen:
        running = await make_sidecar(**merged(front, case))
        idp.fault = case.fault
        authorization = authorization_for(case, idp, pki)
        cert = certificate_for(case, pki)
        xfcc = xfcc_for(cert, case, pki)
        original = {"host": "api.example.com", **FORGED}
        if authorization:
            original["authorization"] = ",".join(authorization)
        if xfcc:
            original["x-forwarded-client-cert"] = ",".join(xfcc)
        if front == "http":
            method = METHODS[CASES.index(case) % len(METHODS)]
            response = await running.client.request(
                method, "/ext_authz/api/items?page=2&q=a%2Fb",
                headers=envoy_side.http_check_headers(authorization, xfcc),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
            return http_through_envoy(response.status, dict(response.headers), await response.read(), original)
        grpc_front = GrpcFront(running.sidecar)
        port = await grpc_front.start("127.0.0.1", 0)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        cleanups.extend([channel.close, lambda: grpc_front.stop(0)])
        peer = ""
        if front == "grpc" and cert is not None:
            peer = cert if isinstance(cert, str) else envoy_side.url_encode_pem(cert.cert_pem)
        # Two header fields are told apart only in raw headers (encode_raw_headers); joined, two XFCC
        # fields are one XFCC value whose last element is the nearest proxy's.
        request = envoy_side.check_request(authorization, peer_certificate=peer, xfcc=xfcc, extra=FORGED,
                                           raw_headers=len(xfcc) > 1)
        answer = await pb_grpc.AuthorizationStub(channel).Check(request, timeout=10)
        return grpc_through_envoy(answer, original)

    yield run_case
    for cleanup in reversed(cleanups):
        await cleanup()


RPC_CODE = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
            503: code_pb2.UNAVAILABLE}


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_scenario(run: Run, front: str, case: Case, pki: TestPki) -> None:
    seen = await run(front, case)
    assert seen.raw_status == case.status
    if front != "http":
        assert seen.rpc_code == (code_pb2.OK if case.status == 200 else RPC_CODE[case.status])
    if case.status == 200:
        _assert_allowed(seen, case, pki)
    elif case.status == 503:
        _assert_failed_closed(seen, front)
    else:
        _assert_denied(seen, case)


def _assert_allowed(seen: Seen, case: Case, pki: TestPki) -> None:
    up = seen.upstream
    assert seen.allowed
    assert up["x-credential-sub"] == ("alice" if case.token == "bound" else "carol")  # the forged "admin" is gone
    assert up["x-credential-scope"] == ("read write" if case.token == "bound" else "read")
    assert up["x-credential-cnf-x5t-s256"] == (pki.alice.x5t_s256 if case.token == "bound" else "")
    credential = {k for k in up if k.startswith("x-credential-")}
    assert credential == {f"x-credential-{s}" for s in ("sub", "client-id", "scope", "iss", "aud", "exp", "iat",
                                                        "jti", "token-type", "username", "cnf-x5t-s256")}
    assert "authorization" not in up and "x-forwarded-client-cert" not in up  # remove_upstream_headers
    assert "x-envoy-auth-headers-to-remove" not in up


def _assert_denied(seen: Seen, case: Case) -> None:
    assert not seen.allowed and seen.status == case.status
    challenge = seen.client_headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="api"')
    if case.error:
        assert f'error="{case.error}"' in challenge
    else:
        assert challenge == 'Bearer realm="api"'
    if case.scope:
        assert challenge.endswith(f'scope="{case.scope}"')
    assert seen.body == {"error": case.error or "unauthorized", "reason": case.reason}
    assert seen.client_headers["cache-control"] == "no-store"


def _assert_failed_closed(seen: Seen, front: str) -> None:
    """HTTP: Envoy turns the 503 into status_on_error (503 in envoy-http.yaml), dropping headers
    and body. gRPC: a denial with UNAVAILABLE, so the client gets 503 with Retry-After."""
    assert not seen.allowed and seen.status == 503
    if front == "http":
        assert seen.client_headers == {} and seen.body is None
    else:
        assert seen.client_headers["retry-after"] == "1"
        assert seen.body == {"error": "temporarily_unavailable", "reason": "idp_unavailable"}
