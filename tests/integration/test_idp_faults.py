"""The fault matrix: every way the IdP can fail ends in the documented deny, then recovers by itself.

Each fault is real on loopback: a closed port, a name that cannot resolve (RFC 6761 ``.invalid``),
a listener whose accept queue is full, a server that answers late, wrongly, partly, or with the
wrong certificate, and our own client certificate expired or from a CA the IdP does not trust.
The documented deny is 503 ``idp_unavailable`` with ``Retry-After``, never an allow, never a
500; ``sidecar_idp_requests_total{result=...}`` says what happened. test_check.py covers the
basic 5xx/garbage cases end to end; this file adds the result labels, the network and TLS faults,
and the guard (retries, breaker, concurrency bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.dev.devidp import server_context
from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.dev.pki import CertificateAuthority
from tests.conftest import MakeSidecar, Running
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAST = {"timeout": 0.5, "connect_timeout": 0.2, "breaker_open": 0.1}


def client(index: int) -> dict[str, str]:
    """The headers of one of many clients behind the proxy: the guard is tested, not admission."""
    return {"X-Forwarded-For": f"198.51.100.{index}"}


def alice_token(idp: FakeIdp, pki: TestPki) -> str:
    return idp.mint("alice", cnf=pki.alice.x5t_s256)


def endpoint(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """Config for an explicit introspection endpoint (no discovery in the way of the fault)."""
    return {"issuer": None, "introspection_endpoint": f"https://{host}:{port}/introspect"}


async def metric(running: Running, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    text = await (await running.admin.get("/metrics")).text()
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        found, _, label_text = sample.partition("{")
        if found == name and labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', label_text)).items():
            total += float(value)
    return total


async def assert_idp_unavailable(running: Running, token: str, pki: TestPki, retry_after: str = "1") -> None:
    response = await running.check(token, pki.alice)
    assert response.status == 503
    assert response.headers["Retry-After"] == retry_after
    assert (await response.json())["reason"] == "idp_unavailable"
    assert "x-credential-sub" not in response.headers


async def wait_until_allowed(running: Running, token: str, pki: TestPki, seconds: float = 5.0) -> None:
    """Recovery by itself: poll (the breaker may still be open for a moment) until 200."""
    for _ in range(int(seconds / 0.05)):
        response = await running.check(token, pki.alice)
        if response.status == 200:
            return
        assert response.status == 503
        await asyncio.sleep(0.05)
    raise AssertionError("the sidecar did not recover")


ServeIdp = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def serve_idp(idp: FakeIdp, pki: TestPki) -> AsyncIterator[ServeIdp]:
    """Another server for the same fake IdP: on a given port or socket, cert, or extra middleware."""
    servers: list[TestServer] = []

    async def start(*, port: int = 0, context: ssl.SSLContext | None = None,
                    middleware: Any = None) -> TestServer:
        app = idp.app()
        if middleware is not None:
            app.middlewares.append(middleware)
        server = TestServer(app, port=port, host="127.0.0.1")
        await server.start_server(ssl=context or server_context(*pki.idp_files, pki.ca_file))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def test_connection_refused_is_503_refused_retried_once_and_recovers_when_the_idp_starts(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, serve_idp: ServeIdp
) -> None:
    port = free_port()
    running = await make_sidecar(idp={**endpoint(port), **FAST})
    token = alice_token(idp, pki)
    await assert_idp_unavailable(running, token, pki)
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="refused") == 2.0
    await serve_idp(port=port)
    await wait_until_allowed(running, token, pki)


async def test_an_unresolvable_idp_host_is_503_dns_and_not_retried(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={**endpoint(443, host="idp.invalid"), **FAST})
    await assert_idp_unavailable(running, alice_token(idp, pki), pki)
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="dns") == 1.0


@pytest.fixture
def blackhole() -> Any:
    """A listener on 127.0.0.1 that never accepts, its queue full: a connect hangs until timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        fillers.append(filler)
    yield listener
    for s in (*fillers, listener):
        s.close()


async def test_a_connect_timeout_is_503_connect_timeout_and_recovers_when_the_idp_accepts(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, blackhole: socket.socket
) -> None:
    port = blackhole.getsockname()[1]
    running = await make_sidecar(idp={**endpoint(port), "timeout": 1.0, "connect_timeout": 0.2})
    token = alice_token(idp, pki)
    await assert_idp_unavailable(running, token, pki)
    attempts = await metric(running, "sidecar_idp_requests_total", kind="introspection", result="connect_timeout")
    assert attempts == 2.0  # refused connections and connect timeouts are retried once within the deadline
    runner = web.AppRunner(idp.app())
    await runner.setup()
    await web.SockSite(runner, blackhole, ssl_context=server_context(*pki.idp_files, pki.ca_file)).start()
    try:
        await wait_until_allowed(running, token, pki)
    finally:
        await runner.cleanup()


