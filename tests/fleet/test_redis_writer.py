"""What an attacker with write access to the fleet's Redis (the sidecars' own ACL) can and cannot
do (docs/fleet.md): no value put back after a purge or a revocation is used (past
``events.remember`` too, or sealed by a replica with a longer ``cache.max_ttl``), a planted lock
costs one wait, a keyspace flood leaves purges bounded and effective, a replica with another seal
key or fleet secret is not ready, a proof's replay key deleted buys at most one more use per
replica, and cutting the subscriptions or blocking Redis costs IdP calls, never a purge."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.redis import REDIS_CLI, RedisServer
from sidecar.support.logs import token_hash
from tests.conftest import Running
from tests.fleet.conftest import ADMIN, FleetFiles, MakeReplica, events, fleet_of
from tests.fleet.test_dpop_replay import URL, check, dpop_token
from tests.support.dpop_proof import DpopKey
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.fleet


async def until(predicate: Any, seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.01)


async def saved_value(running: Running, token: str) -> tuple[str, bytes]:
    """What a writer reads and keeps: the token's name and sealed value."""
    fleet = fleet_of(running)
    name = fleet.names.value(running.sidecar.decider.cache.key(token))
    value = await fleet.redis.get(name)
    assert value is not None
    return name, value


async def ready(running: Running) -> tuple[int, str]:
    response = await running.admin.get("/readyz")
    return response.status, (await response.json())["reason"]


@pytest.mark.parametrize("by", ["token", "token_hash", "all"])
async def test_a_value_saved_before_a_purge_and_written_back_is_refused_by_every_replica(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, by: str
) -> None:
    replicas = [await make_replica() for _ in range(3)]
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    for replica in replicas:
        assert (await replica.check(token, pki.alice)).status == 200
    name, sealed = await saved_value(replicas[0], token)
    idp.tokens.pop(token)  # revoked at the IdP, then purged
    body = {"token": token, "token_hash": token_hash(token), "all": True}[by]
    answer = await (await replicas[1].admin.post("/purge", json={by: body}, headers=ADMIN)).json()
    assert answer["fleet"] is True
    await until(lambda: all(len(r.sidecar.decider.cache) == 0 for r in replicas))
    late = await make_replica()  # started after the purge: it never heard it
    redis = fleet_of(replicas[0]).redis
    for replica in [*replicas, late]:
        await redis.set(name, sealed, px=60_000)  # authentic, unexpired, and put back
        denied = await replica.check(token, pki.alice)
        assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"
        assert events(replica, "predates_purge") == 1 and events(replica, "tampered") == 0
        replica.sidecar.decider.cache.clear()


@pytest.mark.parametrize("by", ["client_id", "sub", "jti"])
async def test_a_value_saved_before_a_revocation_is_refused_after_events_remember_has_passed(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, by: str
) -> None:
    """``events.remember`` may be shorter than ``cache.max_ttl``: the revocation's own memory then
    ends while a value given before it still lives in Redis (put back, or never deleted)."""
    replicas = [await make_replica(events={"remember": 0.5}) for _ in range(2)]
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await replicas[0].check(token, pki.alice)).status == 200
    name, sealed = await saved_value(replicas[0], token)
    claims = idp.tokens.pop(token)  # revoked at the IdP, then by its claims on every replica
    answer = await (await replicas[1].admin.post("/purge", json={by: claims[by]}, headers=ADMIN)).json()
    assert answer["fleet"] is True
    await until(lambda: len(replicas[0].sidecar.decider.cache) == 0)
    await asyncio.sleep(1.0)  # past events.remember, well within cache.max_ttl
    redis = fleet_of(replicas[0]).redis
    for replica in replicas:
        await redis.set(name, sealed, px=60_000)
        denied = await replica.check(token, pki.alice)
        assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"
        assert events(replica, "predates_purge") == 1
        replica.sidecar.decider.cache.clear()


async def test_a_value_from_a_replica_with_a_longer_max_ttl_is_used_no_longer_than_this_replicas_own(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    """A rolling change of ``cache.max_ttl``: a value sealed by a replica with a longer one must not
    outlive this replica's memory of a purge (a value put back after it has forgotten)."""
    short = await make_replica(cache={"max_ttl": 0.5, "negative_ttl": 0.5})  # remembers a purge ~3.5 s
    long = await make_replica()  # cache.max_ttl 300
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await long.check(token, pki.alice)).status == 200
    name, sealed = await saved_value(long, token)
    idp.tokens.pop(token)
    answer = await (await short.admin.post("/purge", json={"token": token}, headers=ADMIN)).json()
    assert answer["fleet"] is True
    await asyncio.sleep(4.0)  # past what the short replica remembers, well within the value's own expiry
    await (await short.admin.post("/purge", json={"token_hash": "0" * 12}, headers=ADMIN)).json()  # prunes
    await fleet_of(short).redis.set(name, sealed, px=60_000)
    denied = await short.check(token, pki.alice)
    assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"


