"""The gRPC ext_authz front beyond the shared table: where the certificate may come from, raw
headers, answers reused on cache hits, health, reflection, and serve() with server.grpc_port.
Real grpc.aio client and server over loopback; the fake IdP over real mutual TLS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar import app
from sidecar.dev.fakeidp import FakeIdp
from sidecar.fronts.grpc import SERVICE, GrpcFront, peer_address
from tests.conftest import MakeSidecar, Running, sidecar_config
from tests.support import envoy_side
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.support.scenarios import deploy_sections


@dataclass
class Grpc:
    running: Running
    front: GrpcFront
    channel: grpc.aio.Channel

    async def check(self, request: Any) -> Any:
        return await pb_grpc.AuthorizationStub(self.channel).Check(request, timeout=10)

    async def health(self, service: str = SERVICE) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(answer.status)


StartGrpc = Callable[..., Awaitable[Grpc]]


@pytest.fixture
async def start_grpc(make_sidecar: MakeSidecar) -> AsyncIterator[StartGrpc]:
    started: list[Grpc] = []

    async def start(**sections: dict[str, Any]) -> Grpc:
        merged = deploy_sections("grpc")
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        running = await make_sidecar(**merged)
        front = GrpcFront(running.sidecar)
        port = await front.start("127.0.0.1", 0)
        started.append(Grpc(running, front, grpc.aio.insecure_channel(f"127.0.0.1:{port}")))
        return started[-1]

    yield start
    for item in started:
        await item.channel.close()
        await item.front.stop(0)


def bound(idp: FakeIdp, pki: TestPki) -> list[str]:
    return [f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256)}"]


def alice_pem(pki: TestPki) -> str:
    return envoy_side.url_encode_pem(pki.alice.cert_pem)


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:127.0.0.1:50000", "127.0.0.1"), ("ipv6:[::1]:50000", "::1"), ("ipv6:%5B::1%5D:50000", "::1"),
    ("ipv6:[::ffff:10.1.2.3]:1", "::ffff:10.1.2.3"), ("unix:/tmp/socket", None), ("garbage", None),
])
def test_peer_address_reads_every_grpc_peer_shape(peer: str, address: str | None) -> None:
    assert peer_address(peer) == address


async def test_the_peer_certificate_is_used_when_the_grpc_peer_is_trusted(
    start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki
) -> None:
    g = await start_grpc()
    answer = await g.check(envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki)))
    assert answer.status.code == code_pb2.OK


async def test_neither_peer_certificate_nor_xfcc_counts_from_an_untrusted_grpc_peer(
    start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki
) -> None:
    request = envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki),
                                       xfcc=envoy_side.xfcc_element(pki.alice))
    # The shipped sidecar-grpc.toml declares routing.origins, which an untrusted peer cannot vouch for.
    g = await start_grpc(client_cert={"trusted_proxies": ["10.0.0.0/8"]})
    assert '"reason":"origin_not_allowed"' in (await g.check(request)).denied_response.body
    g = await start_grpc(client_cert={"trusted_proxies": ["10.0.0.0/8"]}, routing={"origins": []})
    answer = await g.check(request)
    assert answer.status.code == code_pb2.UNAUTHENTICATED
    assert answer.denied_response.status.code == 401 and '"reason":"cert_missing"' in answer.denied_response.body


async def test_the_peer_certificate_wins_over_an_xfcc_header_naming_another_certificate(
    start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki
) -> None:
    g = await start_grpc()
    wrong_xfcc = envoy_side.xfcc_element(pki.bob)
    ok = await g.check(envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki), xfcc=wrong_xfcc))
    assert ok.status.code == code_pb2.OK
    peer_bob = envoy_side.url_encode_pem(pki.bob.cert_pem)
    right_xfcc = envoy_side.xfcc_element(pki.alice)
    denied = await g.check(envoy_side.check_request(bound(idp, pki), peer_certificate=peer_bob, xfcc=right_xfcc))
    assert denied.status.code == code_pb2.UNAUTHENTICATED and '"cnf_mismatch"' in denied.denied_response.body


async def test_a_legacy_envoy_url_encoded_peer_certificate_is_read(start_grpc: StartGrpc, idp: FakeIdp,
                                                                   pki: TestPki) -> None:
    g = await start_grpc()
    legacy = envoy_side.url_encode_pem(pki.alice.cert_pem, legacy=True)
    answer = await g.check(envoy_side.check_request(bound(idp, pki), peer_certificate=legacy))
    assert answer.status.code == code_pb2.OK


async def test_raw_header_map_is_read_like_the_headers_map(start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki) -> None:
    g = await start_grpc()
    ok = await g.check(envoy_side.check_request(bound(idp, pki), xfcc=envoy_side.xfcc_element(pki.alice),
                                                raw_headers=True))
    assert ok.status.code == code_pb2.OK
    twice = [*bound(idp, pki), "Bearer other"]
    duplicated = await g.check(envoy_side.check_request(twice, peer_certificate=alice_pem(pki), raw_headers=True))
    assert duplicated.status.code == code_pb2.INVALID_ARGUMENT
    assert '"token_duplicated"' in duplicated.denied_response.body


async def test_an_empty_check_request_is_a_clean_denial(start_grpc: StartGrpc) -> None:
    answer = await (await start_grpc()).check(pb.CheckRequest())  # no host: not a declared origin
    assert answer.status.code == code_pb2.PERMISSION_DENIED and answer.denied_response.status.code == 403
    assert '"reason":"origin_not_allowed"' in answer.denied_response.body
    answer = await (await start_grpc(routing={"origins": []})).check(pb.CheckRequest())
    assert answer.status.code == code_pb2.UNAUTHENTICATED and answer.denied_response.status.code == 401
    (challenge,) = [h.header.value for h in answer.denied_response.headers if h.header.key == "WWW-Authenticate"]
    assert challenge == 'Bearer realm="api"'


async def test_allow_sets_extra_claim_headers_and_removes_configured_headers(
    start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki
) -> None:
    g = await start_grpc(response={"claims": {"tenant": "tenant"}})
    token = f"Bearer {idp.mint('alice', cnf=pki.alice.x5t_s256, tenant='acme')}"
    answer = await g.check(envoy_side.check_request([token], peer_certificate=alice_pem(pki)))
    headers = {o.header.key: o.header.value for o in answer.ok_response.headers}
    assert headers["x-credential-tenant"] == "acme" and "x-envoy-auth-headers-to-remove" not in headers
    assert list(answer.ok_response.headers_to_remove) == ["authorization", "x-forwarded-client-cert", "dpop"]
    assert all(o.keep_empty_value for o in answer.ok_response.headers)  # "" must overwrite a client's copy


@pytest.mark.parametrize("raw_headers", [False, True])
async def test_client_copies_of_credential_names_the_answer_does_not_set_are_removed(
    start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki, raw_headers: bool
) -> None:
    """Envoy applies headers_to_remove after the headers it sets: only names the answer does not set."""
    g = await start_grpc()
    forged = {"x-credential-sub": "mallory", "x-credential-tenant": "acme", "x_credential_role": "admin"}
    request = envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki), extra=forged,
                                       raw_headers=raw_headers)
    answer = await g.check(request)
    assert answer.status.code == code_pb2.OK
    headers = {o.header.key: o.header.value for o in answer.ok_response.headers}
    assert headers["x-credential-sub"] == "alice"
    removed = list(answer.ok_response.headers_to_remove)  # Envoy's headers map has no order
    assert removed[:3] == ["authorization", "x-forwarded-client-cert", "dpop"]
    assert sorted(removed[3:]) == ["x-credential-tenant", "x_credential_role"]
    clean = await g.check(envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki)))
    assert list(clean.ok_response.headers_to_remove) == ["authorization", "x-forwarded-client-cert", "dpop"]


async def test_forged_headers_deny_refuses_a_client_copy_as_invalid_argument(
    start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki
) -> None:
    g = await start_grpc(response={"forged_headers": "deny"})
    request = envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki),
                                       extra={"x-credential-tenant": "acme"})
    answer = await g.check(request)
    assert answer.status.code == code_pb2.INVALID_ARGUMENT and answer.status.message == "credential_header_forged"
    assert idp.introspect_requests == 0


async def test_cache_hits_reuse_the_rendered_answer(start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki) -> None:
    g = await start_grpc()
    request = envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki))
    first, second = await g.check(request), await g.check(request)
    assert first == second and idp.introspect_requests == 1
    assert len(g.front.service._ok) == 1  # one rendered CheckResponse for the cached token
    headers = next(iter(g.front.service._ok.values()))[0]
    assert g.front.service._allow(headers) is g.front.service._allow(headers)


async def test_metrics_count_grpc_decisions_like_http_ones(start_grpc: StartGrpc, idp: FakeIdp, pki: TestPki) -> None:
    g = await start_grpc()
    await g.check(envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki)))
    await g.check(envoy_side.check_request(bound(idp, pki)))
    metrics = await (await g.running.admin.get("/metrics")).text()
    assert 'sidecar_decisions_total{outcome="allow",policy="default",reason="ok"} 1.0' in metrics
    assert 'sidecar_decisions_total{outcome="deny",policy="default",reason="cert_missing"} 1.0' in metrics


async def test_health_follows_readiness(start_grpc: StartGrpc) -> None:
    g = await start_grpc()
    serving = health_pb2.HealthCheckResponse.SERVING
    assert await _eventually(g.health, serving)
    assert await g.health("") == serving
    g.running.sidecar.draining = True
    assert await _eventually(g.health, health_pb2.HealthCheckResponse.NOT_SERVING)


async def test_health_is_not_serving_while_discovery_is_pending(start_grpc: StartGrpc, idp: FakeIdp) -> None:
    await idp.server.close()  # type: ignore[attr-defined]
    g = await start_grpc()
    await asyncio.sleep(0.3)
    assert await g.health() == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_is_off_by_default_and_on_when_configured(start_grpc: StartGrpc) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def services(g: Grpc) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(g.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request]), timeout=5):
            return [s.name for s in answer.list_services_response.service]
        return []

    off = await start_grpc()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services(off)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    on = await start_grpc(server={"grpc_reflection": True})
    assert SERVICE in await services(on)


async def test_serve_runs_the_grpc_port_next_to_http_and_stops_cleanly(idp: FakeIdp, pki: TestPki) -> None:
    ports = _free_ports(3)
    config = sidecar_config(pki, idp, server={"port": ports[0], "admin_port": ports[1], "grpc_port": ports[2]},
                            **{k: v for k, v in deploy_sections("grpc").items()})
    stop = asyncio.Event()
    task = asyncio.create_task(app.serve(config, stop=stop))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[2]}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(100):
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
        request = envoy_side.check_request(bound(idp, pki), peer_certificate=alice_pem(pki))
        answer = await pb_grpc.AuthorizationStub(channel).Check(request, timeout=10)
        assert answer.status.code == code_pb2.OK
        stop.set()
        await asyncio.wait_for(task, 10)
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.AuthorizationStub(channel).Check(request, timeout=1)


async def _eventually(probe: Callable[[], Awaitable[int]], expected: int) -> bool:
    for _ in range(100):
        if await probe() == expected:
            return True
        await asyncio.sleep(0.05)
    return False


def _free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


async def test_a_taken_grpc_port_makes_serve_fail_instead_of_running_without_it(idp: FakeIdp, pki: TestPki) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = _free_ports(2)
    config = sidecar_config(pki, idp, server={"port": ports[0], "admin_port": ports[1],
                                              "grpc_port": taken.getsockname()[1]})
    try:
        with pytest.raises((RuntimeError, OSError)):
            await asyncio.wait_for(app.serve(config), 10)
    finally:
        taken.close()