async def test_an_answer_slower_than_the_timeout_is_503_timeout_and_never_retried(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={"timeout": 0.3})
    token = alice_token(idp, pki)
    idp.fault = Fault(delay=0.6)
    await assert_idp_unavailable(running, token, pki)
    assert idp.introspect_requests == 1  # it may be working on it: never ask again within the request
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="timeout") == 1.0
    idp.fault = None
    await wait_until_allowed(running, token, pki)


ANSWER_FAULTS = {
    "500": (Fault(status=500), "http_500"),
    "502": (Fault(status=502), "http_502"),
    "503": (Fault(status=503), "http_503"),
    "200 with HTML": (Fault(body=b"<html>oops</html>"), "garbage"),
    "200 with a JSON array": (Fault(body=b"[1,2]"), "malformed"),
    "200 with a JSON string": (Fault(body=b'"active"'), "malformed"),
    "200 with null": (Fault(body=b"null"), "malformed"),
    "200 with deeply nested JSON": (Fault(body=b"[" * 100_000), "garbage"),
    "200 without active": (Fault(body=b'{"sub": "alice"}'), "malformed"),
    "200 JSON as text/plain": (Fault(body=b'{"active": true}', content_type="text/plain"), "content_type"),
    "401 (our client rejected)": (Fault(status=401), "http_401"),
}


@pytest.mark.parametrize(("fault", "result"), ANSWER_FAULTS.values(), ids=ANSWER_FAULTS.keys())
async def test_a_wrong_answer_is_503_labelled_with_what_was_wrong_and_not_retried(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, fault: Fault, result: str
) -> None:
    running = await make_sidecar()
    token = alice_token(idp, pki)
    idp.fault = fault
    await assert_idp_unavailable(running, token, pki)
    assert idp.introspect_requests == 1
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result=result) == 1.0
    idp.fault = None
    await wait_until_allowed(running, token, pki)


async def test_a_429_slows_the_source_whose_call_it_refused_and_no_other(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={**FAST, "breaker_failures": 1})
    flooder, neighbour = {"X-Forwarded-For": "198.51.100.66"}, {"X-Forwarded-For": "198.51.100.7"}
    idp.fault = Fault(status=429, headers={"Retry-After": "5"})  # the IdP's own rate limit, tripped by a burst
    refused = await running.check(alice_token(idp, pki), pki.alice, **flooder)
    assert refused.status == 503 and refused.headers["Retry-After"] == "5"  # the IdP's own answer, passed on
    idp.fault = None
    calls = idp.introspect_requests
    for _ in range(5):  # the flooder backs off for the Retry-After: the IdP is not asked again
        backing_off = await running.check(alice_token(idp, pki), pki.alice, **flooder)
        assert backing_off.status == 429 and (await backing_off.json())["reason"] == "rate_limited"
        assert int(backing_off.headers["Retry-After"]) >= 4
    assert idp.introspect_requests == calls
    assert (await running.check(alice_token(idp, pki), pki.alice, **neighbour)).status == 200  # others go on
    assert await metric(running, "sidecar_idp_breaker_state") == 0.0
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="http_429") == 1.0


