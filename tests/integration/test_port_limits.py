"""Both HTTP ports of the real process against hostile connections (issue 11, items 5 and 13).

The sidecar runs as the container runs it (``python -m sidecar``, environment only) against the
fake IdP over real mutual TLS; every request here is raw bytes on a real socket.

- A half-sent request head is answered 408 and closed after ``server.header_timeout``.
- An incomplete head past its byte bound is answered 431 and closed (memory per connection).
- Idle connections to the admin port, past its small caps, close the oldest idle one: under a
  descriptor limit of 256 a flood of them leaves the check port answering, cached tokens
  included; and however many are held, from however many addresses, the probes are answered.
- No error answer of either port contains a request header value (aiohttp's own 400 quoted the
  request line or header it could not parse: the bearer token).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from sidecar.dev.fakeidp import FakeIdp
from tests.conftest import escaped_pem
from tests.support.pki_fixtures import TestPki
from tests.support.ports import free_port
from tests.support.sidecar_process import Process, running_sidecar

HEADER_TIMEOUT = 0.5
PORTS = ("check", "admin")


def two_ports() -> tuple[int, int]:
    """Two free ports, distinct (two calls of free_port may return the same one)."""
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def env(pki: TestPki, idp: FakeIdp, **extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    port, admin = two_ports()
    values.update(
        SIDECAR_IDP__ISSUER=idp.issuer, SIDECAR_IDP__CLIENT_ID="sidecar",
        SIDECAR_IDP__CERT_FILE=str(pki.sidecar_files[0]), SIDECAR_IDP__KEY_FILE=str(pki.sidecar_files[1]),
        SIDECAR_IDP__CA_FILE=str(pki.ca_file), SIDECAR_SERVER__PORT=str(port),
        SIDECAR_SERVER__ADMIN_PORT=str(admin), SIDECAR_SERVER__HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        SIDECAR_LOG__LEVEL="warning",
    )
    values.update(extra)
    return values


@pytest.fixture
async def process(pki: TestPki, idp: FakeIdp) -> AsyncIterator[Process]:
    async with running_sidecar(env(pki, idp)) as running:
        yield running


def port_of(process: Process, which: str) -> int:
    url = process.check_url if which == "check" else process.admin_url
    return int(url.split(":")[2].split("/")[0])


async def exchange(port: int, data: bytes, *, wait: float = 10.0) -> bytes:
    """Send ``data``; everything the sidecar sends back until it closes (bounded by ``wait``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        received = b""
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                received += chunk
        return received
    finally:
        writer.close()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


@pytest.mark.parametrize("which", PORTS)
async def test_a_half_sent_head_is_answered_408_and_closed_after_the_header_timeout(
    process: Process, which: str
) -> None:
    head = b"GET /readyz HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer abc"  # no end of head
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await exchange(port_of(process, which), head)  # aiohttp alone: open for 75 s
    assert status(answer) == 408, answer
    assert loop.time() - started >= HEADER_TIMEOUT
    assert b"abc" not in answer


@pytest.mark.parametrize("which", PORTS)
async def test_a_head_sent_a_byte_at_a_time_is_closed_at_the_deadline_of_its_first_byte(
    process: Process, which: str
) -> None:
    # Slowloris: each byte arrives well within any per-read timeout; the head never ends.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(process, which))
    answered = asyncio.ensure_future(reader.read())  # everything until the sidecar closes
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 400:
            if answered.done() or loop.time() - started > 10:
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        answer = await asyncio.wait_for(answered, 5)
    finally:
        writer.close()
    assert status(answer) == 408, answer
    assert loop.time() - started < HEADER_TIMEOUT + 3


@pytest.mark.parametrize(("which", "size"), [("check", 140_000), ("admin", 20_000)])
async def test_an_incomplete_head_past_its_byte_bound_is_answered_431_and_closed(
    process: Process, which: str, size: int
) -> None:
    # Fields within the per-field limit, never the end of the head: aiohttp alone keeps reading
    # (up to 128 fields: 2 MiB of RSS per connection on the admin port, 14 MiB on the check port).
    fields = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 7000) for i in range(size // 7000 + 1))
    answer = await exchange(port_of(process, which), b"GET /healthz HTTP/1.1\r\nHost: sidecar\r\n" + fields,
                            wait=HEADER_TIMEOUT / 2)
    assert status(answer) == 431, answer[:200]


async def test_a_large_body_that_arrives_after_the_answer_is_not_taken_for_a_head(process: Process) -> None:
    # Envoy may send a check with its body (with_request_body); the check never reads it.
    size = 300_000  # more than server.max_head_size, and it outlasts the head deadline
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(process, "check"))
    try:
        writer.write(b"POST /check HTTP/1.1\r\nHost: sidecar\r\nContent-Length: %d\r\n\r\n" % size)
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status(first) == 401, first
        for _ in range(3):
            await asyncio.sleep(HEADER_TIMEOUT / 2)
            writer.write(b"x" * (size // 3))
        writer.write(b"GET /check HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert b" 431 " not in rest and b" 408 " not in rest, rest[:300]
    assert b"HTTP/1.1 401 " in rest  # the next request on the same connection was answered


async def test_a_complete_request_sent_in_pieces_within_the_timeout_is_answered(process: Process) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(process, "admin"))
    try:
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: sidecar\r\n", b"Connection: close\r\n\r\n"):
            writer.write(piece)
            await asyncio.sleep(HEADER_TIMEOUT / 5)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status(answer) == 200, answer


async def test_an_admin_flood_under_a_descriptor_limit_leaves_checks_and_cached_tokens_working(
    pki: TestPki, idp: FakeIdp
) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    check = (f"GET /check HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer {token}\r\n"
             f"X-Client-Cert: {escaped_pem(pki.alice)}\r\n\r\n").encode()
    # 256 descriptors in all; aiohttp alone accepts admin connections until none is left.
    async with running_sidecar(env(pki, idp, SIDECAR_SERVER__HEADER_TIMEOUT="30"), nofile=256) as process:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(process, "check"))
        try:
            writer.write(check)  # cached now, on a keep-alive connection the proxy would hold
            assert b" 200 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            idle = [await asyncio.open_connection("127.0.0.1", port_of(process, "admin")) for _ in range(400)]
            await asyncio.sleep(0.5)
            evicted = await asyncio.wait_for(idle[0][0].read(), 5)
            assert evicted == b"", evicted  # past the admin caps, the oldest idle one is closed: few are held
            writer.write(check)  # the proxy's kept connection: a cached token
            assert b" 200 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            closing = check.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            fresh = await exchange(port_of(process, "check"), closing)
            assert status(fresh) == 200, fresh[:200]  # a new connection of the proxy too
            for _, idle_writer in idle:
                idle_writer.close()
        finally:
            writer.close()
        process.popen.terminate()
        process.popen.wait(timeout=30)
        refusals = [line for line in process.logs() if line.get("msg") == "refused"]
        assert refusals and refusals[0]["port"] == "admin", refusals


MALFORMED = {
    "NUL in the token": b"GET /check HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer TOKEN\x00x\r\n\r\n",
    "bare CR after the token": b"GET /check HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer TOKEN\rX: y\r\n\r\n",
    "bare LF after the token": b"GET /check HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer TOKEN\nX: y\r\n\r\n",
    "control byte in the token": b"GET /check HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer TOK\x01EN\r\n\r\n",
    "the token in a bad request line": b"GET /TOKEN\x01 HTTP/1.1\r\nAuthorization: Bearer TOKEN\r\n\r\n",
    "a bad header after the token": b"GET /check HTTP/1.1\r\nAuthorization: Bearer TOKEN\r\nBad Name: v\r\n\r\n",
    "an invalid Content-Length": b"POST /check HTTP/1.1\r\nAuthorization: Bearer TOKEN\r\n"
                                 b"Content-Length: TOKEN\r\n\r\n",
    "a header line past the field limit": b"GET /check HTTP/1.1\r\nAuthorization: Bearer TOKEN"
                                          + b"a" * 70_000 + b"\r\n\r\n",
    "obs-fold continuing the token": b"GET /check HTTP/1.1\r\nAuthorization: Bearer TOKEN\r\n TOKEN2\r\n\r\n",
}


@pytest.mark.parametrize("which", PORTS)
@pytest.mark.parametrize("name", MALFORMED)
async def test_no_error_answer_contains_a_request_header_value(
    process: Process, idp: FakeIdp, pki: TestPki, which: str, name: str
) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    request = MALFORMED[name].replace(b"TOKEN", token.encode())
    answer = await exchange(port_of(process, which), request)
    assert 400 <= status(answer) < 500, answer[:300]
    assert token.encode()[:16] not in answer, answer[:300]
    assert b"Bearer" not in answer and b"\\x" not in answer, answer[:300]


async def test_the_gate_counts_what_it_refuses_in_the_metrics(process: Process) -> None:
    answer = await exchange(port_of(process, "admin"), b"GET /readyz HTTP/1.1\r\nHost: s")
    assert status(answer) == 408
    metrics = await exchange(port_of(process, "admin"),
                             b"GET /metrics HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
    text = metrics.decode()
    assert 'sidecar_http_refused_total{port="admin",reason="header_timeout"} 1.0' in text
    assert 'sidecar_connections{port="admin"} 1.0' in text  # this scrape's own connection


async def held(port: int, source: str, *, trickle: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection held open from ``source``: after one request (idle keep-alive), or sending a
    head a few bytes at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if trickle:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: s\r\n")
    else:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)  # the whole answer: the connection is idle now
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("trickle", [False, True], ids=["idle keep-alive", "heads trickled in"])
async def test_connections_held_from_four_addresses_never_keep_the_probes_out(
    process: Process, trickle: bool
) -> None:
    port = port_of(process, "admin")
    holders = [await held(port, f"127.0.0.{2 + i % 4}", trickle=trickle) for i in range(16)]  # the whole cap
    try:
        for _ in range(10):  # the kubelet: one connection per probe, from its own address
            for path in (b"/healthz", b"/readyz"):
                answer = await exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
                assert status(answer) == 200, answer[:200]
    finally:
        for _, writer in holders:
            writer.close()
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
    # One held connection was closed for the first probe; each probe then found room when it came.
    assert 'sidecar_http_refused_total{port="admin",reason="evicted"} 1.0' in metrics.decode()


async def test_an_address_at_its_own_cap_closes_its_own_oldest_connection_not_anothers(process: Process) -> None:
    port = port_of(process, "admin")
    other = await held(port, "127.0.0.3", trickle=False)
    mine = [await held(port, "127.0.0.2", trickle=False) for _ in range(5)]  # a quarter of the cap: 4
    try:
        assert await asyncio.wait_for(mine[0][0].read(), 5) == b""  # its own oldest: closed
        other[1].write(b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n")  # another's: still open
        assert b" 200 " in await asyncio.wait_for(other[0].readuntil(b"\r\n\r\n"), 5)
    finally:
        for _, writer in [other, *mine]:
            writer.close()
