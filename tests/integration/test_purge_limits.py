"""POST /purge against guessing (issue 11, item 5): peers by address, a global rate of attempts,
a per-peer lockout after each failed authentication (429 with Retry-After), a bounded body wait,
and a log line for each refusal that never holds the secret."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.dev.fakeidp import FakeIdp
from tests.conftest import MakeSidecar, Running
from tests.support.pki_fixtures import TestPki

SECRET = "purge-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
WRONG = {"Authorization": "Bearer wrong-secret-0123456789abcdef"}


async def purge(running: Running, headers: dict[str, str] = AUTH) -> Any:
    return await running.admin.post("/purge", json={"all": True}, headers=headers)


async def cache_one(running: Running, idp: FakeIdp, pki: TestPki) -> None:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await running.check(token, pki.alice)).status == 200


async def test_a_guesser_on_the_holders_address_locks_out_its_own_wrong_attempts_never_the_holder(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    running = await make_sidecar(server={"admin_secret": SECRET, "purge_backoff": 30})
    served = 0
    for _ in range(12):  # a local process guessing once per attempt of the holder, on the same address
        await cache_one(running, idp, pki)
        wrong = await purge(running, WRONG)
        assert wrong.status in (401, 429)
        right = await purge(running)
        served += right.status == 200 and len(running.sidecar.decider.cache) == 0
    assert served == 12
    locked = await purge(running, WRONG)
    assert locked.status == 429 and int(locked.headers["Retry-After"]) >= 29  # the guesser is locked out
    assert await locked.json() == {"error": "too_many_requests"}
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in captured_logs.records)
    assert "'reason': 'admin_unauthorized'" in text and "'reason': 'rate_limited'" in text
    assert SECRET not in text and "wrong-secret" not in text


async def test_wrong_attempts_over_the_global_rate_are_429_and_the_right_secret_is_never_limited(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(server={"admin_secret": SECRET, "purge_burst": 2, "purge_rate": 0.01,
                                         "purge_peers": ["127.0.0.0/8"]})
    assert [(await purge(running, WRONG)).status for _ in range(2)] == [401, 429]  # the peer is locked out
    url = f"http://127.0.0.1:{running.admin.server.port}/purge"
    import aiohttp

    answers = []
    for peer in ("127.0.0.2", "127.0.0.3"):  # other peers: the second finds the bucket empty
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(peer, 0))) as other, \
                other.post(url, json={"all": True}, headers=WRONG) as answer:
            answers.append((answer.status, int(answer.headers.get("Retry-After", 0))))
    assert answers[0] == (401, 0) and answers[1][0] == 429 and 90 <= answers[1][1] <= 200
    await cache_one(running, idp, pki)
    for _ in range(5):
        assert (await purge(running)).status == 200
    assert len(running.sidecar.decider.cache) == 0


async def test_a_peer_outside_purge_peers_is_403_whatever_it_presents(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki, captured_logs: pytest.LogCaptureFixture
) -> None:
    running = await make_sidecar(server={"admin_secret": SECRET, "purge_peers": ["10.0.0.0/8"]})
    await cache_one(running, idp, pki)
    refused = await purge(running)  # the test client is 127.0.0.1
    assert refused.status == 403 and len(running.sidecar.decider.cache) == 1
    assert any(getattr(r, "reason", None) == "peer_not_allowed" for r in captured_logs.records)


async def test_a_purge_body_that_never_completes_is_answered_after_the_header_timeout(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    running = await make_sidecar(server={"admin_secret": SECRET, "header_timeout": 0.3})
    await cache_one(running, idp, pki)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.admin.server.port)
    try:
        writer.write(f"POST /purge HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SECRET}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"all\"".encode())
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # before: waits forever
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert len(running.sidecar.decider.cache) == 1


async def test_by_default_purge_answers_the_pods_own_containers_only(
    make_sidecar: MakeSidecar, idp: FakeIdp, pki: TestPki
) -> None:
    import aiohttp

    running = await make_sidecar(server={"admin_secret": SECRET})  # server.purge_peers: loopback only
    await cache_one(running, idp, pki)
    url = f"http://127.0.0.1:{running.admin.server.port}/purge"
    # 127.0.0.2 is a real peer address outside 127.0.0.1/32: another pod, as far as purge knows.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as elsewhere, \
            elsewhere.post(url, json={"all": True}, headers=AUTH) as refused:
        assert refused.status == 403 and await refused.json() == {"error": "forbidden"}
    assert len(running.sidecar.decider.cache) == 1
    assert (await purge(running)).status == 200  # from 127.0.0.1: the pod's own containers