def truncating(state: dict[str, bool]) -> Any:
    """Middleware: Content-Length promises more than is sent, then the connection closes."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not state["on"] or request.path != "/introspect":
            return await handler(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"active": tr')
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError

    return middleware


async def test_a_truncated_body_is_503_truncated_and_recovers(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, serve_idp: ServeIdp
) -> None:
    state = {"on": True}
    server = await serve_idp(middleware=truncating(state))
    running = await make_sidecar(idp={**endpoint(server.port), **FAST})  # type: ignore[arg-type]
    token = alice_token(idp, pki)
    await assert_idp_unavailable(running, token, pki)
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="truncated") == 1.0
    state["on"] = False
    await wait_until_allowed(running, token, pki)


def tls_server_context(pki: TestPki, issued: Any, tmp_path: Path) -> ssl.SSLContext:
    cert, key = issued.write(tmp_path, "server")
    return server_context(cert, key, pki.ca_file)


@pytest.mark.parametrize(("case", "result"), [("untrusted", "tls_untrusted"), ("hostname", "tls_hostname"),
                                              ("expired", "tls_expired")])
async def test_a_server_certificate_the_sidecar_must_not_trust_is_503_and_recovers_after_the_fix(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, serve_idp: ServeIdp, tmp_path: Path,
    case: str, result: str,
) -> None:
    now = dt.datetime.now(dt.UTC)
    bad = {
        "untrusted": lambda: CertificateAuthority("rogue").issue("127.0.0.1", server_names=("127.0.0.1",)),
        "hostname": lambda: pki.ca.issue("idp.example", server_names=("idp.example",)),
        "expired": lambda: pki.ca.issue("127.0.0.1", server_names=("127.0.0.1",),
                                        not_before=now - dt.timedelta(days=3), days=1),
    }[case]()
    context = tls_server_context(pki, bad, tmp_path)
    server = await serve_idp(context=context)
    running = await make_sidecar(idp={**endpoint(server.port), **FAST})  # type: ignore[arg-type]
    token = alice_token(idp, pki)
    await assert_idp_unavailable(running, token, pki)
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result=result) == 1.0
    context.load_cert_chain(*pki.idp_files)  # the IdP's operator installs the right certificate
    await wait_until_allowed(running, token, pki)


@pytest.mark.parametrize("case", ["expired", "foreign CA"])
async def test_our_client_certificate_rejected_by_the_idp_at_the_handshake_is_503(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, tmp_path: Path, case: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    ours = (pki.ca.issue("sidecar", not_before=now - dt.timedelta(days=3), days=1) if case == "expired"
            else CertificateAuthority("foreign").issue("sidecar"))
    cert, key = ours.write(tmp_path, "sidecar")
    port = int(idp.issuer.rsplit(":", 1)[1])
    running = await make_sidecar(idp={**endpoint(port), "cert_file": str(cert), "key_file": str(key), **FAST})
    await assert_idp_unavailable(running, alice_token(idp, pki), pki)
    # TLS 1.3: the client finishes its handshake first; the IdP's alert is usually lost to the RST.
    labels = {r: await metric(running, "sidecar_idp_requests_total", kind="introspection", result=r)
              for r in ("reset", "tls", "disconnected")}
    assert sum(labels.values()) >= 1.0, labels
    assert idp.introspection_calls == 0  # the IdP never answered about the token


def dropping_first(count: list[int]) -> Any:
    """Middleware: close the first connection without answering, like an idle keep-alive close."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/introspect":
            count[0] += 1
            if count[0] == 1:
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError
        return await handler(request)

    return middleware


async def test_a_connection_closed_without_an_answer_is_retried_once_and_the_decision_allows(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, serve_idp: ServeIdp
) -> None:
    count = [0]
    server = await serve_idp(middleware=dropping_first(count))
    running = await make_sidecar(idp=endpoint(server.port))  # type: ignore[arg-type]
    response = await running.check(alice_token(idp, pki), pki.alice)
    assert response.status == 200 and count[0] == 2
    assert await metric(running, "sidecar_idp_retries_total", result="disconnected") == 1.0


async def test_after_n_consecutive_failures_the_breaker_answers_at_once_and_a_probe_closes_it(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={**FAST, "breaker_failures": 3, "breaker_open": 1.0})
    idp.fault = Fault(status=500)
    for _ in range(3):
        await assert_idp_unavailable(running, alice_token(idp, pki), pki)
    assert idp.introspect_requests == 3
    assert await metric(running, "sidecar_idp_breaker_state") == 1.0
    idp.fault = Fault(status=500)
    for _ in range(10):
        await assert_idp_unavailable(running, alice_token(idp, pki), pki)
    assert await metric(running, "sidecar_idp_rejections_total", reason="breaker_open") >= 9.0
    assert idp.introspect_requests <= 4  # at most a probe reached the IdP, not ten requests
    idp.fault = None
    token = alice_token(idp, pki)
    await wait_until_allowed(running, token, pki)
    assert await metric(running, "sidecar_idp_requests_total", kind="probe", result="inactive") >= 1.0


async def test_tokens_the_idp_answers_400_for_are_503_but_never_open_the_breaker_for_everyone(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={**FAST, "breaker_failures": 3, "breaker_open": 30})
    idp.fault = Fault(status=400, body=b'{"error": "invalid_request"}')
    for n in range(5):
        await assert_idp_unavailable(running, f"junk-{n}", pki)
    assert idp.introspect_requests == 5
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="http_400") == 5.0
    assert await metric(running, "sidecar_idp_breaker_state") == 0.0
    idp.fault = None
    response = await running.check(alice_token(idp, pki), pki.alice)
    assert response.status == 200  # at once: the breaker (open for 30 s) never opened