async def test_a_value_planted_again_at_once_is_not_read_a_third_time(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    a = await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(token, pki.alice)).status == 200
    name, sealed = await saved_value(a, token)
    idp.tokens.pop(token)
    await (await a.admin.post("/purge", json={"token": token}, headers=ADMIN)).json()
    fleet = fleet_of(a)
    original = fleet.redis.delete

    async def deleted_and_planted_again(*names: str) -> int:  # a writer racing every deletion
        count: int = await original(*names)
        await fleet.redis.set(name, sealed, px=60_000)
        return count

    fleet.redis.delete = deleted_and_planted_again
    await fleet.redis.set(name, sealed, px=60_000)
    denied = await a.check(token, pki.alice)
    assert denied.status == 401 and events(a, "predates_purge") == 2


async def test_a_lock_planted_without_an_expiry_replicas_set_is_taken_at_once(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    a = await make_replica(lock_wait=0.4)
    fleet = fleet_of(a)
    for plant in ({}, {"px": 3_600_000}):  # no expiry; an hour
        token = idp.mint("alice", cnf=pki.alice.x5t_s256)
        await fleet.redis.set(fleet.names.lock(a.sidecar.decider.cache.key(token)), b"planted", **plant)
        started = time.monotonic()
        assert (await a.check(token, pki.alice)).status == 200
        assert time.monotonic() - started < 0.3  # no lock_wait
    assert events(a, "lock_taken") == 2 and events(a, "wait_expired") == 0


async def test_a_planted_lock_costs_one_wait_not_one_per_miss(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    replicas = [await make_replica(lock_wait=0.3) for _ in range(3)]
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    fleet = fleet_of(replicas[0])
    await fleet.redis.set(fleet.names.lock(replicas[0].sidecar.decider.cache.key(token)), b"planted",
                          px=fleet._lock_ms)  # as a replica would set it
    times = []
    for replica in replicas:
        started = time.monotonic()
        assert (await replica.check(token, pki.alice)).status == 200
        times.append(time.monotonic() - started)
    assert times[0] >= 0.25 and max(times[1:]) < 0.25
    assert idp.introspect_requests == 1 and sum(events(r, "lock_taken") for r in replicas) == 1


@pytest.mark.parametrize("by", ["token_hash", "all"])
async def test_purges_by_hash_and_all_scan_nothing_and_stay_effective_under_a_keyspace_flood(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer, by: str
) -> None:
    a, b = await make_replica(), await make_replica()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(token, pki.alice)).status == 200
    redis_server.cli("debug", "populate", "200000", "sidecar:flood")  # foreign keys under the prefix
    redis_server.cli("config", "resetstat")
    idp.tokens.pop(token)
    body = {"token_hash": token_hash(token), "all": True}[by]
    answer = await (await b.admin.post("/purge", json={by: body}, headers=ADMIN)).json()
    assert answer == {"purged": 0, "fleet": True}
    stats = redis_server.cli("info", "commandstats")
    assert "cmdstat_scan" not in stats and "cmdstat_unlink" not in stats  # nothing scanned, nothing deleted
    await until(lambda: len(a.sidecar.decider.cache) == 0)
    denied = await a.check(token, pki.alice)  # its value is still in Redis, and refused
    assert denied.status == 401 and events(a, "predates_purge") == 1


async def test_a_replica_with_another_seal_key_or_fleet_secret_is_not_ready_and_says_why(
    make_replica: MakeReplica, fleet_files: FleetFiles, tmp_path: Path, captured_logs: pytest.LogCaptureFixture
) -> None:
    a, b = await make_replica(), await make_replica()
    other_secret = tmp_path / "other-secret"
    other_secret.write_text("another-fleet-secret-" + "x" * 32)
    rotated_wrong = await make_replica(seal_key_file=str(fleet_files.other_key))
    other_fleet = await make_replica(secret_file=str(other_secret))
    newcomers = (rotated_wrong, other_fleet)
    await until(lambda: all(r.sidecar.readiness()[1] != "fleet_joining" for r in newcomers))
    assert await ready(rotated_wrong) == (503, "fleet_seal_key_mismatch")
    assert await ready(other_fleet) == (503, "fleet_secret_mismatch")
    assert await ready(a) == (200, "ok") and await ready(b) == (200, "ok")  # a newcomer cannot take the fleet down
    assert any(r.levelname == "ERROR" and getattr(r, "reason", "") == "fleet_seal_key_mismatch"
               for r in captured_logs.records)
    assert events(rotated_wrong, "foreign") >= 1 and events(a, "foreign") >= 1


async def test_a_lone_replica_is_ready_and_junk_published_on_the_channel_leaves_agreeing_replicas_ready(
    make_replica: MakeReplica,
) -> None:
    a = await make_replica()
    await until(lambda: a.sidecar.readiness()[0], seconds=3.0)  # no peer to hear: ready after the join
    b = await make_replica()
    await until(lambda: b.sidecar.readiness()[0])
    fleet = fleet_of(a)
    junk = b"\x01" + b"\x07" * 4 + b"\x00" * 12 + b"\xff" * 80  # well-formed, under an unknown key id
    for _ in range(5):
        await fleet.redis.publish(fleet.names.channel, junk)
    await until(lambda: events(a, "foreign") == 5 and events(b, "foreign") == 5)
    assert await ready(a) == (200, "ok") and await ready(b) == (200, "ok")


async def test_one_oversized_message_cuts_every_subscription_and_costs_an_idp_call_per_token_never_a_purge(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    """Redis closes a subscriber past its pubsub output buffer limit (32 MB by default): a writer who
    publishes more cuts every replica's subscription. Each resubscribes and drops its cache."""
    a, b = await make_replica(), await make_replica()
    revoked, live = idp.mint("alice", cnf=pki.alice.x5t_s256), idp.mint("alice", cnf=pki.alice.x5t_s256)
    for replica in (a, b):
        for token in (revoked, live):
            assert (await replica.check(token, pki.alice)).status == 200
    calls = idp.introspect_requests
    await fleet_of(a).redis.publish(fleet_of(a).names.channel, b"x" * 40_000_000)
    idp.tokens.pop(revoked)
    await (await b.admin.post("/purge", json={"token": revoked}, headers=ADMIN)).json()  # while a may be cut
    await until(lambda: events(a, "resubscribed") == 1 and events(b, "resubscribed") == 1, seconds=5.0)
    assert "output buffer limits" in (redis_server.directory / "redis.log").read_text()
    for replica in (a, b):
        await until(lambda replica=replica: fleet_of(replica).subscribed, seconds=5.0)
        denied = await replica.check(revoked, pki.alice)
        assert denied.status == 401 and (await denied.json())["reason"] == "token_inactive"
        assert (await replica.check(live, pki.alice)).status == 200
        assert await ready(replica) == (200, "ok")
    assert idp.introspect_requests - calls <= 4  # each token at most once per replica


async def test_a_script_that_never_ends_makes_redis_unavailable_and_the_replicas_go_on_without_it(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki, redis_server: RedisServer
) -> None:
    a = await make_replica(breaker_failures=2)
    sha = redis_server.cli("script", "load", "while true do end")  # SCRIPT LOAD and EVALSHA: in the ACL
    busy = await asyncio.create_subprocess_exec(REDIS_CLI, "-p", str(redis_server.port), "evalsha", sha, "0",
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.3)
        token = idp.mint("alice", cnf=pki.alice.x5t_s256)
        assert (await a.check(token, pki.alice)).status == 200  # the IdP, as without a fleet
        answer = await (await a.admin.post("/purge", json={"token": token}, headers=ADMIN)).json()
        assert answer == {"purged": 1, "fleet": False}
        assert events(a, "error") >= 1
    finally:
        redis_server.cli("script", "kill")
        await busy.wait()


async def test_authentic_messages_replayed_by_a_writer_are_refused(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    a, b = await make_replica(), await make_replica()
    fleet = fleet_of(a)
    pubsub = fleet.redis.pubsub()
    await pubsub.subscribe(fleet.names.channel)
    await (await b.admin.post("/purge", json={"all": True}, headers=ADMIN)).json()
    recorded = []  # what went by: the purge, and beats
    async with asyncio.timeout(3):
        while not recorded or events(a, "purge_received") == 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                recorded.append(message["data"])
    await pubsub.aclose()
    token = idp.mint("alice", cnf=pki.alice.x5t_s256)
    assert (await a.check(token, pki.alice)).status == 200
    tampered = events(a, "tampered")
    for data in recorded:
        await fleet.redis.publish(fleet.names.channel, data)
    await until(lambda: events(a, "tampered") == tampered + len(recorded))
    assert len(a.sidecar.decider.cache) == 1 and events(a, "purge_received") == 1


async def test_a_proofs_replay_key_deleted_by_a_writer_buys_at_most_one_use_per_replica(
    make_replica: MakeReplica, idp: FakeIdp, redis_server: RedisServer
) -> None:
    replicas = [await make_replica(dpop={"enabled": True}) for _ in range(3)]
    key = DpopKey()
    token = dpop_token(idp, key)
    proof = key.proof("GET", URL, token)
    accepted = 0
    for replica in [*replicas, *replicas]:
        for name in redis_server.cli("--scan", "--pattern", "sidecar:r:*").split():
            redis_server.cli("del", name)  # the writer deletes the proof's replay key before each use
        status, reason = await check(replica, token, proof)
        accepted += status == 200
        assert status == 200 or reason == "dpop_replayed"
    assert accepted == 3  # once per replica: each refuses what it accepted itself
