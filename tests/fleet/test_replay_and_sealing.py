"""The DPoP replay store across replicas, and the sealed format on its own: what opens, what
does not, and what a value that opens must still look like."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from sidecar.core.token_info import INACTIVE, token_info_from_claims
from sidecar.dev.fakeidp import FakeIdp
from sidecar.dev.redis import RedisServer
from sidecar.fleet.codec import decode, encode
from sidecar.fleet.replay import RedisReplayStore
from sidecar.fleet.seal import Names, Sealer, Tampered
from tests.fleet.conftest import MakeReplica, events, fleet_of
from tests.support.pki_fixtures import TestPki

pytestmark = pytest.mark.fleet
KEY_A, KEY_B = b"a" * 40, b"b" * 40


async def test_a_key_claimed_on_one_replica_is_refused_on_every_other_and_never_stored_as_given(
    make_replica: MakeReplica, redis_server: RedisServer
) -> None:
    stores = [RedisReplayStore(fleet_of(await make_replica())) for _ in range(3)]
    until = time.time() + 60
    assert await stores[0].claim(b"jti-digest-1", until) is True
    assert [await s.claim(b"jti-digest-1", until) for s in stores] == [False, False, False]
    assert await stores[2].claim(b"jti-digest-2", until) is True
    names = redis_server.cli("--scan")
    assert "jti-digest" not in names and names.count("sidecar:r:") == 2


async def test_with_redis_down_the_store_defers_to_the_replicas_own_answer(
    make_replica: MakeReplica, redis_server: RedisServer
) -> None:
    """The decision asks it only after the replica's own store accepted the proof
    (tests/fleet/test_dpop_replay.py proves a replay on the same replica is still refused)."""
    replica = await make_replica()
    store = RedisReplayStore(fleet_of(replica))
    redis_server.kill()
    assert await store.claim(b"jti-digest", time.time() + 60) is True
    assert events(replica, "error") == 1


async def test_fleet_metrics_are_exposed_on_the_admin_port(
    make_replica: MakeReplica, idp: FakeIdp, pki: TestPki
) -> None:
    replica = await make_replica()
    await replica.check(idp.mint("alice", cnf=pki.alice.x5t_s256), pki.alice)
    text = await (await replica.admin.get("/metrics")).text()
    assert 'sidecar_fleet_total{event="miss"} 1.0' in text and "sidecar_fleet_breaker_open 0.0" in text


def claims() -> dict[str, object]:
    return {"active": True, "scope": "read write", "client_id": "alice", "token_type": "Bearer", "exp": 2_000_000_000,
            "iat": 1_700_000_000, "sub": "alice", "aud": ["api", "other"], "iss": "https://idp", "jti": "j",
            "cnf": {"x5t#S256": "abc", "jkt": "k"}, "tenant": "t1", "token_use": "access"}


def test_a_token_info_survives_the_round_trip_through_redis_unchanged() -> None:
    info = token_info_from_claims(claims(), ("tenant",))
    assert decode(encode(info, 123.5, 100.0)) == (info, 123.5, 100.0)
    assert decode(encode(INACTIVE, 9.0, 1.0)) == (INACTIVE, 9.0, 1.0)


@pytest.mark.parametrize("doc", [
    {"i": {"active": "yes"}, "u": 1, "b": 0},
    {"i": {"active": True, "exp": "soon"}, "u": 1, "b": 0},
    {"i": {"active": True, "aud": "api"}, "u": 1, "b": 0},
    {"i": {"active": True, "admin": True}, "u": 1, "b": 0},
    {"i": {"active": True}, "u": float("inf"), "b": 0},
    {"i": {"active": True}, "u": 1, "b": "before the purge"},
    {"i": {"active": True}, "u": 1},
    {"i": {"active": True}, "b": 0},
    [1, 2],
])
def test_a_value_that_opens_but_is_not_a_shared_answer_is_refused(doc: object) -> None:
    with pytest.raises(Tampered):
        decode(json.dumps(doc).encode())


def test_a_sealed_value_opens_only_under_its_own_name_and_a_known_key() -> None:
    sealed = Sealer(KEY_A).seal(b"name-1", b"payload")
    assert Sealer(KEY_A).open(b"name-1", sealed) == b"payload"
    assert Sealer(KEY_B, previous=KEY_A).open(b"name-1", sealed) == b"payload"
    for sealer, name, blob in [(Sealer(KEY_A), b"name-2", sealed), (Sealer(KEY_B), b"name-1", sealed),
                               (Sealer(KEY_A), b"name-1", sealed[:-1] + bytes([sealed[-1] ^ 1])),
                               (Sealer(KEY_A), b"name-1", b"\x02" + sealed[1:]), (Sealer(KEY_A), b"name-1", b"")]:
        with pytest.raises(Tampered):
            sealer.open(name, blob)


def test_names_are_keyed_by_the_fleet_secret_and_alike_across_replicas() -> None:
    one, same, other = Names(KEY_A, "p:"), Names(KEY_A, "p:"), Names(KEY_B, "p:")
    assert one.value(b"k" * 16) == same.value(b"k" * 16)
    assert one.digest_key == same.digest_key != other.digest_key  # the value's name is a digest under it
    assert one.tag == same.tag != other.tag  # what a message says of the secret it was sent with
    assert one.replay(b"k" * 16) == same.replay(b"k" * 16) != other.replay(b"k" * 16)


async def test_a_claim_lives_in_redis_until_its_deadline(
    make_replica: MakeReplica, redis_server: RedisServer
) -> None:
    """(The replica's own store, bounded and failing closed when full: tests/unit/test_dpop.py.)"""
    fleet = fleet_of(await make_replica())
    one, other = RedisReplayStore(fleet), RedisReplayStore(fleet)
    assert await one.claim(b"short", time.time() + 0.2) is True
    assert await other.claim(b"short", time.time() + 0.2) is False
    await asyncio.sleep(0.3)
    assert await other.claim(b"short", time.time() + 60) is True  # expired in Redis