def concurrency_meter(seen: dict[str, int]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/introspect":
            return await handler(request)
        seen["now"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        try:
            await asyncio.sleep(0.1)
            return await handler(request)
        finally:
            seen["now"] -= 1

    return middleware


async def test_no_more_than_max_concurrent_introspections_reach_the_idp(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, serve_idp: ServeIdp
) -> None:
    seen = {"now": 0, "peak": 0}
    server = await serve_idp(middleware=concurrency_meter(seen))
    running = await make_sidecar(idp={**endpoint(server.port), "max_concurrent": 2, "timeout": 2.0})  # type: ignore[arg-type]
    tokens = [alice_token(idp, pki) for _ in range(8)]
    responses = await asyncio.gather(*(running.check(t, pki.alice, **client(i)) for i, t in enumerate(tokens)))
    assert [r.status for r in responses] == [200] * 8
    assert seen["peak"] == 2


async def test_a_check_that_finds_no_introspection_slot_in_time_is_503_saturated_without_opening_the_breaker(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={"max_concurrent": 1, "timeout": 0.3, "breaker_failures": 2})
    await running.sidecar.issuer.discovery.get()
    idp.fault = Fault(delay=0.5)  # the first call holds the only slot until its deadline
    first, second = await asyncio.gather(running.check(alice_token(idp, pki), pki.alice, **client(1)),
                                         running.check(alice_token(idp, pki), pki.alice, **client(2)))
    assert [first.status, second.status] == [503, 503]
    assert await metric(running, "sidecar_idp_rejections_total", reason="saturated") == 1.0
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="timeout") == 1.0
    assert await metric(running, "sidecar_idp_breaker_state") == 0.0  # one IdP failure of two allowed
    idp.fault = None
    assert (await running.check(alice_token(idp, pki), pki.alice)).status == 200


async def test_a_burst_of_new_tokens_against_a_slow_but_healthy_idp_never_opens_the_breaker(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(idp={"max_concurrent": 2, "timeout": 1.6, "connect_timeout": 0.2,
                                      "breaker_failures": 2, "breaker_open": 30})
    await running.sidecar.issuer.discovery.get()
    idp.fault = Fault(delay=0.3)  # healthy, answers every call, but slowly
    responses = await asyncio.gather(*(running.check(alice_token(idp, pki), pki.alice, **client(i))
                                       for i in range(16)))
    assert {r.status for r in responses} <= {200, 503} and 200 in {r.status for r in responses}
    assert await metric(running, "sidecar_idp_requests_total", kind="introspection", result="timeout") == 0.0
    assert await metric(running, "sidecar_idp_rejections_total", reason="saturated") >= 1.0
    assert await metric(running, "sidecar_idp_breaker_state") == 0.0
    idp.fault = None
    assert (await running.check(alice_token(idp, pki), pki.alice)).status == 200


def in_pieces() -> Any:
    """Middleware: a valid answer written in three pieces with pauses between them."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        answer = await handler(request)
        if request.path != "/introspect":
            return answer
        assert isinstance(answer, web.Response) and answer.body is not None
        body = bytes(answer.body)  # type: ignore[arg-type]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        third = len(body) // 3
        for piece in (body[:third], body[third:2 * third], body[2 * third:]):
            await response.write(piece)
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    return middleware


async def test_an_answer_that_arrives_in_pieces_is_read_whole(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, serve_idp: ServeIdp
) -> None:
    server = await serve_idp(middleware=in_pieces())
    running = await make_sidecar(idp=endpoint(server.port))  # type: ignore[arg-type]
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, padding="x" * 20_000)
    response = await running.check(token, pki.alice)
    assert response.status == 200 and response.headers["x-credential-sub"] == "alice"


def metadata_in_pieces() -> Any:
    """Middleware: the discovery documents written in pieces with pauses between them."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        answer = await handler(request)
        if not request.path.startswith("/.well-known/"):
            return answer
        assert isinstance(answer, web.Response) and answer.body is not None
        body = bytes(answer.body)  # type: ignore[arg-type]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), 64):
            await response.write(body[start:start + 64])
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    return middleware


async def test_metadata_that_arrives_in_pieces_is_read_whole(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, serve_idp: ServeIdp
) -> None:
    server = await serve_idp(middleware=metadata_in_pieces())
    idp.issuer = f"https://127.0.0.1:{server.port}"
    running = await make_sidecar()
    await running.sidecar.issuer.discovery.get()
    assert (await running.check(alice_token(idp, pki), pki.alice)).status == 200
