"""Replicas share answers through a real Redis: one IdP call per token across the fleet, a cache
hit never touches Redis, and Redis holds nothing an attacker could use."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from sidecar.dev.fakeidp import FakeIdp, Fault
from sidecar.dev.redis import RedisServer
from sidecar.support.logs import token_hash
from tests.conftest import Running
from tests.fleet.conftest import FleetFiles, MakeReplica, events, fleet_of
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.fleet


def commands(server: RedisServer) -> int:
    """Commands Redis has processed (this INFO call included)."""
    stats = server.cli("info", "stats")
    return int(next(x for x in stats.splitlines() if x.startswith("total_commands_processed:")).split(":")[1])


async def test_a_token_checked_on_one_replica_is_answered_on_another_without_asking_the_idp(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    a, b = await make_replica(), await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(token, pki.alice)).status == 200
    allowed = await b.check(token, pki.alice)
    assert allowed.status == 200 and allowed.headers["x-credential-client-id"] == "alice"
    assert idp.introspect_requests == 1
    assert events(a, "miss") == 1 and events(b, "hit") == 1
    denied = await b.check(token, pki.bob)  # the shared answer is bound and checked like any other
    assert denied.status == 401


async def test_a_cache_hit_never_touches_redis(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a = await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(token, pki.alice)).status == 200
    before = commands(redis_server)
    redis_server.pause()  # a hit must not even notice
    try:
        started = time.monotonic()
        for _ in range(20):
            assert (await a.check(token, pki.alice)).status == 200
        assert time.monotonic() - started < 2.0
    finally:
        redis_server.resume()
    assert commands(redis_server) == before + 1  # the INFO above


async def test_redis_holds_no_token_and_no_claim(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a = await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256, scope="read secret-scope")
    assert (await a.check(token, pki.alice)).status == 200
    client = aioredis.Redis(port=redis_server.port)
    try:
        names = [n async for n in client.scan_iter()]
        assert len(names) == 1
        value = await client.get(names[0])
    finally:
        await client.aclose()
    assert value is not None
    for secret in (token, token_hash(token), "alice", "secret-scope", pki.alice.x5t_s256, idp.issuer):
        assert secret.encode() not in names[0] and secret.encode() not in value


async def test_a_burst_for_one_new_token_across_four_replicas_makes_one_idp_call(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    replicas = [await make_replica() for _ in range(4)]
    idp.fault = Fault(delay=0.2)  # the IdP is slow: everyone arrives while the first call runs
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    answers = await asyncio.gather(*(r.check(token, pki.alice) for r in replicas for _ in range(5)))
    assert [a.status for a in answers] == [200] * 20
    assert idp.introspect_requests == 1
    assert sum(events(r, "waited") for r in replicas) == 3  # one waiter per other replica (local single-flight)


async def test_a_holder_that_died_costs_one_lock_wait_then_its_lock_is_taken_over(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a, b = await make_replica(lock_wait=0.3), await make_replica(lock_wait=0.3)
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    fleet = fleet_of(a)
    key = a.sidecar.decider.cache.key(token)
    # what a replica that died after taking the lock leaves: its lock, with the expiry replicas set
    await fleet.redis.set(fleet.names.lock(key), b"dead-replica", px=fleet._lock_ms)
    started = time.monotonic()
    assert (await a.check(token, pki.alice)).status == 200
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0  # waited lock_wait, never the lock's own life nor past idp.timeout
    assert events(a, "lock_taken") == 1 and events(a, "miss") == 1
    started = time.monotonic()
    assert (await b.check(token, pki.alice)).status == 200  # the answer is shared: no second wait
    assert time.monotonic() - started < 0.25 and events(b, "hit") == 1
    assert idp.introspect_requests == 1


async def test_inactive_answers_are_shared_for_the_negative_ttl_only(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a, b = await make_replica(cache={"negative_ttl": 2.0}), await make_replica(cache={"negative_ttl": 2.0})
    assert (await a.check("never-issued-token", pki.alice)).status == 401
    assert (await b.check("never-issued-token", pki.alice)).status == 401
    assert idp.introspect_requests == 1
    client = aioredis.Redis(port=redis_server.port)
    try:
        [name] = [n async for n in client.scan_iter()]
        assert 0 < await client.pttl(name) <= 2000
    finally:
        await client.aclose()


async def test_an_answer_lives_in_redis_no_longer_than_the_token(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a = await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    idp.tokens[token]["exp"] = int(time.time()) + 3
    assert (await a.check(token, pki.alice)).status == 200
    client = aioredis.Redis(port=redis_server.port)
    try:
        [name] = [n async for n in client.scan_iter()]
        assert 0 < await client.pttl(name) <= 3000
    finally:
        await client.aclose()


async def test_a_replica_reads_values_sealed_with_the_previous_key_during_a_rotation(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, fleet_files: FleetFiles
) -> None:
    old = await make_replica()
    rotated = await make_replica(seal_key_file=str(fleet_files.other_key),
                                 previous_seal_key_file=str(fleet_files.key))
    other = await make_replica(seal_key_file=str(fleet_files.other_key))
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await old.check(token, pki.alice)).status == 200
    assert (await rotated.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == 1 and events(rotated, "hit") == 1
    assert (await other.check(token, pki.alice)).status == 200  # a key it does not hold: a miss, counted
    assert events(other, "tampered") == 1 and idp.introspect_requests == 2


async def shared_value(running: Running, token: str) -> tuple[str, bytes]:
    fleet = fleet_of(running)
    name = fleet.names.value(running.sidecar.decider.cache.key(token))
    value = await fleet.redis.get(name)
    assert value is not None
    return name, value


async def test_an_allow_moved_onto_another_tokens_key_is_refused_and_counted(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    a, b = await make_replica(), await make_replica()
    good = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(good, pki.alice)).status == 200
    _, sealed = await shared_value(a, good)
    forged = "revoked-or-never-issued"
    fleet = fleet_of(a)
    name = fleet.names.value(a.sidecar.decider.cache.key(forged))
    await fleet.redis.set(name, sealed, px=60_000)  # an attacker with write access to Redis
    denied = await b.check(forged, pki.alice)
    assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"
    assert events(b, "tampered") == 1


@pytest.mark.parametrize("plant", ["flipped", "garbage", "empty", "list"])
async def test_a_tampered_value_is_a_miss_that_is_counted_and_replaced(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, plant: str
) -> None:
    a, b = await make_replica(), await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(token, pki.alice)).status == 200
    name, sealed = await shared_value(a, token)
    redis = fleet_of(a).redis
    if plant == "flipped":
        await redis.set(name, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    elif plant == "garbage":
        await redis.set(name, b"\x01" + b"\xff" * 64)
    elif plant == "empty":
        await redis.set(name, b"")
    else:
        await redis.delete(name)
        await redis.rpush(name, b"x")  # a wrong type: Redis answers WRONGTYPE
    assert (await b.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == 2
    assert events(b, "tampered") == 1 and events(b, "error") == 0
    _, replaced = await shared_value(a, token)
    assert replaced != sealed


async def test_a_replica_keeps_a_shared_answer_no_longer_than_its_own_expiry(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    """max_ttl counts from the IdP's answer, not from each replica's read of it."""
    a, b = await make_replica(cache={"max_ttl": 1.0}), await make_replica(cache={"max_ttl": 1.0})
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(token, pki.alice)).status == 200
    await asyncio.sleep(0.6)
    assert (await b.check(token, pki.alice)).status == 200  # from Redis, 0.4 s of life left
    assert idp.introspect_requests == 1
    await asyncio.sleep(0.6)  # past the answer's expiry, though not 1 s after b read it
    assert (await b.check(token, pki.alice)).status == 200
    assert idp.introspect_requests == 2
