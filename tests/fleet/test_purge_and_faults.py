"""Revocation reaches every replica, and Redis failing (down, slow, garbage) never allows: the
in-process cache and the IdP answer as without a fleet, and the fleet recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.redis import RedisServer
from sidecar.support.logs import token_hash
from tests.conftest import Running, sidecar_config
from tests.fleet.conftest import ADMIN, ADMIN_SECRET, FleetFiles, MakeReplica, events, fleet_of, wait_subscribed
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.fleet


async def purge(running: Running, body: dict[str, Any]) -> dict[str, Any]:
    response = await running.admin.post("/purge", json=body, headers=ADMIN)
    assert response.status == 200
    answer: dict[str, Any] = await response.json()
    return answer


async def until(predicate: Any, seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.01)


async def cached_everywhere(replicas: list[Running], idp: FakeIdp, pki: TestPki) -> str:
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    for replica in replicas:
        assert (await replica.check(token, pki.alice)).status == 200
        assert len(replica.sidecar.decider.cache) == 1
    return token


@pytest.mark.parametrize("by", ["token", "token_hash", "all"])
async def test_a_purge_on_one_replica_drops_the_token_on_every_replica_and_nothing_in_redis_brings_it_back(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, by: str
) -> None:
    replicas = [await make_replica() for _ in range(3)]
    token = await cached_everywhere(replicas, idp, pki)
    assert idp.introspect_requests == 1
    idp.tokens.pop(token)  # revoked at the IdP
    body = {"token": token, "token_hash": token_hash(token), "all": True}[by]
    answer = await purge(replicas[1], {by: body})
    assert answer == {"purged": 1, "fleet": True}
    await until(lambda: all(len(r.sidecar.decider.cache) == 0 for r in replicas))
    for replica in replicas:
        denied = await replica.check(token, pki.alice)
        assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"
    assert sum(events(r, "purge_received") for r in replicas) == 2 and events(replicas[1], "purge_sent") == 1
    # A purge by token deletes the token's value from Redis; by hash or all nothing is scanned or
    # deleted: the value left there predates the purge and is refused (then replaced).
    assert sum(events(r, "predates_purge") for r in replicas) == (0 if by == "token" else 1)
    assert idp.introspect_requests == 2  # the revoked answer, asked once and shared


async def test_a_purge_while_an_idp_call_is_in_flight_keeps_the_old_answer_out_of_redis(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    from sidecar.dev.fakeidp import Fault

    a, b = await make_replica(), await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    idp.fault = Fault(delay=0.3)
    check = asyncio.ensure_future(a.check(token, pki.alice))
    await until(lambda: idp.introspect_requests == 1)
    assert (await purge(b, {"token": token}))["fleet"] is True  # revoked while the IdP answers
    assert (await check).status == 200  # that one request got the answer it asked for
    assert [k async for k in fleet_of(a).redis.scan_iter()] == []
    assert events(a, "fill_dropped") == 1


async def test_a_forged_purge_message_is_refused_and_counted(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    [a] = replicas = [await make_replica()]
    await cached_everywhere(replicas, idp, pki)
    await fleet_of(a).redis.publish(fleet_of(a).names.channel, b'{"by": "all"}')
    await until(lambda: events(a, "tampered") == 1)
    assert len(a.sidecar.decider.cache) == 1


async def test_redis_killed_mid_run_falls_back_to_the_idp_opens_the_breaker_and_recovers_by_itself(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a, b = await make_replica(breaker_open=0.5), await make_replica(breaker_open=0.5)
    before = await cached_everywhere([a], idp, pki)
    redis_server.kill()
    assert (await a.check(before, pki.alice)).status == 200  # memory still answers
    revoked = idp.mint("alice", cnf=pki.alice.x5t_s256)
    idp.tokens.pop(revoked)
    for _ in range(4):  # never allows what the IdP refuses
        denied = await b.check(revoked, pki.alice)
        assert denied.status == 401
        b.sidecar.decider.cache.clear()
    fresh = [idp.mint("alice", cnf=pki.alice.x5t_s256) for _ in range(4)]
    for token in fresh:
        assert (await b.check(token, pki.alice)).status == 200
    assert events(b, "error") >= 3 and events(b, "bypass") >= 1
    assert b.sidecar.metrics.registry.get_sample_value("sidecar_fleet_breaker_open") == 1
    redis_server.start()  # the same port, empty
    await asyncio.sleep(0.6)  # the breaker's open time
    shared = idp.mint("alice", cnf=pki.alice.x5t_s256)
    calls = idp.introspect_requests
    deadline = time.monotonic() + 10
    while True:  # the breaker half-opens, a replica fills Redis, the other reads it
        assert (await a.check(shared, pki.alice)).status == 200
        a.sidecar.decider.cache.clear()
        if events(a, "miss") >= 2 or events(a, "hit") >= 1:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await b.check(shared, pki.alice)).status == 200
    assert events(b, "hit") >= 1 and idp.introspect_requests <= calls + 2
    await wait_subscribed(b, 10)  # the subscription comes back too


async def test_a_paused_redis_costs_at_most_the_fleet_timeout_per_check_then_the_breaker(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a = await make_replica(timeout=0.1, breaker_failures=2, breaker_open=30)
    redis_server.pause()
    try:
        times = []
        for _ in range(5):
            token = idp.mint("alice", cnf=pki.alice.x5t_s256)
            started = time.monotonic()
            assert (await a.check(token, pki.alice)).status == 200
            times.append(time.monotonic() - started)
    finally:
        redis_server.resume()
    assert max(times[:2]) < 0.6  # one bounded Redis command, then the IdP
    assert max(times[2:]) < 0.1  # the breaker is open: Redis is skipped
    assert events(a, "error") == 2 and events(a, "bypass") == 3


async def test_a_redis_slowed_by_debug_sleep_is_treated_as_failing(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a = await make_replica(timeout=0.1)
    sleeper = asyncio.create_subprocess_exec("/usr/bin/redis-cli", "-p", str(redis_server.port), "debug", "sleep",
                                             "0.5")
    process = await sleeper
    await asyncio.sleep(0.05)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    started = time.monotonic()
    assert (await a.check(token, pki.alice)).status == 200
    assert time.monotonic() - started < 0.45
    assert events(a, "error") == 1
    await process.wait()


async def test_a_server_answering_garbage_instead_of_redis_never_allows_and_counts_errors(
    make_sidecar: Any, idp: FakeIdp, pki: TestPki, fleet_files: Any
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(4096):
                writer.write(b"?\x00\xff not RESP at all\r\n:-1\r\n$-7\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        a = await make_sidecar(fleet={"enabled": True, "url": f"redis://127.0.0.1:{port}/0", "timeout": 0.2,
                                      "secret_file": str(fleet_files.secret), "seal_key_file": str(fleet_files.key)})
        revoked = idp.mint("alice", cnf=pki.alice.x5t_s256)
        idp.tokens.pop(revoked)
        assert (await a.check(revoked, pki.alice)).status == 401
        good = idp.mint("alice", cnf=pki.alice.x5t_s256)
        assert (await a.check(good, pki.alice)).status == 200
        assert events(a, "error") >= 2 and events(a, "hit") == 0
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.ops
async def test_after_a_reload_that_changes_the_fleet_settings_a_purge_from_another_replica_still_arrives(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer, fleet_files: FleetFiles
) -> None:
    replicas = [await make_replica() for _ in range(2)]
    token = await cached_everywhere(replicas, idp, pki)
    reloaded = replicas[0].sidecar
    fleet = {"enabled": True, "url": redis_server.url, "secret_file": str(fleet_files.secret),
             "seal_key_file": str(fleet_files.key), "timeout": 0.3, "clock_skew": 0.0}
    await reloaded.reload(sidecar_config(pki, idp, fleet=fleet, server={"admin_secret": ADMIN_SECRET}))
    assert reloaded.config.fleet.timeout == 0.3 and reloaded.purges is not None and reloaded.purges.subscribed.is_set()
    assert (await replicas[0].check(token, pki.alice)).status == 200  # the answer the new parts reuse
    idp.tokens.pop(token)  # revoked at the IdP, then purged from the other replica
    assert await purge(replicas[1], {"token": token}) == {"purged": 1, "fleet": True}
    await until(lambda: events(replicas[0], "purge_received") >= 1)
    denied = await replicas[0].check(token, pki.alice)
    assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"
