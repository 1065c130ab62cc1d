"""Each front hands the core the original request and the proxy's policy name: nginx headers,
Envoy HTTP's own method and path (minus ``routing.path_prefix``), Envoy gRPC attributes and the
route's ``context_extensions``. Real aiohttp and grpc.aio servers; the fake IdP over real mTLS."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.rpc import code_pb2

from sidecar.dev.fakeidp import FakeIdp
from sidecar.fronts.grpc import GrpcFront
from tests.conftest import MakeSidecar, escaped_pem
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.routes

SECTIONS: dict[str, Any] = {
    "policies": {"orders_write": {"required_scopes": ["orders:write"]},
                 "health": {"binding": "off"}},
    "routes": [{"path": "/orders", "methods": ["POST"], "policy": "orders_write"},
               {"path": "/health", "policy": "health"},
               {"path": "/", "policy": "default"}],
}


async def test_nginx_headers_choose_the_route_and_the_named_policy(make_sidecar: MakeSidecar, idp: FakeIdp,
                                                                   pki: TestPki) -> None:
    running = await make_sidecar(**SECTIONS)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="orders:read")
    cert = escaped_pem(pki.alice)

    async def status(**headers: str) -> tuple[int, str | None]:
        r = await running.client.get("/check", headers={"Authorization": f"Bearer {token}",
                                                          "x-client-cert": cert, **headers})
        return r.status, None if r.status == 200 else (await r.json())["reason"]

    assert await status(**{"X-Original-URI": "/orders/1", "X-Original-Method": "GET"}) == (200, None)
    assert await status(**{"X-Original-URI": "/orders", "X-Original-Method": "POST"}) == (403, "scope_missing")
    assert await status(**{"X-Original-URI": "/public/..;/orders", "X-Original-Method": "POST"}) == \
        (400, "path_invalid")  # nginx and Tomcat read ..; differently: no single form
    assert await status(**{"X-Original-URI": "/orders%2f1", "X-Original-Method": "GET"}) == (400, "path_invalid")
    assert await status(**{"X-Sidecar-Policy": "orders_write"}) == (403, "scope_missing")
    assert await status(**{"X-Sidecar-Policy": "nope"}) == (403, "policy_unknown")


async def test_envoy_http_checks_route_on_their_own_method_and_path_minus_the_prefix(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(routing={"path_prefix": "/check"}, **SECTIONS)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await running.client.get("/check/health", headers=headers)).status == 200  # binding off
    unbound = await running.client.get("/check/orders", headers=headers)  # default policy: strict binding
    assert unbound.status == 401 and (await unbound.json())["reason"] == "cert_missing"
    headers["x-client-cert"] = escaped_pem(pki.alice)
    assert (await running.client.get("/check/orders", headers=headers)).status == 200
    denied = await running.client.post("/check/orders?x=1", headers=headers)
    assert denied.status == 403 and (await denied.json())["reason"] == "scope_missing"
    elsewhere = await running.client.get("/other/health", headers=headers)  # not under the prefix: no path
    assert elsewhere.status == 400 and (await elsewhere.json())["reason"] == "path_invalid"


async def test_grpc_checks_route_on_the_attributes_and_the_context_extension(
        make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki) -> None:
    running = await make_sidecar(**SECTIONS)
    front = GrpcFront(running.sidecar)
    port = await front.start("127.0.0.1", 0)
    token = [f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256, scope='read')}"]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AuthorizationStub(channel)

            async def code(method: str, path: str, policy: str | None = None, cert: str = "") -> int:
                request = envoy_side.check_request(token, method=method, path=path, peer_certificate=cert)
                if policy is not None:
                    request.attributes.context_extensions["policy"] = policy
                return int((await stub.Check(request, timeout=10)).status.code)

            assert await code("GET", "/health/live") == code_pb2.OK
            assert await code("GET", "/orders") == code_pb2.UNAUTHENTICATED  # default: bound, cert_missing
            assert await code("GET", "/orders", policy="health") == code_pb2.OK  # the route's extension wins
            alice = envoy_side.url_encode_pem(pki.alice.cert_pem)
            assert await code("GET", "/orders", cert=alice) == code_pb2.OK
            assert await code("POST", "/orders", cert=alice) == code_pb2.PERMISSION_DENIED  # orders:write
            assert await code("GET", "/health", policy="orders_write", cert=alice) == code_pb2.PERMISSION_DENIED
            assert await code("GET", "/health", policy="unknown") == code_pb2.PERMISSION_DENIED
    finally:
        await front.stop(0)
